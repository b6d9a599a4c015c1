"""The README's results tables agree with the JSON under bench/results/ they are rendered from."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _readme_module():
    spec = importlib.util.spec_from_file_location("bench_readme", ROOT / "bench" / "readme.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_tables_match_the_benchmark_json(capsys):
    assert _readme_module().main(["--check"]) == 0, capsys.readouterr().out


def test_a_changed_result_shows_in_the_rendering_and_a_missing_block_is_an_error(tmp_path):
    readme = _readme_module()
    results = tmp_path / "results"
    results.mkdir()
    rows = json.loads((ROOT / "bench" / "results" / "privacy.json").read_text())
    rows[0]["mia_auc"] = 0.123456
    (results / "privacy.json").write_text(json.dumps(rows))
    text = (
        "intro\n<!-- bench:results -->\nold\n<!-- /bench:results -->\n<!-- bench:privacy -->\n<!-- /bench:privacy -->\n"
        "<!-- bench:faults -->\n<!-- /bench:faults -->\n"
        "<!-- bench:cf_speed -->\n<!-- /bench:cf_speed -->\n"
        "<!-- bench:forest_search -->\n<!-- /bench:forest_search -->\n"
        "<!-- bench:gpu_check -->\n<!-- /bench:gpu_check -->\n"
    )
    out = readme.render(text, results)
    assert "| 0.123 |" in out and "old" not in out and out.startswith("intro\n")
    assert readme.render(out, results) == out  # rendering is stable
    assert "<!-- bench:cf_speed -->\n| teacher |" in out  # no cf_speed.json: the table's head alone
    speed = {
        "command": "python bench/cf_speed.py",
        "date": "2026-11-29",
        "kinds": {
            "cnn": {
                "counterfactuals_per_second": 2345.6,
                "per_example_loop_per_second": 12.0,
                "floor_per_second": 3000.0,
                "within_x_of_floor": 1.28,
                "mean_steps": 2.0,
                "made": 10,
                "failed": 1,
            }
        },
    }
    (results / "cf_speed.json").write_text(json.dumps(speed))
    assert "| cnn | 2346 | n/a | 12 | 3000 | 1.28 | 2.0 | 10 / 1 |" in readme.render(text, results)
    gpu = {
        "command": "python bench/gpu_check.py",
        "date": "2026-11-29",
        "device": "cuda",
        "device_name": "NVIDIA H200",
        "torch": "2.14.1",
        "cuda_version": "13.0",
        "train": {"images_per_second": 51234.4},
        "evaluate": {"images_per_second": 250000.0},
        "counterfactuals": {
            "counterfactuals_per_second": 40321.0,
            "floor_per_second": 60000.0,
            "within_x_of_floor": 1.49,
        },
    }
    (results / "gpu_check.json").write_text(json.dumps(gpu))
    assert "| NVIDIA H200 (cuda) | 2.14.1 (13.0) | 51234 | 250000 | 40321 | 60000 | 1.49 | 2026-11-29 |" in (
        readme.render(text, results)
    )
    with pytest.raises(ValueError, match="bench:privacy"):
        readme.render("<!-- bench:results -->\n<!-- /bench:results -->\n", results)
