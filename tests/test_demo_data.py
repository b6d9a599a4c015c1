"""`ckd demo --data`: a hand-written CSV, an .npz of images, and bad input refused in one line, exit 2."""

import json

import numpy as np
import pytest

from server.cli import main

QUICK = ["--epochs", "5", "--retrain-epochs", "2", "--rounds", "1", "--quiet", "--threads", "1"]

# As a user might type it: spaces after commas, a categorical column, string labels.
HAND_WRITTEN = """height, weight, shoe, colour, target
170, 65, 42, red, tall
160, 55, 38, blue, short
180, 80, 44, red, tall
155, 50, 37, blue, short
175, 72, 43, green, tall
158, 52, 37, blue, short
182, 85, 45, red, tall
162, 58, 39, green, short
171, 70, 42, red, tall
150, 48, 36, blue, short
178, 77, 44, red, tall
165, 60, 39, blue, short
169, 66, 41, green, tall
157, 54, 38, blue, short
185, 90, 46, red, tall
161, 57, 38, green, short
"""


def test_demo_on_a_hand_written_csv(tmp_path, capsys):
    path = tmp_path / "my.csv"
    path.write_text(HAND_WRITTEN)
    out = tmp_path / "run"
    assert main(["demo", "--data", str(path), "--label", "target", "--out", str(out), "--quiet", "--threads", "1"]) == 0
    summary = json.loads((out / "results.json").read_text())
    assert summary["experiment"] == "data:my.csv" and summary["classes"] == ["short", "tall"]
    assert len(summary["peers"]) == 3
    for p in summary["peers"]:
        assert p["learner"] == "mlp"
        assert p["features"] == ["height", "weight", "shoe", "colour=blue", "colour=green", "colour=red"]
        assert 0.0 <= p["accuracy_after"] <= 1.0
    assert "peer-2" in capsys.readouterr().out


def test_demo_with_different_columns_and_learners(tmp_path):
    path = tmp_path / "my.csv"
    path.write_text(HAND_WRITTEN)
    out = tmp_path / "run"
    code = main(
        [
            "demo",
            "--data",
            str(path),
            "--label",
            "target",
            "--out",
            str(out),
            *QUICK,
            "--learners",
            "mlp,forest,linear",
            "--peer-features",
            "height,colour;colour,weight;weight,shoe",
        ]
    )
    assert code == 0
    peers = json.loads((out / "results.json").read_text())["peers"]
    assert [p["learner"] for p in peers] == ["mlp", "forest", "linear"]
    assert peers[2]["features"] == ["weight", "shoe"]


def test_demo_on_an_npz_of_images(tmp_path):
    rng = np.random.default_rng(0)
    y = np.arange(90) % 3
    x = rng.integers(0, 60, (90, 8, 8)).astype(np.uint8)
    for c in range(3):
        x[y == c, 2 * c : 2 * c + 2] += 150
    np.savez(tmp_path / "img.npz", x=x, y=np.array(["a", "b", "c"])[y])
    out = tmp_path / "run"
    assert main(["demo", "--data", str(tmp_path / "img.npz"), "--out", str(out), *QUICK]) == 0
    summary = json.loads((out / "results.json").read_text())
    assert [p["learner"] for p in summary["peers"]] == ["cnn"] * 3 and "features" not in summary["peers"][0]


def _bad(tmp_path, what):
    p = tmp_path / "bad.csv"
    texts = {
        "no-label": "a,b\n1,2\n3,4\n",
        "one-class": "a,target\n1,x\n2,x\n3,x\n",
        "non-numeric": "a,target\n1,x\n2,y\nlots,x\n4,y\n",
        "nan": "a,target\n1,x\nNaN,y\n3,x\n",
        "empty": "",
    }
    if what == "no-images":
        (tmp_path / "imgs" / "cat").mkdir(parents=True)
        return str(tmp_path / "imgs")
    if what == "no-overlap":
        p.write_text(HAND_WRITTEN)
        return str(p)
    p.write_text(texts[what])
    return str(p)


@pytest.mark.parametrize(
    "what, extra, message",
    [
        ("no-label", [], "has no label column 'target'"),
        ("one-class", [], "label column 'target' has only one class"),
        ("non-numeric", [], "numeric column 'a' holds non-numeric value 'lots' in row 3"),
        ("nan", [], "column 'a' has a missing value (NaN or empty) in row 2"),
        ("empty", [], "is empty"),
        ("no-images", [], "holds no images"),
        ("no-overlap", ["--peer-features", "height;height,weight;shoe"], "peer-2's columns share none"),
    ],
)
def test_bad_data_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, what, extra, message):
    data = _bad(tmp_path, what)
    out = tmp_path / "out"
    code = main(["demo", "--data", data, "--label", "target", "--out", str(out), *QUICK, *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("ckd: error:") and message in err and "\n" not in err
    assert what == "no-overlap" or data in err  # names the file
    assert not out.exists()


def test_options_given_win_over_the_data_defaults(tmp_path, monkeypatch):
    path = tmp_path / "my.csv"
    path.write_text(HAND_WRITTEN)
    monkeypatch.setenv("CKD_LEARNERS", "forest")
    out = tmp_path / "run"
    assert main(["demo", "--data", str(path), "--label", "target", "--peers", "2", "--out", str(out), *QUICK]) == 0
    summary = json.loads((out / "results.json").read_text())
    assert [p["learner"] for p in summary["peers"]] == ["forest", "forest"]
    assert summary["config"]["epochs"] == 5 and summary["config"]["split"] == "iid"
