"""A peer's verbs on small data: teach builds valid batches, absorb validates, the store is exactly-once."""

import numpy as np
import pytest

from peer.core.blob import ExampleBatch, InvalidPayload
from peer.core.peer import Peer, TeachConfig
from peer.core.store import ExampleStore
from peer.inprocess import InProcessTransport
from peer.learners import TrainConfig, make_learner
from peer.round import RunLog, UnknownPeer, teach_students, train_step

CLASSES = tuple(f"c{i}" for i in range(3))


def _peer(pid, missing, seed=0, kind="mlp", n=150):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    y[y == missing] = (missing + 1) % 3
    x = rng.random((n, 8, 8), dtype=np.float32) * 0.3
    for c in range(3):
        x[y == c, c * 2 : (c * 2) + 2, :] += 0.6
    learner = make_learner(kind, (8, 8), CLASSES, TrainConfig(epochs=5, seed=seed))
    return Peer(pid, x, y, CLASSES, learner, TeachConfig(), seed=seed)


@pytest.mark.parametrize("kind", ["mlp", "forest"])
def test_teacher_sends_valid_batches_of_only_synthetic_examples(kind):
    teacher, student = _peer("a", missing=2, kind=kind), _peer("b", missing=0, seed=1)
    teacher.train()
    student.train()
    batches, report = teacher.teach("b", student.snapshot(1), 1)
    assert report.qualified > 0 and report.counterfactuals > 0
    assert report.attempted == report.qualified
    assert report.counterfactuals + report.failed + report.duplicates == report.attempted
    private = {row.tobytes() for row in np.round(teacher.x * 255).astype(np.uint8)}
    for b in batches:
        b.validate((8, 8), CLASSES)
        assert b.sender == "a" and b.receiver == "b" and b.round == 1
        assert b.x.dtype == np.uint8
        assert not any(row.tobytes() in private for row in b.x)  # no private example leaves
    assert sum(len(b) for b in batches) == report.sent == 2 * report.counterfactuals  # x' plus one augmented copy
    assert report.leakage["count"] == report.sent and report.leakage["to_nearest_min"] > 0
    assert report.leakage["near_copies"] == report.near_copies <= report.sent


def test_absorb_refuses_batches_that_do_not_fit():
    p = _peer("a", missing=2)
    ok = ExampleBatch("b", "a", 1, 0, np.zeros((2, 8, 8), np.uint8), np.array([0, 1]), CLASSES, np.zeros(2, np.float32))
    assert p.absorb(ok) is True
    assert p.absorb(ok) is False  # same id: acknowledged, not stored twice
    assert len(p.store) == 2
    d = np.zeros(2, np.float32)
    bad = [
        (ExampleBatch("b", "a", 1, 1, np.zeros((2, 7, 8), np.uint8), np.array([0, 1]), CLASSES, d), "shape"),
        (ExampleBatch("b", "a", 1, 2, np.zeros((2, 8, 8), np.uint8), np.array([0, 5]), CLASSES, d), "out of range"),
        (ExampleBatch("b", "a", 1, 3, np.full((2, 8, 8), np.nan, np.float32), np.array([0, 1]), CLASSES, d), "NaN"),
        (ExampleBatch("b", "a", 1, 4, np.zeros((2, 8, 8), np.uint8), np.array([0, 1]), ("x", "y"), d), "unknown class"),
        (
            ExampleBatch("b", "a", 1, 5, np.zeros((2, 8, 8), np.float64), np.array([0, 1]), CLASSES, d),
            "uint8 or float32",
        ),
    ]
    for batch, message in bad:
        with pytest.raises(InvalidPayload, match=message):
            p.absorb(batch)
    assert len(p.store) == 2


def test_labels_map_by_class_name():
    p = _peer("a", missing=2)
    reordered = ("c2", "c0", "c1")
    batch = ExampleBatch(
        "b", "a", 1, 0, np.zeros((3, 8, 8), np.uint8), np.array([0, 1, 2]), reordered, np.zeros(3, np.float32)
    )
    p.absorb(batch)
    _, y = p.store.training_arrays(CLASSES, (8, 8))
    assert sorted(y.tolist()) == [0, 1, 2]
    assert batch.labels_for(CLASSES).tolist() == [2, 0, 1]


def test_store_order_does_not_depend_on_arrival():
    def batch(sender, seq, value):
        return ExampleBatch(
            sender, "a", 1, seq, np.full((1, 2, 2), value, np.uint8), np.array([0]), CLASSES, np.zeros(1, np.float32)
        )

    s1, s2 = ExampleStore(), ExampleStore()
    items = [batch("b", 0, 1), batch("c", 0, 2), batch("b", 1, 3)]
    for b in items:
        s1.add(b)
    for b in reversed(items):
        s2.add(b)
    x1, _ = s1.training_arrays(CLASSES, (2, 2))
    x2, _ = s2.training_arrays(CLASSES, (2, 2))
    assert np.array_equal(x1, x2)


