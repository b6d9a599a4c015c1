"""Tabular peers: columns mapped by name, neutral values from the student's blob, labels by name,
a forest teaching an MLP and back on real data with different columns."""

import numpy as np
import pytest

from peer.config import ExperimentConfig
from peer.core.blob import ExampleBatch, InvalidPayload, ModelBlob
from peer.core.features import map_columns, shared
from peer.core.peer import Peer, TeachConfig
from peer.data.fashion import Dataset
from peer.errors import UsageError
from peer.experiment import build_peers, peer_feature_sets
from peer.learners import TrainConfig, learner_from_blob, make_learner


def test_map_columns_overlapping_disjoint_and_reordered():
    x = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], np.float32)
    src = ("a", "b", "c")
    neutral = np.array([-1.0, -2.0, -3.0], np.float32)
    np.testing.assert_array_equal(map_columns(x, src, ("c", "a", "b"), neutral), [[3, 1, 2], [6, 4, 5]])
    np.testing.assert_array_equal(map_columns(x, src, ("b", "z", "c"), neutral), [[2, -2, 3], [5, -2, 6]])
    np.testing.assert_array_equal(map_columns(x, src, ("x", "y", "z"), neutral), [[-1, -2, -3], [-1, -2, -3]])
    assert shared(src, ("c", "z", "a")) == ["a", "c"] and shared(src, ("x",)) == []


def _blobs(kind):
    rng = np.random.default_rng(0)
    x = rng.normal(50, 10, (60, 3)).astype(np.float32)
    y = (x[:, 0] > 50).astype(np.int64)
    learner = make_learner(kind, (3,), ("lo", "hi"), TrainConfig(epochs=3))
    learner.set_features(("a", "b", "c"), x)
    learner.fit(x, y)
    return learner, x


@pytest.mark.parametrize("kind", ["mlp", "forest", "linear"])
def test_blob_declares_features_and_neutral_values_and_round_trips(kind):
    learner, x = _blobs(kind)
    blob = learner.to_blob()
    assert blob.features == ("a", "b", "c")
    np.testing.assert_allclose(blob.spec["neutral"], np.median(x, axis=0), rtol=1e-6)
    rebuilt = learner_from_blob(ModelBlob(dict(blob.spec), dict(blob.arrays)))
    assert rebuilt.features == learner.features
    np.testing.assert_array_equal(rebuilt.predict_proba(x), learner.predict_proba(x))
    # nothing of the data travels beyond what the model needs: no array has a row per example
    assert all(len(x) not in a.shape for a in blob.arrays.values())
    for spec, message in (
        ({**blob.spec, "features": ["a", "a", "c"]}, "distinct"),
        ({**blob.spec, "neutral": [0.0, float("nan"), 1.0]}, "neutral"),
        ({**blob.spec, "features": ["a", "b"]}, "one per input column"),
    ):
        with pytest.raises(InvalidPayload, match=message):
            learner_from_blob(ModelBlob(spec, dict(blob.arrays)))


