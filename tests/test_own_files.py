"""Peers on their own files give what `ckd demo` gives on the same rows.

Each peer's part of a demo split is written to a file of its own (an .npz naming every class,
as its rows lack one), and the rows the demo tests on to a test file. `ckd server` and one
`ckd peer --id peer-K --data FILE --test-data TEST` process per file (no --part), with the
demo's other flags and seeds, must give the demo's results.json value for value: a peer named
peer-K seeds as part K does. The Flower ClientApps of a deployment SuperLink, each SuperNode's
node config naming its own file, must give the same.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from peer.config import ExperimentConfig, to_argv
from peer.experiment import limit_test, partition
from peer.grpc.tls import make_certs
from server.cli import main
from tests.own_sites import run_coordinator_and_peers
from tests.results_compare import assert_same_results

# 3 peers of Fashion-MNIST, peer k lacking class k; small, but every peer is taught something
CFG = ExperimentConfig(
    peers=3,
    rounds=1,
    learners="mlp",
    epochs=2,
    retrain_epochs=1,
    train_per_peer=300,
    test_limit=300,
    seed=0,
)
IDS = [f"peer-{k}" for k in range(CFG.peers)]
# what a run of peers on their own files reports differently, by design: its experiment's name
# ("own-data": the coordinator never learns file names)
OWN = {"experiment": "own-data"}


@pytest.fixture(scope="module")
def files(fmnist, tmp_path_factory) -> dict[str, Path]:
    """peer-K.npz: part K of the demo's split (its rows in the demo's order, every class named);
    test.npz: the rows the demo evaluates on."""
    train, test = fmnist
    directory = tmp_path_factory.mktemp("own-files")
    classes = np.array(train.classes)
    paths = {}
    for pid, part in zip(IDS, partition(CFG, train)):
        rows = train.subset(part)
        paths[pid] = directory / f"{pid}.npz"
        np.savez(paths[pid], x=rows.x, y=rows.y, classes=classes)
    rows = limit_test(CFG, test)
    paths["test"] = directory / "test.npz"
    np.savez(paths["test"], x=rows.x, y=rows.y, classes=classes)
    return paths


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("demo") / "out"
    assert main(["demo", *to_argv(CFG), "--out", str(out), "--quiet", "--threads", "1"]) == 0
    summary = json.loads((out / "results.json").read_text())
    assert all(p["received"] > 0 for p in summary["peers"]), summary["peers"]
    assert all(p["missing_classes"] == [summary["classes"][k]] for k, p in enumerate(summary["peers"]))
    return summary


def _same_as_demo(got: dict, demo: dict) -> None:
    """Every value of results.json but timings, the runtime's own entries and the run's name."""
    for key, value in OWN.items():
        assert got[key] == value
    assert_same_results({**got, **{k: demo[k] for k in OWN}}, demo)


def test_the_files_hold_the_demo_rows(files, fmnist):
    """Each file is one peer's part and nothing more: the parts do not overlap, and a part lacks
    the class its peer misses."""
    seen: list[bytes] = []
    for k, pid in enumerate(IDS):
        with np.load(files[pid]) as f:
            assert len(f["y"]) == CFG.train_per_peer and k not in set(f["y"].tolist())
            assert tuple(f["classes"]) == fmnist[0].classes
            seen += [row.tobytes() for row in f["x"]]
    assert len(set(seen)) == len(seen)


@pytest.mark.grpc
def test_peers_on_their_own_files_match_demo_on_the_same_rows(files, demo, tmp_path):
    certs = tmp_path / "certs"
    make_certs(certs, ["coordinator", *IDS])

    def peers(address: str) -> dict[str, list[str]]:
        return {
            pid: [
                sys.executable,
                "-m",
                "peer.cli",
                "peer",
                "--id",
                pid,
                "--data",
                str(files[pid]),
                "--test-data",
                str(files["test"]),
                *to_argv(CFG),
                "--coordinator",
                address,
                "--certs",
                str(certs),
                "--state-dir",
                str(tmp_path / "state" / pid),
                "--threads",
                "1",
            ]
            for pid in IDS
        }

    summary = run_coordinator_and_peers(tmp_path, certs, CFG.rounds, len(IDS), peers, timeout=240)
    assert summary["transport"] == "grpc" and summary["status"] == "ok"
    assert [p["id"] for p in summary["peers"]] == IDS
    _same_as_demo(summary, demo)