def test_in_process_transport_delivers_and_refuses_unknown_peers():
    a, b = _peer("a", 2), _peer("b", 0, seed=1)
    a.train()
    t = InProcessTransport({"a": a, "b": b})
    assert t.get_model("a", 1).kind == "mlp"
    with pytest.raises(UnknownPeer, match="unknown peer"):
        t.get_model("z", 1)


def test_a_student_that_cannot_be_taught_is_a_recorded_error_not_a_crash():
    """An unknown peer id or a malformed model: the round goes on, the record names who and why."""
    a, b = _peer("a", 2), _peer("b", 0, seed=1)
    a.train()
    b.train()
    record = teach_students(a, 1, ["a", "b", "ghost"], InProcessTransport({"a": a, "b": b}))
    assert [r.student for r in record.teach] == ["b"]
    assert record.errors == [
        {"teacher": "a", "student": "ghost", "round": 1, "error": "UnknownPeer: unknown peer 'ghost'; known: a, b"}
    ]
    log = RunLog.from_records([train_step(a, 0, 1, a.x, a.y), record.merge(train_step(a, 1, 1, a.x, a.y))], ["a"])
    assert log.errors == record.errors and [len(e) for e in log.evaluations.values()] == [2]


@pytest.mark.parametrize("kind", ["mlp", "forest"])
def test_peer_rebuilt_from_its_blob_trains_and_teaches_as_the_original(kind):
    """What a fresh process (gRPC peer, Flower ClientApp) must reproduce from saved state alone."""
    original, student = _peer("a", missing=2, kind=kind), _peer("b", missing=0, seed=1)
    original.train(round=0)
    student.train(round=0)
    student_blob = student.snapshot(1)
    original.teach("b", student_blob, 1)  # a teach call must not change later randomness

    from peer.learners import learner_from_blob

    rebuilt = _peer("a", missing=2, kind=kind)
    rebuilt.learner = learner_from_blob(original.snapshot(0))
    rebuilt.learner.train_config = original.learner.train_config
    b1, _ = original.teach("b", student_blob, 2)
    b2, _ = rebuilt.teach("b", student_blob, 2)
    assert [b.x.tobytes() for b in b1] == [b.x.tobytes() for b in b2]
    original.train(epochs=2, round=1)
    rebuilt.train(epochs=2, round=1)
    x = original.x[:50]
    np.testing.assert_array_equal(original.learner.predict_proba(x), rebuilt.learner.predict_proba(x))


def test_a_teacher_rebuilds_the_student_model_on_its_own_device(monkeypatch):
    """The student's model (what the teacher selects with) is rebuilt on the teacher's --device."""
    import peer.core.peer as peer_module

    teacher, student = _peer("a", missing=2), _peer("b", missing=0, seed=1)
    teacher.learner.train_config = TrainConfig(epochs=5, seed=0, device="cpu")
    teacher.train()
    student.train()
    devices = []
    real = peer_module.learner_from_blob

    def rebuild(blob, device="auto"):
        devices.append(device)
        return real(blob, device)

    monkeypatch.setattr(peer_module, "learner_from_blob", rebuild)
    teacher.teach("b", student.snapshot(1), 1)
    assert devices == ["cpu"]


@pytest.mark.parametrize("search", ["leaf-box", "sampling"])
def test_a_forest_teacher_searches_as_cf_forest_search_says(monkeypatch, search):
    """--cf-forest-search: the forest's leaf boxes go to the search only under leaf-box; under
    sampling the gradient-free search runs alone, and both teach."""
    from dataclasses import replace

    import peer.core.peer as peer_module
    from peer.core.counterfactual import CounterfactualConfig

    teacher, student = _peer("a", missing=2, kind="forest"), _peer("b", missing=0, seed=1)
    teacher.teach_config = replace(teacher.teach_config, counterfactual=CounterfactualConfig(forest_search=search))
    teacher.train()
    student.train()
    boxes = []
    real = peer_module.search_counterfactuals

    def recorded(*args, **kwargs):
        boxes.append(kwargs.get("boxes"))
        return real(*args, **kwargs)

    monkeypatch.setattr(peer_module, "search_counterfactuals", recorded)
    batches, report = teacher.teach("b", student.snapshot(1), 1)
    assert report.counterfactuals > 0 and batches
    assert len(boxes) == 1 and (boxes[0] is not None) == (search == "leaf-box")


def test_an_unknown_forest_search_is_a_usage_error():
    from peer.config import ExperimentConfig
    from peer.errors import UsageError

    with pytest.raises(UsageError, match="forest search 'boxes'"):
        ExperimentConfig(cf_forest_search="boxes").counterfactual()