def test_neural_scaling_is_fitted_on_private_data():
    learner, x = _blobs("mlp")
    blob = learner.to_blob()
    np.testing.assert_allclose(blob.arrays["0.mean"], x.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(blob.arrays["0.std"], x.std(axis=0), rtol=1e-4)
    assert (learner.predict(x) == (x[:, 0] > 50)).mean() > 0.8  # raw units in, scaling inside


@pytest.mark.parametrize("kind", ["mlp", "linear"])
def test_a_column_constant_in_private_data_does_not_sway_predictions_until_taught(kind):
    """A one-hot category this peer never met is all zeros in its rows: a test row that has it
    must get the prediction it would get without it, not one moved by untrained weights."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 300)
    x = np.column_stack([rng.normal(y * 2.0, 1.0), rng.normal(-y, 1.0), np.zeros(300)]).astype(np.float32)
    learner = make_learner(kind, (3,), ("a", "b", "c"), TrainConfig(epochs=10, seed=0, lr=3e-3))
    learner.set_features(("u", "v", "colour=green"), x)
    learner.fit(x, y, seed=0)
    unseen = x.copy()
    unseen[:, 2] = 1.0  # the category this peer never saw
    np.testing.assert_array_equal(learner.predict_proba(unseen), learner.predict_proba(x))
    # examples that vary the column (as counterfactuals do) still teach it
    varied = np.concatenate([x, unseen[y == 2]])
    learner.fit(varied, np.concatenate([y, np.full(int((y == 2).sum()), 0)]), epochs=5, seed=1)
    assert not np.array_equal(learner.predict_proba(unseen), learner.predict_proba(x))


def _toy_peer(pid, features, classes=("no", "yes"), missing=None, kind="mlp", seed=0, n=200):
    """Columns named a..e, each N(10 * index, index + 1); class 'yes' shifts a, b and c up."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    allx = {name: rng.normal(10 * (i + 1), i + 1, n) for i, name in enumerate("abcde")}
    for i, name in enumerate("abc"):
        allx[name] = allx[name] + y * 3 * (i + 1)
    if missing is not None:
        keep = y != missing
        y, allx = y[keep], {k: v[keep] for k, v in allx.items()}
    labels = np.array([classes.index(("no", "yes")[v]) for v in y])  # indices into this peer's own order
    x = np.stack([allx[f] for f in features], axis=1).astype(np.float32)
    learner = make_learner(kind, (len(features),), classes, TrainConfig(epochs=30, seed=seed, lr=3e-3))
    return Peer(pid, x, labels, classes, learner, TeachConfig(), seed=seed, features=features)


def test_counterfactuals_are_sent_in_the_students_columns_filled_from_its_column_model():
    teacher = _toy_peer("t", ("a", "b", "c", "e"))
    student = _toy_peer("s", ("d", "c", "a"), missing=1, seed=1)  # reordered, 'd' unknown to the teacher
    teacher.train()
    student.train()
    batches, report = teacher.teach("s", student.snapshot(1), 1)
    assert report.counterfactuals > 0 and batches
    d = student.x[:, 0]
    sent_d = np.concatenate([b.x[:, 0] for b in batches])
    # 'd' drawn as the student's own rows have it (independent of the rest here), not one constant
    assert sent_d.min() >= d.min() - 1e-4 and sent_d.max() <= d.max() + 1e-4 and len(np.unique(sent_d)) > 1
    # (within a standard deviation: the class sent is one the student lacks, so its shared columns lie
    # outside the student's rows and the sample's chance correlations move the conditional mean)
    assert abs(sent_d.mean() - d.mean()) < d.std() and sent_d.std() > 0.5 * d.std()
    for b in batches:
        assert b.features == ("d", "c", "a") and b.x.dtype == np.float32 and b.x.shape[1] == 3
        for j, name in ((1, "c"), (2, "a")):  # inside the teacher's own range of that column
            col = teacher.x[:, teacher.features.index(name)]
            assert b.x[:, j].min() >= col.min() - 1e-4 and b.x[:, j].max() <= col.max() + 1e-4
        assert student.absorb(b)
    assert len(student.store) == report.sent
    stranger = _toy_peer("x", ("a", "c", "d"))  # same names, other order: refused, never re-read by position
    with pytest.raises(InvalidPayload, match="feature columns"):
        stranger.absorb(batches[0])


def test_column_model_fills_a_missing_column_from_the_shared_ones_and_the_class():
    from peer.core.features import ColumnModel

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 2000)
    k = rng.normal(0, 1, 2000)
    m = 2 * k + 5 * y + rng.normal(0, 0.1, 2000)  # m follows k within a class, shifted by the class
    model = ColumnModel.fit(np.column_stack([k, m]).astype(np.float32), y, classes=3)  # class 2: no rows
    known = np.array([[-1.0], [0.0], [1.0]], np.float32)
    for c in (0, 1):
        got = model.fill(known, np.array([0]), np.array([1]), np.full(3, c), np.random.default_rng(1))
        np.testing.assert_allclose(got[:, 0], 2 * known[:, 0] + 5 * c, atol=0.5)
    pooled = model.fill(known, np.array([0]), np.array([1]), np.array([2, -1, 9]), np.random.default_rng(1))
    assert (pooled >= m.min() - 1e-4).all() and (pooled <= m.max() + 1e-4).all()
    # one constant (the old fill) against draws that keep the column's spread within the class
    draws = model.fill(np.zeros((500, 1), np.float32), np.array([0]), np.array([1]), np.zeros(500), rng)
    assert 0.05 < draws.std() < 0.3
    # forged arrays are refused
    arrays = model.arrays()
    for name, bad in (
        ("columns.cov", arrays["columns.cov"][:, :1]),
        ("columns.mean", np.full_like(arrays["columns.mean"], np.nan)),
        ("columns.low", arrays["columns.high"] + 1),
    ):
        with pytest.raises(InvalidPayload):
            ColumnModel.from_arrays({**arrays, name: bad}, 3, 2)


