"""Models, example batches and run configs as Flower records: exact round trips, clear refusals."""

import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from peer.core.blob import ExampleBatch, InvalidPayload
from peer.core.peer import TeachReport
from peer.errors import UsageError
from peer.flower import records as rec
from peer.flower.client_app import experiment_config, run_option
from peer.learners import TrainConfig, learner_from_blob, make_learner
from peer.round import PeerRound

CLASSES = ("a", "b", "c")


def test_model_blob_round_trip_predicts_the_same():
    learner = make_learner("mlp", (4, 4), CLASSES, TrainConfig(seed=3))
    content = RecordDict()
    rec.put_blob(content, "peer-1", learner.to_blob())
    assert rec.blob_names(content) == ["peer-1"]
    back = learner_from_blob(rec.get_blob(content, "peer-1"))
    x = np.random.default_rng(0).random((5, 4, 4), dtype=np.float32)
    np.testing.assert_array_equal(back.predict_proba(x), learner.predict_proba(x))


def test_example_batch_round_trip_and_relay_by_receiver():
    batch = ExampleBatch(
        "peer-0",
        "peer-2",
        1,
        3,
        np.arange(32, dtype=np.uint8).reshape(2, 4, 4),
        np.array([0, 2]),
        CLASSES,
        np.array([0.5, 1.5], np.float32),
    )
    content = RecordDict()
    key = rec.put_batch(content, batch)
    assert rec.batch_keys(content, "peer-2") == [key] and rec.batch_keys(content, "peer-1") == []
    relayed = RecordDict()
    rec.move_batches(content, relayed, [key])
    back = rec.get_batch(relayed, key)
    assert back.id == batch.id and back.receiver == "peer-2" and back.classes == CLASSES
    np.testing.assert_array_equal(back.x, batch.x)
    np.testing.assert_array_equal(back.y, batch.y)
    back.validate((4, 4), CLASSES)


def test_round_records_round_trip_with_their_teach_reports():
    r = TeachReport(
        "peer-0",
        "peer-1",
        2,
        qualified=5,
        attempted=5,
        failed=1,
        counterfactuals=4,
        sent=8,
        mean_steps=3.5,
        seconds=0.25,
        source_l1=2.0,
        near_copies=1,
        leakage={"count": 8, "near_copies": 1},
        leakage_sample={"ratio": [0.5, 1.5]},
    )
    record = PeerRound(
        "peer-0",
        2,
        train_size=42,
        train_seconds=1.5,
        evaluation={"accuracy": 0.5, "per_class": [1.0, None, 0.0]},
        evaluate_seconds=0.1,
        teach=[r],
        teach_seconds=0.3,
        errors=[{"teacher": "peer-0", "student": "peer-2", "round": 2, "error": "unreachable"}],
        skipped=["peer-3"],
    )
    content = RecordDict()
    rec.put_record(content, record)
    back = rec.get_record(content, "reply")
    assert back.to_dict() == record.to_dict()
    assert back.teach[0].summary() == r.summary()
    content = RecordDict({rec.RECORD: ConfigRecord({"json": '{"peer": "p"}'})})
    with pytest.raises(InvalidPayload, match="reply: malformed round record"):
        rec.get_record(content, "reply")
    with pytest.raises(InvalidPayload, match="reply: no round record"):
        rec.get_record(RecordDict(), "reply")
    good = record.to_dict()
    for bad in (
        {"evaluation": {"accuracy": "high", "per_class": []}},
        {"evaluation": {"accuracy": 0.5}},
        {"train_size": "many"},
        {"teach_seconds": None},
        {"errors": [{"student": "peer-2"}]},
        {"teach": [{"teacher": "peer-0"}]},
    ):
        content = RecordDict({rec.RECORD: ConfigRecord({"json": json.dumps({**good, **bad})})})
        with pytest.raises(InvalidPayload, match="reply: malformed round record"):
            rec.get_record(content, "reply")


