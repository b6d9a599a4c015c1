"""Teacher probabilities beside each example: what a batch carries, how it travels and is stored,
and what a student trains toward (its teacher's probabilities for a class it holds, the label for
one it lacks)."""

import sqlite3

import numpy as np
import pytest
from flwr.app import RecordDict

from peer.core.blob import ExampleBatch, InvalidPayload, quantise_proba
from peer.core.peer import Peer, TeachConfig
from peer.core.sqlstore import SqliteExampleStore
from peer.core.store import ExampleStore
from peer.errors import UsageError
from peer.flower import records as rec
from peer.grpc.wire import decode_batch, encode_batch
from peer.learners import TrainConfig, make_learner

CLASSES = ("a", "b", "c")


def _batch(proba=None, classes=CLASSES, seq=0, sender="t"):
    x = np.arange(4 * 16, dtype=np.uint8).reshape(4, 4, 4)
    return ExampleBatch(sender, "me", 1, seq, x, np.array([0, 1, 2, 1]), classes, np.ones(4, np.float32), proba=proba)


PROBA = quantise_proba(np.array([[0.8, 0.2, 0.0], [0.1, 0.6, 0.3], [0.0, 0.0, 1.0], [0.5, 0.5, 0.0]]))


def test_targets_are_the_senders_probabilities_by_class_name_else_the_label():
    b = _batch(PROBA)
    np.testing.assert_allclose(b.targets_for(CLASSES), PROBA / PROBA.sum(1, keepdims=True), atol=1e-6)
    # the receiver's classes in another order, one of the sender's unknown to it: renormalised over the shared
    t = b.targets_for(("c", "b"))
    np.testing.assert_allclose(t[1], [0.3 / 0.9, 0.6 / 0.9], atol=0.01)
    assert t[0].tolist() == [0.0, 1.0]  # all its mass on "a", unknown here: its label's one-hot
    np.testing.assert_array_equal(_batch().targets_for(CLASSES), np.eye(3, dtype=np.float32)[[0, 1, 2, 1]])


@pytest.mark.parametrize(
    "proba, problem",
    [
        (np.zeros((4, 3), np.float32), "uint8"),
        (np.zeros((4, 2), np.uint8), "shape"),
        (np.zeros((3, 3), np.uint8), "shape"),
    ],
)
def test_a_batch_with_malformed_probabilities_is_refused(proba, problem):
    with pytest.raises(InvalidPayload, match="proba must be uint8"):
        _batch(proba).validate((4, 4), CLASSES)
    with pytest.raises(InvalidPayload, match="proba"):
        decode_batch(encode_batch(_batch(proba)))


def test_probabilities_travel_over_grpc_and_flower_and_survive_the_durable_store(tmp_path):
    b = _batch(PROBA)
    assert b.nbytes() == _batch().nbytes() + PROBA.nbytes
    for back in (decode_batch(encode_batch(b, chunk=50)), rec.get_batch(_put(b), rec.batch_key(b))):
        np.testing.assert_array_equal(back.proba, PROBA)
        np.testing.assert_array_equal(back.x, b.x)
        np.testing.assert_array_equal(back.distance, b.distance)
    assert decode_batch(encode_batch(_batch())).proba is None
    store = SqliteExampleStore(tmp_path / "s.sqlite")
    store.add(b)
    store.add(_batch(seq=1, sender="u"))
    store.close()
    again = SqliteExampleStore(tmp_path / "s.sqlite")
    got = {x.sender: x for x in again.batches()}
    np.testing.assert_array_equal(got["t"].proba, PROBA)
    assert got["u"].proba is None


def test_a_store_written_before_probabilities_opens_and_keeps_its_batches(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(
        """CREATE TABLE batches (
    sender TEXT NOT NULL, round INTEGER NOT NULL, seq INTEGER NOT NULL,
    receiver TEXT NOT NULL, classes TEXT NOT NULL, features TEXT NOT NULL,
    x BLOB NOT NULL, x_dtype TEXT NOT NULL, x_shape TEXT NOT NULL,
    y BLOB NOT NULL, y_dtype TEXT NOT NULL,
    distance BLOB NOT NULL, examples INTEGER NOT NULL, levels INTEGER NOT NULL DEFAULT 255,
    PRIMARY KEY (sender, round, seq));"""
    )
    b = _batch()
    db.execute(
        "INSERT INTO batches VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (
            "t",
            1,
            0,
            "me",
            '["a", "b", "c"]',
            "[]",
            b.x.tobytes(),
            "uint8",
            "[4, 4, 4]",
            b.y.tobytes(),
            "int64",
            b.distance.tobytes(),
            4,
            255,
        ),
    )
    db.commit()
    db.close()
    store = SqliteExampleStore(path)
    (old,) = store.batches()
    assert old.proba is None and np.array_equal(old.x, b.x)
    assert store.add(_batch(PROBA, seq=1)) is True
    np.testing.assert_array_equal(store.batches()[1].proba, PROBA)


