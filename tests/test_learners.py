"""Learners: every kind round-trips through a blob; untrusted blobs are checked."""

import numpy as np
import pytest

from peer.core.blob import InvalidPayload, ModelBlob
from peer.errors import UsageError
from peer.learners import TrainConfig, learner_from_blob, learner_kinds, make_learner

CLASSES = tuple(f"c{i}" for i in range(4))


def _data(n=120, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)  # class c3 never appears in training
    x = rng.random((n, 8, 8), dtype=np.float32) * 0.3
    for c in range(3):
        x[y == c, c * 2 : (c * 2) + 2, :] += 0.6
    return x, y


@pytest.fixture(params=["cnn", "mlp", "forest"])
def fitted(request):
    x, y = _data()
    learner = make_learner(request.param, (8, 8), CLASSES, TrainConfig(epochs=10, seed=1))
    return learner.fit(x, y), x, y


def test_all_kinds_are_registered():
    assert set(learner_kinds()) >= {"cnn", "mlp", "forest"}


def test_learns_and_predicts_over_all_classes(fitted):
    learner, x, y = fitted
    proba = learner.predict_proba(x)
    assert proba.shape == (len(x), 4) and proba.dtype == np.float32
    assert np.allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert (learner.predict(x) == y).mean() > 0.9


def test_blob_round_trip_predicts_identically(fitted):
    learner, x, _ = fitted
    blob = learner.to_blob()
    assert blob.kind == learner.kind and list(blob.classes) == list(CLASSES)
    rebuilt = learner_from_blob(ModelBlob(dict(blob.spec), {k: v.copy() for k, v in blob.arrays.items()}))
    assert np.array_equal(rebuilt.predict_proba(x), learner.predict_proba(x))


def test_blob_arrays_must_match_the_spec(fitted):
    learner, _, _ = fitted
    blob = learner.to_blob()
    name = sorted(blob.arrays)[-1]
    arrays = dict(blob.arrays)
    arrays[name] = np.zeros((3, 3), dtype=arrays[name].dtype)
    with pytest.raises(InvalidPayload):
        learner_from_blob(ModelBlob(blob.spec, arrays))
    missing = dict(blob.arrays)
    del missing[name]
    with pytest.raises(InvalidPayload):
        learner_from_blob(ModelBlob(blob.spec, missing))


def test_nan_weights_and_unknown_kinds_are_refused(fitted):
    learner, _, _ = fitted
    blob = learner.to_blob()
    name = next(k for k, v in blob.arrays.items() if v.dtype.kind == "f")
    arrays = dict(blob.arrays)
    arrays[name] = arrays[name].copy()
    arrays[name].flat[0] = np.nan
    with pytest.raises(InvalidPayload, match="NaN"):
        learner_from_blob(ModelBlob(blob.spec, arrays))
    with pytest.raises(InvalidPayload, match="unknown learner kind"):
        learner_from_blob(ModelBlob({**blob.spec, "kind": "svm"}, blob.arrays))
    with pytest.raises(InvalidPayload, match="dtype"):
        learner_from_blob(ModelBlob(blob.spec, {**blob.arrays, name: np.array([object()])}))


def test_forest_blob_with_cyclic_children_is_refused():
    x, y = _data()
    blob = make_learner("forest", (8, 8), CLASSES, TrainConfig()).fit(x, y).to_blob()
    left = blob.arrays["left"].copy()
    inner = np.flatnonzero(left >= 0)
    left[inner[1]] = inner[0]  # points back to an earlier node
    with pytest.raises(InvalidPayload, match="not a forest"):
        learner_from_blob(ModelBlob(blob.spec, {**blob.arrays, "left": left}))


def test_unknown_learner_kind_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown learner kind 'svm'"):
        make_learner("svm", (8, 8), CLASSES)


@pytest.mark.filterwarnings("ignore:.*non-meta parameter")  # loading weights into meta tensors is a no-op
@pytest.mark.parametrize("kind", ["cnn", "mlp"])
def test_a_torch_model_from_a_blob_is_built_on_the_device_asked_for(kind):
    """A received model runs where the receiving peer's own does (its --device), not wherever
    "auto" would put it. The meta device stands in for a second device on a machine without one."""
    x, y = _data()
    blob = make_learner(kind, (8, 8), CLASSES, TrainConfig(epochs=1, seed=1)).fit(x, y).to_blob()
    on_cpu = learner_from_blob(blob, "cpu")
    assert {p.device.type for p in on_cpu.module.parameters()} == {"cpu"}
    on_meta = learner_from_blob(blob, "meta")
    assert on_meta.device.type == "meta"
    assert {p.device.type for p in on_meta.module.parameters()} == {"meta"}


def test_forest_walk_predicts_as_scikit_learn():
    """The flat walk of the flattened trees gives what scikit-learn's own forest gives, row for row."""
    from sklearn.ensemble import RandomForestClassifier

    from peer.learners.forest import _flatten_forest, _predict

    rng = np.random.default_rng(3)
    x = rng.random((400, 12), dtype=np.float32)
    y = (x[:, 0] + x[:, 3] * 2 + rng.normal(0, 0.3, 400) > 1.5).astype(int) + (x[:, 5] > 0.7)
    forest = RandomForestClassifier(n_estimators=7, max_depth=9, random_state=0).fit(x, y)
    probe = np.concatenate([x[:50], rng.random((200, 12), dtype=np.float32)])
    ours = _predict(_flatten_forest(forest, 3), probe)
    assert np.allclose(ours, forest.predict_proba(probe), atol=1e-6)
    assert _predict(_flatten_forest(forest, 3), probe[:0]).shape == (0, 3)