def test_malformed_records_are_refused_by_name():
    content = RecordDict()
    content["model.peer-1"] = ArrayRecord({"w": Array(np.zeros(2, np.float32))})
    content["model.peer-1.spec"] = ConfigRecord({"spec": "{not json"})
    with pytest.raises(InvalidPayload, match="model 'peer-1': spec is not JSON"):
        rec.get_blob(content, "peer-1")
    with pytest.raises(InvalidPayload, match="model 'peer-9': not in the message"):
        rec.get_blob(content, "peer-9")
    content["batch.p.q.1.0"] = ArrayRecord({"x": Array(np.zeros((1, 2), np.uint8))})
    meta = {"sender": "q", "receiver": "p", "round": 1, "seq": 0, "classes": ["a", "b"], "features": []}
    content["batch.p.q.1.0.meta"] = ConfigRecord({"sender": "q"})
    with pytest.raises(InvalidPayload, match="missing field 'classes'"):
        rec.get_batch(content, "batch.p.q.1.0")
    content["batch.p.q.1.0.meta"] = ConfigRecord(meta)
    with pytest.raises(InvalidPayload, match="arrays \\['x'\\], expected distance, x, y"):
        rec.get_batch(content, "batch.p.q.1.0")
    content["batch.p.q.1.1"] = ArrayRecord(
        {
            "x": Array(np.full((1, 2), np.nan, np.float32)),
            "y": Array(np.zeros(1, np.int64)),
            "distance": Array(np.zeros(1, np.float32)),
        }
    )
    content["batch.p.q.1.1.meta"] = ConfigRecord({**meta, "seq": 1})
    with pytest.raises(InvalidPayload, match="NaN"):
        rec.get_batch(content, "batch.p.q.1.1")


def test_the_app_config_matches_every_experiment_option_in_name_and_default():
    """Flower refuses a --run-config key the app's config lacks, and its defaults are the run's:
    pyproject's [tool.flwr.app.config] must list every option with the option's own default."""
    import tomllib
    from pathlib import Path

    from peer.config import options, run_config_key
    from peer.flower.client_app import RUN_ONLY

    pyproject = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    config = pyproject["tool"]["flwr"]["app"]["config"]
    expected = {run_config_key(f.name): ("" if f.default is None else f.default) for f in options()}
    expected.update(RUN_ONLY)
    assert set(config) == set(expected)
    for key, default in expected.items():
        assert config[key] == default and type(config[key]) is type(default), key
    experiment_config(config, 10)  # and its defaults are valid


def test_run_config_maps_onto_the_experiment_config():
    cfg = experiment_config({"rounds": 3, "alpha": 1, "retrain-epochs": 0, "data-dir": "", "learners": "mlp"}, 4)
    assert (cfg.peers, cfg.rounds, cfg.alpha, cfg.retrain_epochs, cfg.data_dir, cfg.learners) == (
        4,
        3,
        1.0,
        0,
        None,
        "mlp",
    )
    with pytest.raises(UsageError, match="run config rounds = '2' should be int"):
        experiment_config({"rounds": "2"}, 4)
    with pytest.raises(UsageError, match="unknown learner kind 'svm'"):
        experiment_config({"learners": "svm"}, 4)
    cfg = experiment_config({"data": "mine.csv", "label": "kind", "test-data": ""}, 3)
    assert (cfg.data, cfg.label, cfg.test_data) == ("mine.csv", "kind", None)
    with pytest.raises(UsageError, match="run config label = 3 should be a string"):
        experiment_config({"label": 3}, 3)
    assert run_option({"timeout": 5}, "timeout") == 5.0
    with pytest.raises(UsageError, match="run config threads = 1.5 should be int"):
        run_option({"threads": 1.5}, "threads")