def _put(b):
    content = RecordDict()
    rec.put_batch(content, b)
    return content


def _student(kind="mlp", soft_labels="held"):
    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 20)  # holds a and b, lacks c
    x = rng.random((40, 4, 4), dtype=np.float32)
    learner = make_learner(kind, (4, 4), CLASSES, TrainConfig(epochs=1, seed=0))
    return Peer("me", x, y, CLASSES, learner, TeachConfig(), soft_labels=soft_labels)


def test_a_student_trains_toward_teacher_probabilities_for_classes_it_holds_and_labels_for_those_it_lacks():
    p = _student()
    p.absorb(_batch(PROBA))
    x, y, targets = p.fit_set()
    assert len(x) == len(y) == len(targets) == 44
    np.testing.assert_array_equal(targets[:40], np.eye(3, dtype=np.float32)[p.y])  # its own rows: their labels
    received = targets[40:]
    by_label = {int(label): row for label, row in zip(y[40:], received)}
    np.testing.assert_allclose(by_label[0], PROBA[0] / PROBA[0].sum(), atol=1e-6)  # held: the teacher's
    assert by_label[2].tolist() == [0.0, 0.0, 1.0]  # lacking: the label
    assert p.fit_set()[2] is not None and _student(soft_labels="off").fit_set()[2] is None
    forest = _student("forest")
    forest.absorb(_batch(PROBA))
    assert forest.fit_set()[2] is None  # a forest trains on labels
    with pytest.raises(UsageError, match="soft labels"):
        _student(soft_labels="all")


def test_one_hot_targets_train_as_labels_do_and_soft_ones_move_the_model_toward_them():
    rng = np.random.default_rng(1)
    x = rng.random((64, 4, 4), dtype=np.float32)
    y = rng.integers(0, 3, 64)
    hard = make_learner("mlp", (4, 4), CLASSES, TrainConfig(epochs=2, seed=0)).fit(x, y, seed=3)
    onehot = make_learner("mlp", (4, 4), CLASSES, TrainConfig(epochs=2, seed=0))
    onehot.fit(x, y, seed=3, targets=np.eye(3, dtype=np.float32)[y])
    np.testing.assert_allclose(hard.predict_proba(x), onehot.predict_proba(x), atol=1e-5)
    even = make_learner("mlp", (4, 4), CLASSES, TrainConfig(epochs=30, seed=0))
    even.fit(x, y, seed=3, targets=np.full((64, 3), 1 / 3, np.float32))
    assert np.abs(even.predict_proba(x) - 1 / 3).max() < 0.1  # taught "no idea", it has none
    with pytest.raises(ValueError, match="targets must be of shape"):
        onehot.fit(x, y, targets=np.zeros((64, 2), np.float32))


def test_a_teachers_batches_carry_its_models_probabilities_of_what_it_sends():
    rng = np.random.default_rng(0)

    def peer(pid, missing, seed):
        y = rng.integers(0, 3, 150)
        y[y == missing] = (missing + 1) % 3
        x = rng.random((150, 8, 8), dtype=np.float32) * 0.3
        for c in range(3):
            x[y == c, c * 2 : (c * 2) + 2, :] += 0.6
        learner = make_learner("mlp", (8, 8), CLASSES, TrainConfig(epochs=5, seed=seed))
        return Peer(pid, x, y, CLASSES, learner, TeachConfig(), seed=seed)

    teacher, student = peer("t", 2, 0), peer("s", 0, 1)
    teacher.train()
    student.train()
    batches, report = teacher.teach("s", student.snapshot(1), 1)
    assert report.sent > 0
    for b in batches:
        b.validate((8, 8), CLASSES)
        want = quantise_proba(teacher.learner.predict_proba(b.inputs()))
        assert np.abs(b.proba.astype(int) - want.astype(int)).max() <= 1
        assert (b.proba.argmax(1) == b.y).mean() > 0.9  # the teacher gives most what it labels them


def test_an_in_memory_store_gives_each_row_its_target_beside_it():
    store = ExampleStore()
    store.add(_batch(PROBA))
    x, y, t = store.training_rows(CLASSES, (4, 4), skip={("t", 1): {"a"}})
    assert y.tolist() == [1, 2, 1] and len(t) == 3
    np.testing.assert_allclose(t[0], PROBA[1] / PROBA[1].sum(), atol=1e-6)
