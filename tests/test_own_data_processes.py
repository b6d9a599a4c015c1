"""Your own table in peers that run apart: `ckd launch` (one gRPC process per peer), the Flower
ClientApp and `flwr run .` build the same peers from `--data` as `ckd demo` does, columns and
results included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from server.cli import main

ROOT = Path(__file__).resolve().parent.parent
RUN = [
    "--label",
    "kind",
    "--peers",
    "3",
    "--split",
    "miss-class",
    "--learners",
    "mlp,linear,mlp",
    "--peer-features",
    "a,b,colour;b,c,colour;a,c",
    "--epochs",
    "15",
    "--retrain-epochs",
    "5",
    "--rounds",
    "1",
    "--seed",
    "3",
]


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    """300 rows, three classes told apart by three numeric columns and a categorical one."""
    rng = np.random.default_rng(0)
    kinds = rng.integers(0, 3, 300)
    centres = np.array([[0, 0, 0], [3, 1, -2], [-2, 3, 2]], float)
    x = centres[kinds] + rng.normal(0, 1.0, (300, 3))
    colours = np.where(rng.random(300) < 0.7, np.array(["red", "green", "blue"])[kinds], "grey")
    rows = ["a,b,c,colour,kind"] + [f"{r[0]:.3f},{r[1]:.3f},{r[2]:.3f},{c},k{k}" for r, c, k in zip(x, colours, kinds)]
    path = tmp_path_factory.mktemp("table") / "mine.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def demo(table, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("demo") / "out"
    assert main(["demo", "--data", str(table), *RUN, "--out", str(out), "--quiet", "--threads", "1"]) == 0
    return json.loads((out / "results.json").read_text())


@pytest.mark.grpc
def test_launch_over_grpc_on_your_own_table_matches_demo(table, demo, tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "server.cli",
            "launch",
            "--data",
            str(table),
            *RUN,
            "--out",
            str(out),
            "--state-dir",
            str(tmp_path / "state"),
            "--quiet",
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((out / "results.json").read_text())
    assert summary["classes"] == demo["classes"] == ["k0", "k1", "k2"]
    got = {p["id"]: p for p in summary["peers"]}
    for p in demo["peers"]:
        assert got[p["id"]]["accuracy_by_round"] == p["accuracy_by_round"], p["id"]
        assert got[p["id"]]["received"] == p["received"], p["id"]
    assert demo["counterfactuals"]["made"] > 0 and all(p["received"] > 0 for p in demo["peers"])


def test_flower_client_app_builds_the_peer_demo_builds(table):
    """A SuperNode whose node config names the table: its peer has the same rows and columns."""
    from flwr.app import Context, RecordDict

    from peer.experiment import build_peers, load_data
    from peer.flower.client_app import load_peer

    run_config = {k[2:]: v for k, v in zip(RUN[::2], RUN[1::2])}
    run_config = {k: (int(v) if v.isdigit() else v) for k, v in run_config.items() if k != "label"}
    node_config = {"partition-id": 1, "num-partitions": 3, "data": str(table), "label": "kind"}
    context = Context(run_id=1, node_id=2, node_config=node_config, state=RecordDict(), run_config=run_config)
    peer, cfg = load_peer(context)
    assert cfg.data == str(table) and cfg.label == "kind"
    reference = build_peers(cfg, load_data(cfg)[0])[1]
    assert peer.id == reference.id == "peer-1"
    assert peer.features == reference.features == ("b", "c", "colour=blue", "colour=green", "colour=grey", "colour=red")
    np.testing.assert_array_equal(peer.x, reference.x)
    np.testing.assert_array_equal(peer.y, reference.y)
    assert 1 not in set(peer.y.tolist())  # miss-class: peer-1 never sees class 1


def test_peer_refuses_a_table_it_cannot_read(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,kind\n1,x\nabc,y\n")
    assert (
        main(
            [
                "peer",
                "--insecure",
                "--coordinator",
                "127.0.0.1:1",
                "--id",
                "site-a",
                "--data",
                str(bad),
                "--label",
                "kind",
                "--state-dir",
                str(tmp_path / "state"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert "non-numeric value 'abc'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "state").exists()


@pytest.mark.flower
def test_flwr_run_on_your_own_table_matches_demo(table, demo, tmp_path):
    """`flwr run .` in simulation with the table in the run config: the same results as demo."""
    from tests.flower_local import flower

    out = tmp_path / "out"
    run_config = {k[2:]: (int(v) if v.isdigit() else v) for k, v in zip(RUN[::2], RUN[1::2])}
    with flower(tmp_path, simulation=True) as fl:
        res = fl.run(
            {**run_config, "data": str(table), "out": str(out)},
            "num-supernodes=3 client-resources-num-cpus=1 init-args-num-cpus=2",
        )
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:] + fl.log_text()
    summary = json.loads((out / "results.json").read_text())
    assert summary["classes"] == demo["classes"]
    assert {p["id"]: p["accuracy_by_round"] for p in summary["peers"]} == {
        p["id"]: p["accuracy_by_round"] for p in demo["peers"]
    }
    assert [p["received"] for p in summary["peers"]] == [p["received"] for p in demo["peers"]]
