"""Compact encodings on the wire: rank-r factored model blobs and 16-level images round-trip
within their stated error, forged ones are refused, and the release filter and leakage measures
judge exactly the images that are sent."""

from __future__ import annotations

import numpy as np
import pytest

import peer.core.peer as peer_module
from peer.core.blob import ExampleBatch, InvalidPayload, ModelBlob, PayloadTooLarge, pack_nibbles, unpack_nibbles
from peer.core.counterfactual import CounterfactualConfig
from peer.core.peer import TeachConfig
from peer.core.precision import compact, expand, factor
from peer.grpc.wire import decode_batch, encode_batch
from peer.learners import TrainConfig, learner_from_blob, make_learner
from peer.privacy.measures import RatioIndex
from protos.ckd.v1 import wire_pb2
from tests.test_precision import _trained
from tests.test_privacy_release import _image_peer, bars


def test_a_factored_matrix_is_its_best_rank_r_approximation():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(40, 60)).astype(np.float32)
    blob = ModelBlob({"kind": "mlp"}, {"w": w, "b": np.ones(40, np.float32), "small": np.ones((3, 3), np.float32)})
    small = factor(blob, 5)
    assert set(small.arrays) == {"w@a", "w@b", "b", "small"}  # a 3 x 3 matrix is no smaller as factors
    assert small.arrays["w@a"].shape == (40, 5) and small.arrays["w@b"].shape == (5, 60)
    back = expand(small).arrays["w"]
    u, s, vt = np.linalg.svd(w.astype(np.float64), full_matrices=False)
    best = (u[:, :5] * s[:5]) @ vt[:5]
    np.testing.assert_allclose(back, best, atol=1e-4)
    # Eckart-Young: the error is exactly the singular values left out
    assert np.linalg.norm(back - w) == pytest.approx(np.sqrt((s[5:] ** 2).sum()), rel=1e-4)
    full_rank = expand(factor(blob, 39)).arrays["w"]
    assert np.abs(full_rank - w).max() < np.abs(back - w).max()
    assert factor(blob, 0) is blob
    with pytest.raises(ValueError, match="rank"):
        factor(blob, -1)


def test_fmnist_cnn_at_rank_16_in_int8_is_a_sixth_of_the_bytes_and_predicts_as_the_original(fmnist):
    train, _ = fmnist
    x = train.x[:3000].astype(np.float32) / 255
    learner = make_learner("cnn", (28, 28), train.classes, TrainConfig(epochs=2, seed=0))
    learner.fit(x[:2000], train.y[:2000], seed=0)
    full = learner.to_blob()
    small = compact(full, "int8", rank=16)
    assert set(small.spec["factored"]) == {"6.weight"}  # the 3136 x 128 layer; the others are no smaller
    assert small.nbytes() < full.nbytes() / 5
    rebuilt = learner_from_blob(ModelBlob(dict(small.spec), dict(small.arrays)))
    assert set(rebuilt.to_blob().arrays) == set(full.arrays)
    # on images it never trained on: what a teacher asks of a student's model
    assert (rebuilt.predict(x[2000:]) == learner.predict(x[2000:])).mean() >= 0.97


def test_forged_factors_are_refused():
    learner, _ = _trained("mlp")
    small = compact(learner.to_blob(), "float32", rank=4)
    name = next(iter(small.spec["factored"]))
    m, n = small.spec["factored"][name]
    a, b = small.arrays[name + "@a"], small.arrays[name + "@b"]
    bad = [
        ({**small.spec, "factored": {name: [m + 1, n]}}, small.arrays),  # rows do not fit
        ({**small.spec, "factored": {name: [m, n, 1]}}, small.arrays),
        ({**small.spec, "factored": []}, small.arrays),
        ({**small.spec, "factored": {name: [m, n], "ghost": [m, n]}}, small.arrays),  # no factors
        (small.spec, {k: v for k, v in small.arrays.items() if k != name + "@b"}),  # a factor missing
        ({k: v for k, v in small.spec.items() if k != "factored"}, small.arrays),  # factors not in the map
        (small.spec, {**small.arrays, name + "@a": np.ones((m, 9), np.float32)}),  # inner sizes differ
        ({**small.spec, "factored": {name: [m, 6]}}, {**small.arrays, name + "@b": np.ones((4, 6), np.float32)}),
    ]
    for spec, arrays in bad:
        with pytest.raises(InvalidPayload):
            learner_from_blob(ModelBlob(dict(spec), dict(arrays)))
    # a product far larger than the factors (a rank-1 "bomb") is refused before it is computed
    side = 1 << 15
    tall, wide = np.ones((side, 1), np.float32), np.ones((1, side), np.float32)
    huge = ModelBlob(
        {**small.spec, "factored": {name: [side, side]}}, {**small.arrays, name + "@a": tall, name + "@b": wide}
    )
    with pytest.raises(PayloadTooLarge):
        expand(huge)
    assert a.shape[1] == b.shape[0] == 4


