"""Leakage measures: nearest neighbours, the private set's own scale, SSIM, LeakageStats, near-copies."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from peer.privacy import LeakageStats, measure_leakage, near_copy_mask, nearest, private_nn, ssim
from peer.privacy.measures import aligned_nearest_ratio, nearest_ratio, shifted

torch.set_num_threads(1)

# three private points with hand-computed nearest-other distances 3, 3 and 4
PRIVATE = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]], np.float32)
DICT_KEYS = {
    "count",
    "near_copies",
    "near_copy_share",
    "to_nearest_median",
    "to_nearest_p05",
    "to_nearest_min",
    "to_source_median",
    "nearest_private_ratio_median",
    "nearest_private_ratio_p05",
    "ssim_median",
    "ssim_max",
}


def brute(points: np.ndarray, reference: np.ndarray, exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    a, b = points.reshape(len(points), -1).astype(np.float64), reference.reshape(len(reference), -1).astype(np.float64)
    d = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    if exclude_self:
        np.fill_diagonal(d, np.inf)
    return d.min(1), d.argmin(1)


@pytest.mark.parametrize("chunk", [1, 7, 64, 5000])
def test_nearest_chunked_matches_brute_force(chunk):
    rng = np.random.default_rng(chunk)
    points, reference = rng.random((90, 3, 5, 5), np.float32), rng.random((70, 3, 5, 5), np.float32)
    dist, index = nearest(points, reference, chunk=chunk)
    want_d, want_i = brute(points, reference)
    np.testing.assert_allclose(dist, want_d, rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(index, want_i)


@pytest.mark.parametrize("chunk", [1, 16, 1000])
def test_nearest_exclude_self_matches_brute_force(chunk):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 12)).astype(np.float32)
    dist, index = nearest(x, x, exclude_self=True, chunk=chunk)
    want_d, want_i = brute(x, x, exclude_self=True)
    np.testing.assert_allclose(dist, want_d, rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(index, want_i)
    assert not np.any(index == np.arange(len(x)))


def test_nearest_exact_copy_is_at_zero_even_far_from_origin():
    rng = np.random.default_rng(2)
    reference = (rng.random((40, 784)) * 0.1 + 0.9).astype(np.float32)  # large norms: float32 matmul would not give 0
    dist, index = nearest(reference[[5, 17]], reference)
    np.testing.assert_array_equal(dist, [0.0, 0.0])
    np.testing.assert_array_equal(index, [5, 17])


def test_private_nn_hand_computed_and_duplicates_count():
    np.testing.assert_allclose(private_nn(PRIVATE), [3.0, 3.0, 4.0])
    dup = np.array([[0.0, 0.0], [0.0, 0.0], [5.0, 0.0]], np.float32)
    np.testing.assert_allclose(private_nn(dup), [0.0, 0.0, 5.0])


def test_nearest_rejects_bad_shapes():
    with pytest.raises(ValueError, match="points"):
        nearest(np.zeros((3, 4)), np.zeros((3, 5)))
    with pytest.raises(ValueError, match="exclude_self"):
        nearest(np.zeros((3, 4)), np.zeros((2, 4)), exclude_self=True)
    with pytest.raises(ValueError, match="reference"):
        nearest(np.zeros((3, 4)), np.zeros((0, 4)))
    with pytest.raises(ValueError, match="chunk"):
        nearest(np.zeros((3, 4)), np.zeros((3, 4)), chunk=0)


def test_exact_copy_is_near_copy_with_ratio_zero_and_far_point_is_not():
    sent = np.array([[3.0, 0.0], [100.0, 100.0], [0.0, 3.9]], np.float32)
    stats = measure_leakage(sent, PRIVATE, image=False, sources=np.array([1, -1, 2]))
    np.testing.assert_allclose(stats.to_nearest, [0.0, np.hypot(100, 96), 0.1], rtol=1e-5)
    np.testing.assert_allclose(stats.ratio[[0, 2]], [0.0, 0.1 / 4.0], rtol=1e-5)
    assert stats.ratio[1] > 1
    np.testing.assert_allclose(stats.to_source[[0, 2]], [0.0, 0.1], rtol=1e-5)
    assert np.isnan(stats.to_source[1])
    assert all(a.dtype == np.float32 for a in (stats.to_source, stats.to_nearest, stats.ratio, stats.ssim_nearest))
    summary = stats.to_dict()
    assert set(summary) == DICT_KEYS
    assert summary["count"] == 3 and summary["near_copies"] == 2
    assert summary["near_copy_share"] == pytest.approx(2 / 3)
    assert summary["to_nearest_min"] == 0.0
    assert summary["to_source_median"] == pytest.approx(0.05, rel=1e-5)
    assert summary["ssim_median"] is None and summary["ssim_max"] is None
    json.dumps(summary, allow_nan=False)


def test_copy_of_a_duplicated_private_example_is_a_near_copy():
    dup = np.array([[0.0, 0.0], [0.0, 0.0], [5.0, 0.0]], np.float32)
    stats = measure_leakage(np.array([[0.0, 0.0], [0.1, 0.0]], np.float32), dup, image=False)
    assert stats.ratio[0] == 0.0 and np.isinf(stats.ratio[1])
    assert stats.to_dict()["near_copies"] == 1


def test_near_copy_mask_checks_every_private_example():
    private = np.array([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0], [20.0, 0.0]], np.float32)
    scale = private_nn(private)  # 1, 1, 10, 10
    # (5.4, 0): nearest is (1, 0) at 4.4 (4.4 x its scale) but (10, 0) is at 4.6 = 0.46 x its scale
    sent = np.array([[5.4, 0.0], [0.0, 0.0], [30.0, 0.0], [1.5, 0.0]], np.float32)
    np.testing.assert_array_equal(near_copy_mask(sent, private, scale), [True, True, False, True])
    np.testing.assert_array_equal(near_copy_mask(sent, private, scale, fraction=0.4), [False, True, False, False])
    np.testing.assert_array_equal(near_copy_mask(sent, private, scale, fraction=0.0), [False, True, False, False])
    with pytest.raises(ValueError, match="private_nn"):
        near_copy_mask(sent, private, scale[:3])


def test_ssim_identical_is_one_and_negation_is_low():
    rng = np.random.default_rng(3)
    img = rng.random((4, 28, 28)).astype(np.float32)
    np.testing.assert_allclose(ssim(img, img), 1.0, atol=1e-12)
    np.testing.assert_allclose(ssim(img[:, None], img[:, None]), 1.0, atol=1e-12)
    assert np.all(ssim(img, 1.0 - img) < 0.0)
    small = rng.random((2, 5, 6))
    np.testing.assert_allclose(ssim(small, small), 1.0, atol=1e-12)  # window clipped to 5
    with pytest.raises(ValueError, match="same shape"):
        ssim(img, img[:, :20])
    with pytest.raises(ValueError, match="images"):
        ssim(img.reshape(4, -1), img.reshape(4, -1))


def test_ssim_matches_reference_gaussian_ssim():
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(4)
    a = rng.random((3, 28, 28))
    b = np.clip(a + rng.normal(0, 0.2, a.shape), 0, 1)

    def reference(x: np.ndarray, y: np.ndarray) -> float:  # scikit-image's algorithm (gaussian_weights=True)
        f = lambda t: ndimage.gaussian_filter(t, sigma=1.5, truncate=3.5, mode="reflect")  # noqa: E731
        mx, my = f(x), f(y)
        vx, vy, cxy = f(x * x) - mx**2, f(y * y) - my**2, f(x * y) - mx * my
        c1, c2 = 0.01**2, 0.03**2
        s = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
        return float(s[5:-5, 5:-5].mean())

    np.testing.assert_allclose(ssim(a, b), [reference(x, y) for x, y in zip(a, b)], rtol=0, atol=1e-5)


def test_measure_leakage_on_images_and_merge():
    rng = np.random.default_rng(5)
    private = rng.random((30, 1, 8, 8)).astype(np.float32)
    sent = np.concatenate([private[:4], rng.random((6, 1, 8, 8)).astype(np.float32)])
    stats = measure_leakage(sent, private, sources=private[list(range(10))])
    np.testing.assert_allclose(stats.ssim_nearest[:4], 1.0, atol=1e-6)
    assert stats.to_dict()["ssim_max"] == pytest.approx(1.0, abs=1e-6)
    assert stats.to_dict()["near_copies"] >= 4
    np.testing.assert_array_equal(stats.to_source[:4], 0.0)
    both = LeakageStats.merge([stats, measure_leakage(sent[:3], private, private_nn(private))])
    assert len(both) == 13 and both.to_dict()["count"] == 13
    np.testing.assert_array_equal(both.to_nearest[10:], stats.to_nearest[:3])
    assert LeakageStats.merge([]).to_dict()["count"] == 0
    with pytest.raises(ValueError, match="image"):
        measure_leakage(sent.reshape(10, -1), private.reshape(30, -1))
    with pytest.raises(ValueError, match="sent"):
        measure_leakage(sent[:, :, :4], private)


def test_nearest_is_exact_for_tight_clusters_far_apart():
    """Spread 0.01 around centres thousands apart: float32 squared distances are off by more than
    the gaps between neighbours, so the search must notice and fall back to float64."""
    rng = np.random.default_rng(6)
    centres = 3000.0 * np.arange(4)[:, None] * np.ones(16)
    reference = (np.repeat(centres, 25, 0) + 0.01 * rng.normal(size=(100, 16))).astype(np.float32)
    points = (reference[rng.integers(0, 100, 60)] + 0.003 * rng.normal(size=(60, 16))).astype(np.float32)
    dist, index = nearest(points, reference, chunk=16)
    want_d, want_i = brute(points, reference)
    np.testing.assert_array_equal(index, want_i)
    np.testing.assert_allclose(dist, want_d, rtol=1e-9)
    own_d, _ = nearest(reference, reference, exclude_self=True)
    np.testing.assert_allclose(own_d, brute(reference, reference, exclude_self=True)[0], rtol=1e-9)


def test_shifted_moves_whole_pixels_with_zero_fill():
    x = np.arange(2 * 4 * 5, dtype=np.float32).reshape(2, 4, 5)
    moved = shifted(x, 1)
    assert moved.shape == (9, 2, 4, 5)
    np.testing.assert_array_equal(moved[4], x)  # the middle one is unshifted
    down_right = moved[8]  # dy = dx = +1
    np.testing.assert_array_equal(down_right[:, 1:, 1:], x[:, :-1, :-1])
    assert (down_right[:, 0, :] == 0).all() and (down_right[:, :, 0] == 0).all()
    with pytest.raises(ValueError):
        shifted(x[0], 1)


def test_aligned_ratio_finds_a_shifted_copy_the_pixel_ratio_misses():
    rng = np.random.default_rng(0)
    private = np.zeros((30, 12, 12), np.float32)  # one texture, a little noise each, a blank border
    private[:, 2:10, 2:10] = rng.random((8, 8)) + rng.normal(0, 0.05, (30, 8, 8))
    nn = private_nn(private)
    copy = shifted(private[3:4], 2)[0]  # shifted by (-2, -2): still the same image
    assert nearest_ratio(copy, private, nn)[0] > 1.0
    assert aligned_nearest_ratio(copy, private, radius=2)[0] < 0.5
    assert aligned_nearest_ratio(private[:2], private, radius=2).tolist() == [0.0, 0.0]  # exact copies
    far = rng.random((1, 12, 12), dtype=np.float32)
    assert aligned_nearest_ratio(far, private, radius=2)[0] > 1.0