def test_column_model_travels_in_the_blob():
    learner = make_learner("forest", (3,), ("lo", "hi"), TrainConfig())
    rng = np.random.default_rng(0)
    x = rng.normal(50, 10, (60, 3)).astype(np.float32)
    y = (x[:, 0] > 50).astype(np.int64)
    learner.set_features(("a", "b", "c"), x, y)
    learner.fit(x, y)
    blob = learner.to_blob()
    rebuilt = learner_from_blob(ModelBlob(dict(blob.spec), dict(blob.arrays)))
    assert rebuilt.columns is not None
    np.testing.assert_array_equal(rebuilt.columns.cov, learner.columns.cov)
    np.testing.assert_array_equal(rebuilt.predict_proba(x), learner.predict_proba(x))
    unnamed = {k: v for k, v in blob.spec.items() if k not in ("features", "neutral")}
    with pytest.raises(InvalidPayload, match="column model"):
        learner_from_blob(ModelBlob(unnamed, dict(blob.arrays)))


def test_a_teacher_without_column_names_refuses_a_tabular_student():
    student = _toy_peer("s", ("a", "b", "c"), seed=1)
    student.train()
    unnamed = Peer(
        "u",
        student.x,
        student.y,
        student.classes,
        make_learner("mlp", (3,), student.classes, TrainConfig(epochs=1)),
        image=False,
    )
    unnamed.train()
    with pytest.raises(InvalidPayload, match="names feature columns"):
        unnamed.teach("s", student.snapshot(1), 1)


def test_no_shared_column_means_nothing_to_teach():
    teacher, student = _toy_peer("t", ("a", "b")), _toy_peer("s", ("d", "e"), missing=1, seed=1)
    teacher.train()
    student.train()
    batches, report = teacher.teach("s", student.snapshot(1), 1)
    assert batches == [] and report.qualified == 0


def test_class_labels_match_by_name():
    teacher = _toy_peer("t", ("a", "b", "c"))
    student = _toy_peer("s", ("a", "b", "c"), classes=("yes", "no"), missing=0, seed=1)  # never saw 'no'
    teacher.train()
    student.train()
    proba = teacher._student_proba(learner_from_blob(student.snapshot(1)))
    assert (proba.argmax(axis=1) == teacher.classes.index("yes")).mean() > 0.95  # columns re-ordered by name
    batches, _ = teacher.teach("s", student.snapshot(1), 1)
    assert batches
    student.absorb(batches[0])
    _, y = student.store.training_arrays(student.classes, student.input_shape)
    sent = [batches[0].classes[i] for i in batches[0].y]
    assert sorted(student.classes[i] for i in y) == sorted(sent)  # 'no' is index 0 there, 1 here
    assert set(sent) == {"no"}


def _digits(classes=(0, 1, 2, 3)):
    from sklearn.datasets import load_digits

    d = load_digits()
    keep = np.isin(d.target, classes)
    return Dataset(
        d.data[keep].astype(np.float32),
        d.target[keep].astype(np.int64),
        tuple(str(c) for c in range(max(classes) + 1)),
        tuple(d.feature_names),
    )


