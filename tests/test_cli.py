"""`ckd demo` end to end through its CLI: outputs on success, one-line errors and nothing written on bad input."""

import gzip
import json

import numpy as np
import pytest

from server.cli import main
from tests.conftest import write_idx

SMALL = [
    "--peers",
    "3",
    "--train-per-peer",
    "200",
    "--epochs",
    "1",
    "--retrain-epochs",
    "1",
    "--rounds",
    "1",
    "--test-limit",
    "300",
    "--quiet",
    "--threads",
    "1",
]


@pytest.mark.slow
def test_demo_writes_results_and_figures(tmp_path, capsys, fmnist):
    out = tmp_path / "run"
    assert main(["demo", *SMALL, "--learners", "cnn,mlp,forest", "--out", str(out)]) == 0
    summary = json.loads((out / "results.json").read_text())
    for key in (
        "median_accuracy_before",
        "median_accuracy_after",
        "missing_class_accuracy_after",
        "counterfactuals",
        "leakage",
        "peers",
        "config",
    ):
        assert key in summary
    assert [p["learner"] for p in summary["peers"]] == ["cnn", "mlp", "forest"]
    assert (out / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "counterfactuals.png").read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind
    table = capsys.readouterr().out
    assert "peer-2" in table and "median accuracy" in table


def _corrupt_dir(tmp_path):
    d = tmp_path / "corrupt"
    d.mkdir()
    for prefix, n in (("train", 30), ("t10k", 10)):
        write_idx(d / f"{prefix}-images-idx3-ubyte.gz", np.zeros((n, 28, 28), np.uint8))
        write_idx(d / f"{prefix}-labels-idx1-ubyte.gz", np.zeros(n, np.uint8))
    path = d / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-100]))
    return d


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data-dir", "/nonexistent/fmnist"], "does not exist"),
        (["--data-dir", "CORRUPT"], "is corrupt"),
        (["--alpha", "1.5"], "alpha must be in [0, 1]"),
        (["--learners", "svm"], "unknown learner kind 'svm'"),
        (["--peers", "11"], "11 peers but only 10 classes"),
        (["--learners", "cnn*2,mlp*2"], "names 4 learners for 3 peers"),
        (["--split", "stripes"], "unknown --split"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, args, message, fmnist):
    args = [str(_corrupt_dir(tmp_path)) if a == "CORRUPT" else a for a in args]
    out = tmp_path / "out"
    code = main(["demo", *SMALL, *args, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("ckd: error:") and message in err and "\n" not in err
    assert not out.exists()


def test_options_read_environment_variables(monkeypatch):
    from server.cli import build_parser

    monkeypatch.setenv("CKD_ROUNDS", "5")
    monkeypatch.setenv("CKD_ALPHA", "0.25")
    args = build_parser()[0].parse_args(["demo"])
    assert args.rounds == 5 and args.alpha == 0.25
    assert build_parser()[0].parse_args(["demo", "--rounds", "1"]).rounds == 1  # flags win


def test_an_empty_environment_variable_counts_as_unset(monkeypatch):
    """Compose files pass optional settings as `${CKD_NAME:-}`: empty means the default."""
    from server.cli import build_parser

    for name in ("CKD_ROUNDS", "CKD_TEST_DATA", "CKD_PRIVACY", "CKD_CERTS"):
        monkeypatch.setenv(name, "")
    args = build_parser()[0].parse_args(["demo"])
    assert args.rounds == 2 and args.test_data is None and args.privacy == "guarded"
    peer = build_parser()[0].parse_args(["peer", "--part", "0"])
    assert peer.test_data is None and peer.rounds == 2 and peer.certs is None
