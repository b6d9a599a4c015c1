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
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, RecordDict

from peer.config import ExperimentConfig, run_config_key, to_argv
from peer.errors import UsageError
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


@pytest.mark.flower
@pytest.mark.slow
@pytest.mark.deploy
def test_flower_client_apps_on_their_own_files_match_demo_on_the_same_rows(files, demo, tmp_path):
    """A deployment SuperLink and one SuperNode per file, its node config naming the peer and its
    own data (id, data, test-data; no partition-id); the run config holds the demo's options and
    no data. The ServerApp learns peer ids, never the files."""
    from tests.flower_local import flower

    defaults = ExperimentConfig()
    run_config = {
        run_config_key(f.name): getattr(CFG, f.name)
        for f in fields(CFG)
        if getattr(CFG, f.name) != getattr(defaults, f.name)
    }
    out = tmp_path / "out"
    with flower(tmp_path, simulation=False) as fl:
        for pid in IDS:
            fl.start_node(pid, {"id": pid, "data": str(files[pid]), "test-data": str(files["test"])})
        res = fl.run({**run_config, "threads": 1, "out": str(out), "wait-nodes": 60.0}, timeout=420)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:] + fl.log_text()
    text = (out / "results.json").read_text()
    summary = json.loads(text)
    assert summary["transport"] == "flower" and summary["status"] == "ok", summary.get("error")
    assert sorted(summary["flower"]["nodes"]) == IDS
    assert str(files["test"].parent) not in text and "npz" not in text  # no file of a peer named
    _same_as_demo(summary, demo)


def _context(node_config: dict, run_config: dict | None = None) -> Context:
    return Context(run_id=1, node_id=2, node_config=node_config, state=RecordDict(), run_config=run_config or {})