@pytest.mark.parametrize("kinds", [("forest", "mlp"), ("mlp", "forest")])
def test_forest_teaches_mlp_and_back_on_real_data(kinds):
    """Digits 0-3 as a table; peer-0 never saw a 0, peer-1 never a 1; they share half their columns."""
    from peer.data.sources import holdout

    train, test = holdout(_digits(), 0.3, seed=0)
    top = tuple(f for f in train.features if int(f.split("_")[1]) < 6)
    bottom = tuple(f for f in train.features if int(f.split("_")[1]) >= 2)
    cfg = ExperimentConfig(  # the paper's release: with ~250 rows a peer, guarded lets few examples pass
        peers=2,
        learners=",".join(kinds),
        epochs=40,
        retrain_epochs=20,
        lr=3e-3,
        batch_size=32,
        split="iid",
        privacy="paper",
        cf_start="instance",
        min_distance=0.0,
        alpha=0.5,  # the paper's target, as --privacy paper sets it
    )
    order = np.random.default_rng(0).permutation(len(train))
    parts = [np.sort(p[train.y[p] != k]) for k, p in enumerate(np.array_split(order, 2))]
    from peer.experiment import build_peer

    peers = [build_peer(cfg, k, kinds[k], train, parts[k], (top, bottom)[k]) for k in range(2)]
    for p in peers:
        p.train(round=0)

    def acc(p, cls=None):
        x = test.columns(p.features).x
        pick = test.y == cls if cls is not None else np.ones(len(test), bool)
        return float((p.learner.predict(x[pick]) == test.y[pick]).mean())

    before = [acc(peers[0], 0), acc(peers[1], 1)]
    overall = [acc(p) for p in peers]
    assert before == [0.0, 0.0]
    for teacher, student in ((peers[0], peers[1]), (peers[1], peers[0])):
        batches, report = teacher.teach(student.id, student.snapshot(1), 1)
        assert report.counterfactuals > 20
        for b in batches:
            student.absorb(b)
    for p in peers:
        p.train(round=1)
    after = [acc(peers[0], 0), acc(peers[1], 1)]
    assert min(after) > 0.4, after  # each learned the digit it never saw, from the other learner's kind
    assert all(acc(p) > o + 0.1 for p, o in zip(peers, overall)), (overall, [acc(p) for p in peers])


def test_peer_feature_sets_and_a_peer_sharing_nothing():
    data = Dataset(np.zeros((12, 4), np.float32), np.arange(12) % 2, ("a", "b"), ("x", "y", "c=red", "c=blue"))
    cfg = ExperimentConfig(peers=3, learners="mlp", split="iid", peer_features="x,c;c,y;y")
    assert peer_feature_sets(cfg, data) == [("x", "c=red", "c=blue"), ("y", "c=red", "c=blue"), ("y",)]
    with pytest.raises(UsageError, match="peer-2's columns share none"):
        build_peers(ExperimentConfig(peers=3, learners="mlp", split="iid", peer_features="x;x;y"), data)
    with pytest.raises(UsageError, match="peer-1 names column 'z'"):
        peer_feature_sets(ExperimentConfig(peers=3, learners="mlp", split="iid", peer_features="x;z;y"), data)


def test_batch_features_must_be_the_receivers():
    ok = ExampleBatch(
        "t",
        "s",
        1,
        0,
        np.full((2, 2), 100.0, np.float32),
        np.array([0, 1]),
        ("a", "b"),
        np.zeros(2, np.float32),
        ("p", "q"),
    )
    ok.validate((2,), ("a", "b"), ("p", "q"))  # tables are in their own units, not [0, 1]
    with pytest.raises(InvalidPayload, match="feature columns"):
        ok.validate((2,), ("a", "b"), ("q", "p"))
    with pytest.raises(InvalidPayload, match="NaN"):
        ExampleBatch(
            "t",
            "s",
            1,
            0,
            np.full((2, 2), np.nan, np.float32),
            np.array([0, 1]),
            ("a", "b"),
            np.zeros(2, np.float32),
            ("p", "q"),
        ).validate((2,), ("a", "b"), ("p", "q"))