@pytest.mark.parametrize("shape", [(5, 8, 8), (3, 7, 5), (4, 1, 3, 3), (0, 8, 8)])
def test_nibbles_round_trip_exactly(shape):
    x = np.random.default_rng(0).integers(0, 16, shape).astype(np.uint8)
    packed = pack_nibbles(x)
    assert packed.shape == (shape[0], (int(np.prod(shape[1:])) + 1) // 2)
    np.testing.assert_array_equal(unpack_nibbles(packed, shape), x)


def _batch(levels: int, x: np.ndarray) -> ExampleBatch:
    n = len(x)
    return ExampleBatch(
        "t", "s", 1, 0, x, np.arange(n) % 3, ("a", "b", "c"), np.linspace(0, 1, n).astype(np.float32), (), levels
    )


def test_a_16_level_batch_travels_in_half_the_bytes_and_arrives_as_sent():
    rng = np.random.default_rng(1)
    images = rng.random((50, 28, 28), dtype=np.float32)
    full = _batch(255, np.round(images * 255).astype(np.uint8))
    small = _batch(15, np.round(images * 15).astype(np.uint8))
    # the stated error: 16 levels put each pixel within 1/30 of its value, 256 within 1/510
    assert np.abs(small.inputs() - images).max() <= 1 / 30 + 1e-6
    assert np.abs(full.inputs() - images).max() <= 1 / 510 + 1e-6
    sizes = {}
    for batch in (full, small):
        chunks = list(encode_batch(batch))
        sizes[batch.levels] = sum(c.ByteSize() for c in chunks)
        back = decode_batch(iter(chunks))
        back.validate((28, 28), ("a", "b", "c"))
        assert back.levels == batch.levels
        for name in ("x", "y", "distance"):
            np.testing.assert_array_equal(getattr(back, name), getattr(batch, name))
        np.testing.assert_array_equal(back.inputs(), batch.inputs())
    assert small.nbytes() == 50 * 392 + small.y.nbytes + small.distance.nbytes
    assert sizes[15] < 0.52 * sizes[255]


def test_forged_levels_are_refused():
    x = np.full((2, 4, 4), 3, np.uint8)
    with pytest.raises(InvalidPayload, match="levels"):
        _batch(7, x).validate((4, 4), ("a", "b", "c"))
    with pytest.raises(InvalidPayload, match="levels"):
        _batch(15, np.full((2, 4, 4), 200, np.uint8)).validate((4, 4), ("a", "b", "c"))
    with pytest.raises(InvalidPayload, match="levels"):
        _batch(15, x.astype(np.float32) / 15).validate((4, 4), ("a", "b", "c"))
    chunks = list(encode_batch(_batch(15, x)))
    for levels in (7, 256):
        header = wire_pb2.BatchHeader()
        header.CopyFrom(chunks[0].header)
        header.levels = levels
        with pytest.raises(InvalidPayload, match="levels"):
            decode_batch(iter([wire_pb2.ExampleChunk(header=header), *chunks[1:]]))
    # a stream with the bytes of 256-level images under a 16-level header does not fit its header
    unpacked = list(encode_batch(_batch(255, x)))
    header = wire_pb2.BatchHeader()
    header.CopyFrom(unpacked[0].header)
    header.levels = 15
    with pytest.raises(InvalidPayload, match="more bytes"):
        decode_batch(iter([wire_pb2.ExampleChunk(header=header), *unpacked[1:]]))


def test_the_filter_and_the_measures_judge_the_16_level_images_that_are_sent(monkeypatch):
    judged: list[np.ndarray] = []
    measured: list[np.ndarray] = []
    ratio, leakage = RatioIndex.ratio, peer_module.measure_leakage

    def judging(self, candidates, *args, **kwargs):
        judged.append(np.array(candidates))
        return ratio(self, candidates, *args, **kwargs)

    def measuring(x, *args, **kwargs):
        measured.append(np.array(x))
        return leakage(x, *args, **kwargs)

    monkeypatch.setattr(RatioIndex, "ratio", judging)
    monkeypatch.setattr(peer_module, "measure_leakage", measuring)
    teach = TeachConfig(CounterfactualConfig(start="mix", start_k=4), min_distance=1.0, example_precision="uint4")
    teacher = _image_peer(teach, data=bars)
    student = _image_peer(TeachConfig(), drop_class=2, seed=1, data=bars)
    batches, report = teacher.teach(student.id, student.snapshot(1), 1)
    assert report.sent > 0 and all(b.levels == 15 and b.x.max() <= 15 for b in batches)
    sent = np.concatenate([b.inputs() for b in batches])
    judged_rows = {row.tobytes() for row in np.concatenate(judged).astype(np.float32).reshape(-1, 64)}
    # every image sent is one the filter judged, bit for bit, and all it judged is on the 16 levels
    assert all(row.tobytes() in judged_rows for row in sent.reshape(len(sent), -1))
    all_judged = np.concatenate(judged)
    np.testing.assert_allclose(all_judged * 15, np.round(all_judged * 15), atol=1e-4)
    # the leakage measures saw exactly what was sent (every example: fewer than their sample size)
    np.testing.assert_array_equal(np.concatenate(measured).reshape(len(sent), -1), sent.reshape(len(sent), -1))
    assert report.near_copies == 0 and report.leakage["count"] == report.sent
    with pytest.raises(Exception, match="example precision"):
        TeachConfig(example_precision="float8")
