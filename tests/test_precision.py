"""Compact published models: float16 and 8-bit blobs round-trip to float32 learners that predict
as the original does, a forest's decisions never move, and forged quantisation is refused."""

import numpy as np
import pytest

from peer.core.blob import InvalidPayload, ModelBlob
from peer.core.peer import Peer, TeachConfig
from peer.core.precision import compact, expand
from peer.learners import TrainConfig, learner_from_blob, make_learner


def _trained(kind: str):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    x = (rng.random((300, 8, 8)) * 0.3).astype(np.float32)
    for c in range(3):
        x[y == c, 2 * c : 2 * c + 3] += 0.6
    learner = make_learner(kind, (8, 8), ("a", "b", "c"), TrainConfig(epochs=3, seed=0))
    learner.fit(np.clip(x, 0, 1), y, seed=0)
    return learner, np.clip(x, 0, 1)


@pytest.mark.parametrize("kind", ["cnn", "mlp", "forest"])
@pytest.mark.parametrize("precision", ["float16", "int8"])
def test_compact_blob_rebuilds_a_learner_that_predicts_as_the_original(kind, precision):
    learner, x = _trained(kind)
    full = learner.to_blob()
    small = compact(full, precision)
    assert small.nbytes() < full.nbytes() or kind == "forest"
    rebuilt = learner_from_blob(ModelBlob(dict(small.spec), dict(small.arrays)))
    assert all(a.dtype != np.float16 for a in rebuilt.to_blob().arrays.values())
    agree = (rebuilt.predict(x) == learner.predict(x)).mean()
    assert agree >= (0.99 if precision == "float16" else 0.95)
    if kind == "forest":  # thresholds are float64 and node indices ints: untouched
        for name in ("threshold", "feature", "left", "right"):
            np.testing.assert_array_equal(small.arrays[name], full.arrays[name])
    if precision == "float16" and kind != "forest":
        assert small.nbytes() < 0.6 * full.nbytes()
    if precision == "int8" and kind != "forest":
        assert small.nbytes() < 0.35 * full.nbytes()


def test_float32_is_the_blob_itself_and_expand_of_it_too():
    learner, _ = _trained("mlp")
    blob = learner.to_blob()
    assert compact(blob, "float32") is blob and expand(blob) is blob
    with pytest.raises(ValueError, match="precision"):
        compact(blob, "int4")


def test_forged_quantisation_is_refused():
    learner, _ = _trained("mlp")
    small = compact(learner.to_blob(), "int8")
    name = next(iter(small.spec["quantized"]))
    bad_specs = [
        {**small.spec, "precision": "int3"},
        {**small.spec, "quantized": {**small.spec["quantized"], name: [0.0, -1.0]}},
        {**small.spec, "quantized": {**small.spec["quantized"], name: [float("nan"), 1.0]}},
        {**small.spec, "quantized": {**small.spec["quantized"], "nope": [0.0, 1.0]}},
        {**small.spec, "quantized": [1, 2]},
        {**small.spec, "precision": "float16"},  # a quantisation map on a float16 blob
    ]
    for spec in bad_specs:
        with pytest.raises(InvalidPayload):
            learner_from_blob(ModelBlob(spec, dict(small.arrays)))
    wrong_dtype = {**small.arrays, name: small.arrays[name].astype(np.int32)}
    with pytest.raises(InvalidPayload):
        learner_from_blob(ModelBlob(dict(small.spec), wrong_dtype))


def test_a_peer_publishes_the_compact_model_and_keeps_its_own_in_float32():
    learner, x = _trained("mlp")
    y = learner.predict(x)
    peer = Peer("p", x, y, ("a", "b", "c"), learner, TeachConfig(blob_precision="float16"))
    published = peer.snapshot(1)
    assert published.spec["precision"] == "float16"
    assert all(a.dtype == np.float16 for a in published.arrays.values() if a.dtype.kind == "f")
    assert all(a.dtype == np.float32 for a in peer.learner.to_blob().arrays.values())
    with pytest.raises(Exception, match="precision"):
        TeachConfig(blob_precision="bf16")