def test_a_client_app_on_its_own_file_builds_the_peer_demo_builds(files, fmnist):
    """No partition-id: the node config's id and data make the peer, the same rows, validation slice
    and first weights as part K of the demo's split."""
    from peer.experiment import build_peers
    from peer.flower.client_app import _identity, load_peer

    run_config = {"peers": 3, "learners": "mlp", "train-per-peer": 300, "test-limit": 300}
    own = {"id": "peer-1", "data": str(files["peer-1"]), "test-data": str(files["test"])}
    peer, cfg = load_peer(_context(own, run_config))
    reference = build_peers(CFG, fmnist[0])[1]
    assert peer.id == "peer-1" and cfg.data == str(files["peer-1"]) and peer.classes == reference.classes
    for a, b in ((peer.x, reference.x), (peer.y, reference.y), (peer.val_x, reference.val_x)):
        np.testing.assert_array_equal(a, b)
    assert peer.seed == reference.seed and peer.missing_classes() == [1]
    for (name, a), (_, b) in zip(peer.learner.to_blob().arrays.items(), reference.learner.to_blob().arrays.items()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    # what the node tells the ServerApp: its id, never its file
    who = _identity(_context(own, run_config))
    assert dict(who) == {"peer-id": "peer-1", "own-data": True, "trained-round": -1}


def test_a_node_on_its_own_data_is_set_up_right_or_refused_in_one_line(files):
    from peer.flower.client_app import load_peer

    run_config = {"peers": 3, "learners": "mlp"}
    for node_config, says in (
        ({"id": "peer-1"}, "a peer on its own data needs data=PATH"),
        ({"id": "site a", "data": str(files["peer-1"])}, "node config id='site a': a peer id is letters"),
        ({"data": str(files["peer-1"])}, 'or "id=NAME data=PATH" for its own data'),
        (
            {"partition-id": 0, "num-partitions": 3, "id": "peer-0"},
            "give id and learner only to a peer on its own data",
        ),
        ({"id": "peer-1", "data": str(files["peer-1"]), "learner": "tree"}, "unknown node config learner 'tree'"),
    ):
        with pytest.raises(UsageError, match=says):
            load_peer(_context(node_config, run_config))
    with pytest.raises(UsageError, match="several kinds .*give this peer's node config learner"):
        load_peer(_context({"id": "peer-1", "data": str(files["peer-1"])}, {"peers": 2, "learners": "mlp,cnn"}))
    peer, _ = load_peer(
        _context({"id": "peer-1", "data": str(files["peer-1"]), "learner": "cnn"}, {"peers": 2, "learners": "mlp,cnn"})
    )
    assert peer.learner.kind == "cnn"


class _Nodes:
    """A Federation whose nodes answer query.model with the given identities."""

    def __init__(self, who: dict[int, dict]):
        from server.flower_app import Federation

        self.fed = Federation(grid=None, timeout=1)
        self.fed.exchange = lambda phase, r, contents: {  # type: ignore[method-assign]
            n: RecordDict({"peer": ConfigRecord(w)}) for n, w in who.items()
        }


def test_the_server_app_takes_peers_on_their_own_data_by_id_and_refuses_a_mix():
    from server.flower_app import RunFailed, discover

    nodes = _Nodes({7: {"peer-id": "site-b", "own-data": True}, 3: {"peer-id": "site-a", "own-data": True}})
    assert discover(nodes.fed, [3, 7], 2) is True
    assert nodes.fed.node_of == {"site-a": 3, "site-b": 7}
    for who, peers, says in (
        ({3: {"peer-id": "site-a", "own-data": True}, 7: {"peer-id": "site-a", "own-data": True}}, 2, "both are peer"),
        ({3: {"peer-id": "site-a", "own-data": True}}, 2, "1 nodes bring their own data, but this run has peers=2"),
        (
            {3: {"peer-id": "site-a", "own-data": True}, 7: {"partition-id": 0, "num-partitions": 2}},
            2,
            "nodes 7 hold parts of a shared split .* and nodes 3 their own data",
        ),
    ):
        with pytest.raises(UsageError, match=says):
            discover(_Nodes(who).fed, sorted(who), peers)
    with pytest.raises(RunFailed, match="malformed reply to query.model: ValueError: peer id"):
        discover(_Nodes({3: {"peer-id": "a.b", "own-data": True}}).fed, [3], 1)


def test_the_server_app_puts_peers_own_classes_and_learners_side_by_side():
    """Peers on their own data may name their own classes, in their own order, and run their own
    learners (node config learner): results.json has every class once, each peer's own order where
    it differs, per-class accuracies re-indexed, and the learners each peer ran."""
    from peer.round import PeerRound
    from server.flower_app import Collector
    from server.results import summarise

    col = Collector(["site-a", "site-b"])
    col.classes = {"site-a": ("benign", "malignant", "normal"), "site-b": ("malignant", "benign")}
    col.learners = {"site-a": "mlp", "site-b": "forest"}
    col.missing = {"site-a": [], "site-b": [1]}
    col.add(PeerRound("site-a", 0, evaluation={"accuracy": 0.9, "per_class": [1.0, 0.8, 0.9]}))
    col.add(PeerRound("site-b", 0, evaluation={"accuracy": 0.7, "per_class": [0.5, 0.0]}))
    summary = summarise(col.experiment(ExperimentConfig(peers=2, learners="mlp", rounds=0), 1.0))
    assert summary["classes"] == ["benign", "malignant", "normal"] and summary["config"]["learners"] == "mlp,forest"
    b = summary["peers"][1]
    assert b["classes"] == ["malignant", "benign"] and b["learner"] == "forest"
    assert b["per_class_before"] == [0.0, 0.5, None] and b["missing_classes"] == ["benign"]
    assert "classes" not in summary["peers"][0]


# -- tables -------------------------------------------------------------------------------------


def _table(path: Path, rows: int, seed: int) -> Path:
    """Three classes told apart by three numeric columns and a colour (grey for 30% of rows)."""
    rng = np.random.default_rng(seed)
    kinds = rng.integers(0, 3, rows)
    x = np.array([[0, 0, 0], [3, 1, -2], [-2, 3, 2]], float)[kinds] + rng.normal(0, 1.8, (rows, 3))
    colours = np.where(rng.random(rows) < 0.7, np.array(["red", "green", "blue"])[kinds], "grey")
    lines = ["a,b,c,colour,kind"] + [f"{r[0]:.3f},{r[1]:.3f},{r[2]:.3f},{c},k{k}" for r, c, k in zip(x, colours, kinds)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _own_table_run(tmp_path: Path, split: str):
    """The demo on train.csv (tested on test.csv) in process, and the same peers each on a CSV of its
    own part's rows: (demo's Experiment, own peers, own RunLog)."""
    from dataclasses import replace

    from peer.experiment import build_whole_peer, load_data, test_inputs
    from peer.inprocess import InProcessTransport, run_experiment, run_rounds

    train_csv, test_csv = _table(tmp_path / "train.csv", 240, 0), _table(tmp_path / "test.csv", 90, 1)
    cfg = ExperimentConfig(
        data=str(train_csv), test_data=str(test_csv), label="kind", peers=3, split=split, learners="mlp",
        epochs=15, retrain_epochs=5, rounds=1, seed=3, privacy="paper",
    )  # fmt: skip
    demo = run_experiment(cfg, quiet=True)
    train, _ = load_data(cfg)
    lines = train_csv.read_text().splitlines()
    peers, tests = [], {}
    for k, part in enumerate(partition(cfg, train)):
        path = tmp_path / f"peer-{k}.csv"
        path.write_text("\n".join([lines[0], *(lines[1 + i] for i in part)]) + "\n")
        lacks = [c for c in train.classes if c not in {lines[1 + i].rsplit(",", 1)[1] for i in part}]
        own = replace(cfg, data=str(path), classes=",".join(lacks) or None)
        mine, test = load_data(own)
        peers.append(build_whole_peer(own, f"peer-{k}", "mlp", mine))
        tests[peers[-1].id] = test_inputs(peers[-1], test)
        np.testing.assert_array_equal(test.y, demo.test_y)
    log = run_rounds(peers, InProcessTransport({p.id: p for p in peers}), tests, demo.test_y, 1, 15, 5, quiet=True)
    return demo, peers, log


def test_peers_on_their_own_table_files_match_demo_when_each_file_has_every_category(tmp_path):
    demo, peers, log = _own_table_run(tmp_path, "iid")
    assert all(p.features == demo.features[p.id] for p in peers)
    assert log.evaluations == demo.log.evaluations
    assert [(r.teacher, r.student, r.sent) for r in log.teach] == [
        (r.teacher, r.student, r.sent) for r in demo.log.teach
    ]
    assert sum(r.sent for r in demo.log.teach) > 0, [r.sent for r in demo.log.teach]  # something was taught


def test_a_category_only_other_peers_rows_hold_is_no_column_of_a_peer_on_its_own_table(tmp_path):
    """miss-class: peer k lacks class k, and with it every row of that class's colour. The demo's peer
    has that colour's column (all zeros); the peer on its own file has no such column, as its file
    has no such value: their models differ, and so may their results (by design)."""
    demo, peers, log = _own_table_run(tmp_path, "miss-class")
    for k, peer in enumerate(peers):
        assert set(demo.features[peer.id]) - set(peer.features) == {f"colour={('red', 'green', 'blue')[k]}"}
        assert set(peer.features) < set(demo.features[peer.id])
    assert all(len(e) == 2 for e in log.evaluations.values())  # it runs, on its own columns
