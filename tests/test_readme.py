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
        "<!-- bench:faults -->\n<!-- /bench:faults -->\n<!-- bench:wire -->\n<!-- /bench:wire -->\n"
    )
    out = readme.render(text, results)
    assert "| 0.123 |" in out and "old" not in out and out.startswith("intro\n")
    assert readme.render(out, results) == out  # rendering is stable
    wire = json.loads((ROOT / "bench" / "results" / "wire.json").read_text())
    wire["runs"]["compact"]["bytes_sent"] = 12_345_678
    (results / "wire.json").write_text(json.dumps(wire))
    assert "| 12.3 MB |" in readme.render(text, results)
    with pytest.raises(ValueError, match="bench:privacy"):
        readme.render("<!-- bench:results -->\n<!-- /bench:results -->\n", results)