def test_the_server_relays_batches_by_receiver_and_refuses_a_forged_sender():
    from server.flower_app import Collector, Federation, RunFailed, relay

    fed = Federation(grid=None, timeout=1)
    for node, pid in ((11, "peer-0"), (12, "peer-1"), (13, "peer-2")):
        fed.peer_of[node], fed.node_of[pid] = pid, node

    def reply(sender, receiver, seq=0, me=None):
        content = RecordDict()
        rec.put_batch(
            content,
            ExampleBatch(
                sender, receiver, 1, seq, np.zeros((1, 4, 4), np.uint8), np.array([1]), CLASSES, np.zeros(1, np.float32)
            ),
        )
        rec.put_record(content, PeerRound(me or sender, 1))
        return content

    log = Collector(["peer-0", "peer-1", "peer-2"])
    inbox = relay({11: reply("peer-0", "peer-2"), 12: reply("peer-1", "peer-2")}, fed, 1, log)
    assert [rec.get_batch(inbox["peer-2"], k).sender for k in rec.batch_keys(inbox["peer-2"])] == ["peer-0", "peer-1"]
    assert rec.batch_keys(inbox["peer-0"]) == [] and rec.batch_keys(inbox["peer-1"]) == []
    with pytest.raises(RunFailed, match="peer-1 \\(node 12\\) sent batch .* claiming sender 'peer-0'"):
        relay({12: reply("peer-0", "peer-2", me="peer-1")}, fed, 1, log)
    with pytest.raises(RunFailed, match="peer-1 \\(node 12\\) sent a malformed reply .* record names teacher 'peer-0'"):
        relay({12: reply("peer-1", "peer-2", me="peer-0")}, fed, 1, log)
    with pytest.raises(RunFailed, match="receiver 'peer-7'"):
        relay({12: reply("peer-1", "peer-7")}, fed, 1, log)


def test_too_few_supernodes_is_a_clear_error_not_a_hang():
    from server.flower_app import wait_for_nodes

    class TwoNodes:
        def get_node_ids(self):
            return [5, 7]

    with pytest.raises(
        UsageError, match="this run needs 10 SuperNodes .* but 2 connected within 0 s; .*num-supernodes=10"
    ):
        wait_for_nodes(TwoNodes(), 10, 0.2)
    assert wait_for_nodes(TwoNodes(), 2, 0.2) == [5, 7]


def test_an_error_the_superlink_sends_for_a_node_names_that_peer(monkeypatch):
    """A SuperNode that stopped sending heartbeats is answered for by the SuperLink (its own
    node id, and reply_to the message sent): the error must name the peer, not the SuperLink."""
    from flwr.app import Error, Message
    from flwr.supercore.task_identity import TaskIdentity

    # what a ServerApp process has set before its main runs
    for name, value in (("_run_id", 7), ("_node_id", 1), ("_task_id", 3)):
        monkeypatch.setattr(TaskIdentity, name, value)

    from server.flower_app import Federation, RunFailed

    class Grid:
        """Numbers messages as a real Grid does; node 11 answers, the SuperLink answers for 12."""

        def send_and_receive(self, messages, timeout=None):
            replies = []
            for i, m in enumerate(messages):
                m.metadata.__dict__["_message_id"] = f"m{i}"
                if m.metadata.dst_node_id == 11:
                    reply = Message(RecordDict(), reply_to=m)
                else:
                    reply = Message(Error(code=5, reason="Node Unavailable"), reply_to=m)
                    reply.metadata.__dict__["_src_node_id"] = 1
                replies.append(reply)
            return replies

    fed = Federation(Grid(), timeout=1)
    for node, pid in ((11, "peer-0"), (12, "peer-1")):
        fed.peer_of[node], fed.node_of[pid] = pid, node
    with pytest.raises(RunFailed) as failed:
        fed.exchange("train.distill", 1, {11: RecordDict(), 12: RecordDict()})
    assert str(failed.value) == "peer-1 (node 12) failed in train.distill (round 1): Node Unavailable"