def test_compiled_trees_reach_the_leaves_of_the_arrays_own_walk():
    """scikit-learn's compiled walk, rebuilt from the arrays, predicts bit for bit as the arrays'
    own walk (NaN inputs included); arrays it cannot take exactly fall back to that walk."""
    from sklearn.ensemble import RandomForestClassifier

    from peer.learners.forest import ForestLearner, _flatten_forest, _predict, compiled_trees

    rng = np.random.default_rng(4)
    x = rng.random((300, 20), dtype=np.float32)
    y = (x[:, 1] + x[:, 7] > 1.0).astype(int) + 2 * (x[:, 3] > 0.8)
    a = _flatten_forest(RandomForestClassifier(n_estimators=9, max_depth=12, random_state=1).fit(x, y), 4)
    trees = compiled_trees(a, 20, 4)
    assert trees is not None and len(trees) == 9
    probe = np.concatenate([x[:40], rng.random((300, 20), dtype=np.float32)])
    probe[::7, 3] = np.nan
    probe[::5, 1] = a["threshold"][a["feature"] == 1][:1]  # on a threshold: left, as x <= t
    assert np.array_equal(_predict(a, probe, trees), _predict(a, probe))
    # trees out of order, or a node shared by two trees: not one block per tree
    shuffled = {**a, "roots": a["roots"][::-1].copy()}
    assert compiled_trees(shuffled, 20, 4) is None
    shared = {k: v.copy() for k, v in a.items()}
    inner = np.flatnonzero(shared["left"] >= 0)
    shared["left"][inner[0]] = a["roots"][-1]  # tree 0 points into the last tree's block
    assert compiled_trees(shared, 20, 4) is None
    learner = ForestLearner((20,), ("a", "b", "c", "d"), TrainConfig())
    learner.arrays = shared
    assert np.array_equal(learner.predict_proba(probe), _predict(shared, probe))  # the arrays' walk


def test_a_process_that_only_receives_forests_never_imports_scikit_learn():
    """Predicting with a forest from a blob walks its arrays; scikit-learn (about 90 MB a process)
    is loaded only where a forest is fitted, and its compiled walk used only there."""
    import subprocess
    import sys

    code = """
import sys
import numpy as np
from peer.learners import TrainConfig
from peer.learners.base import learner_from_blob
from peer.learners.forest import ForestLearner
f = ForestLearner((2,), ("a", "b"), TrainConfig())
f.arrays = {
    "roots": np.array([0], dtype=np.int32), "left": np.array([1, -1, -1], dtype=np.int32),
    "right": np.array([2, -1, -1], dtype=np.int32), "feature": np.array([0, 0, 0], dtype=np.int32),
    "threshold": np.array([0.5, 0.0, 0.0]), "value": np.array([[0.5, 0.5], [1, 0], [0, 1]], dtype=np.float32),
}
got = learner_from_blob(f.to_blob()).predict_proba(np.array([[0.2, 0.0], [0.9, 0.0]], dtype=np.float32))
assert got.argmax(axis=1).tolist() == [0, 1], got
print("sklearn" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False", out.stdout + out.stderr


@pytest.mark.parametrize("kind", ["cnn", "mlp"])
def test_a_fit_gives_the_weights_torch_optim_adam_under_one_cycle_gives(kind):
    """peer.learners.optim replaces torch.optim.Adam + OneCycleLR operation for operation: the same
    data, seed and epochs give bit-identical weights (so no measured accuracy moves with it)."""
    import copy

    import torch
    from torch import nn

    x, y = _data(n=200)
    ours = make_learner(kind, (8, 8), CLASSES, TrainConfig(epochs=3, seed=1, batch_size=32, device="cpu"))
    ref = copy.deepcopy(ours)
    initial = copy.deepcopy(ours.module.state_dict())
    ours.fit(x, y, epochs=3, seed=5)
    assert all(not torch.equal(v, initial[k]) for k, v in ours.module.state_dict().items() if v.dtype.is_floating_point)

    cfg, module = ref.train_config, ref.module
    xs, ys = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    total = 3 * -(-len(xs) // cfg.batch_size)
    opt = torch.optim.Adam(module.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2 * cfg.lr, total_steps=total, pct_start=0.15)
    generator = torch.Generator().manual_seed(5)
    module.train()
    for _ in range(3):
        order = torch.randperm(len(xs), generator=generator)
        for start in range(0, len(xs), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(module(xs[idx]), ys[idx]).backward()
            opt.step()
            sched.step()
    got, want = ours.module.state_dict(), module.state_dict()
    assert got.keys() == want.keys()
    moved = [k for k in want if not torch.equal(got[k], want[k])]
    assert not moved, f"weights differ from torch.optim's: {moved}"


def test_training_a_network_never_imports_the_torch_compiler():
    """torch.optim imports torch._dynamo and sympy (about 150 MB a process) on its first optimiser;
    a peer's fit uses peer.learners.optim and leaves them unloaded."""
    import subprocess
    import sys

    code = """
import sys
import numpy as np
from peer.learners import TrainConfig, make_learner
x = np.random.default_rng(0).random((64, 8, 8), dtype=np.float32)
y = np.arange(64) % 4
learner = make_learner("cnn", (8, 8), tuple("abcd"), TrainConfig(epochs=1, device="cpu")).fit(x, y)
learner.predict(x)
print("torch._dynamo" in sys.modules, "sympy" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False False", out.stdout + out.stderr
