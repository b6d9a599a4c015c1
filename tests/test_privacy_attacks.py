"""Membership-inference attacks from received examples: ROC metrics, distance and calibrated attacks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from peer.privacy import (
    AttackResult,
    aligned_distance_attack,
    best,
    calibrated_attack,
    confidence_attack,
    distance_attack,
    predict_proba,
    reconstruction_pairs,
    roc,
    run_attacks,
    save_reconstruction_grid,
    shifted,
)

torch.set_num_threads(1)

RESULT_KEYS = {"auc", "tpr_at_1pct_fpr", "tpr_at_01pct_fpr", "n_members", "n_non_members"}


# --- roc --------------------------------------------------------------------------------------


def test_roc_perfectly_separated_and_reversed():
    result = roc(np.arange(100, 200), np.arange(100))
    assert (result.auc, result.tpr_at_1pct_fpr, result.tpr_at_01pct_fpr) == (1.0, 1.0, 1.0)
    assert (result.n_members, result.n_non_members) == (100, 100)
    assert set(result.to_dict()) == RESULT_KEYS
    reversed_ = roc(np.arange(100), np.arange(100, 200))
    assert (reversed_.auc, reversed_.tpr_at_1pct_fpr) == (0.0, 0.0)


def test_roc_ties_count_half_and_match_pairwise_count():
    result = roc([3.0, 2.0], [2.0, 1.0])  # pairs: 3>2, 3>1, 2=2 (half), 2>1
    assert result.auc == pytest.approx(3.5 / 4)
    assert roc([1.0] * 5, [1.0] * 7).auc == 0.5
    assert roc([1.0] * 5, [1.0] * 7).tpr_at_1pct_fpr == 0.0  # nothing is strictly above the threshold
    rng = np.random.default_rng(0)
    pos, neg = rng.integers(0, 20, 300), rng.integers(0, 15, 400)
    pairwise = ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean()
    assert roc(pos, neg).auc == pytest.approx(pairwise, abs=1e-12)


def test_tpr_threshold_keeps_fpr_at_or_below_target():
    neg = np.arange(100.0)  # 0..99
    result = roc([98.5, 97.5, 99.5, 50.0], neg)
    # 1% of 100 non-members: one may be flagged, so the threshold is 98 (only 99 is above it)
    assert result.tpr_at_1pct_fpr == 0.5
    # 0.1% of 100: none may be flagged, so only scores above 99 count
    assert result.tpr_at_01pct_fpr == 0.25
    ties = roc([5.0, 6.0], [5.0] * 50 + [0.0] * 50)  # flagging any 5 would flag 50% of non-members
    assert ties.tpr_at_1pct_fpr == 0.5


def test_roc_identical_distributions_is_chance():
    rng = np.random.default_rng(1)
    result = roc(rng.normal(size=5000), rng.normal(size=5000))
    assert abs(result.auc - 0.5) < 0.05
    assert result.tpr_at_1pct_fpr < 0.03


def test_roc_rejects_empty_and_nan():
    with pytest.raises(ValueError, match="scores_members"):
        roc([], [1.0])
    with pytest.raises(ValueError, match="scores_non_members"):
        roc([1.0], [np.nan])


def test_best_picks_auc_then_tpr():
    a, b, c = AttackResult(0.7, 0.1, 0.0, 1, 1), AttackResult(0.8, 0.1, 0.0, 1, 1), AttackResult(0.8, 0.3, 0.0, 1, 1)
    assert best({"a": a, "b": b, "c": c}) == ("c", c)
    with pytest.raises(ValueError):
        best({})


# --- distance attack --------------------------------------------------------------------------


def blobs(rng: np.random.Generator, n: int, dim: int = 8) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, 3, n)
    return (rng.normal(size=(n, dim)) + 3.0 * y[:, None]).astype(np.float32), y


def test_distance_attack_on_copies_of_members_is_near_perfect():
    rng = np.random.default_rng(2)
    (members, my), (non, ny) = blobs(rng, 500), blobs(rng, 500)
    received = members + rng.normal(0, 0.01, members.shape).astype(np.float32)
    for result in (distance_attack(received, members, non), distance_attack(received, members, non, my, my, ny)):
        assert result.auc > 0.99
        assert result.tpr_at_1pct_fpr > 0.95


def test_distance_attack_on_unrelated_received_is_chance():
    rng = np.random.default_rng(3)
    (members, my), (non, ny), (received, ry) = blobs(rng, 2000), blobs(rng, 2000), blobs(rng, 2000)
    assert abs(distance_attack(received, members, non).auc - 0.5) < 0.05
    assert abs(distance_attack(received, members, non, ry, my, ny).auc - 0.5) < 0.05
    reference, fy = blobs(rng, 3000)
    calibrated = calibrated_attack(received, members, non, reference, ry, my, ny, fy, rng=0)
    assert abs(calibrated.auc - 0.5) < 0.05


def test_distance_attack_rejects_bad_inputs():
    x = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match="members"):
        distance_attack(x, x[:0], x)
    with pytest.raises(ValueError, match="non_members"):
        distance_attack(x, x, np.zeros((4, 5)))
    with pytest.raises(ValueError, match="non_members_y"):
        distance_attack(x, x, x, np.zeros(4), np.zeros(4))
    with pytest.raises(ValueError, match="members_y"):
        distance_attack(x, x, x, np.zeros(4), np.zeros(3), np.zeros(4))


# --- calibrated attack ------------------------------------------------------------------------


def varying_density(rng: np.random.Generator, per_cluster: int, dim: int = 10):
    """Two classes, each three far-apart clusters of spread 0.1, 1 and 10."""
    xs, ys, scales = [], [], []
    for label in range(2):
        for j, scale in enumerate((0.1, 1.0, 10.0)):
            center = np.zeros(dim)
            center[0], center[1] = 1000.0 * (3 * label + j), 1000.0 * label
            xs.append(center + scale * rng.normal(size=(per_cluster, dim)))
            ys.append(np.full(per_cluster, label))
            scales.append(np.full(per_cluster, scale))
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys), np.concatenate(scales)


def test_calibration_beats_plain_distance_when_density_varies():
    """A teacher sends each member moved by 0.3 x its cluster's spread. A member of the spread-10
    cluster is received at distance ~10 while a non-member of the spread-0.1 cluster has a received
    neighbour at ~0.3: no distance threshold separates them (plain AUC ~2/3), but against shadow
    sets drawn from the attacker's reference data each member is ~3x closer than usual and each
    non-member about as close as usual."""
    rng = np.random.default_rng(4)
    members, my, spread = varying_density(rng, 40)
    non, ny, _ = varying_density(rng, 40)
    reference, fy, _ = varying_density(rng, 200)
    received = members + (0.3 * spread[:, None] * rng.normal(size=members.shape)).astype(np.float32)
    plain = distance_attack(received, members, non, my, my, ny)
    calibrated = calibrated_attack(received, members, non, reference, my, my, ny, fy, rng=0)
    assert plain.auc < 0.75
    assert calibrated.auc > 0.95
    assert calibrated.tpr_at_1pct_fpr > plain.tpr_at_1pct_fpr + 0.3
    # without labels calibration still adapts to each candidate's neighbourhood
    assert calibrated_attack(received, members, non, reference, rng=0).auc > 0.95


def test_calibrated_attack_uses_shadow_fn_and_checks_inputs():
    rng = np.random.default_rng(5)
    members, my, spread = varying_density(rng, 20)
    non, ny, _ = varying_density(rng, 20)
    reference, fy, _ = varying_density(rng, 60)
    received = members + (0.3 * spread[:, None] * rng.normal(size=members.shape)).astype(np.float32)
    calls = []

    def shadow(x: np.ndarray, y: np.ndarray | None) -> np.ndarray:
        calls.append(len(x))
        return x + 0.01

    result = calibrated_attack(received, members, non, reference, my, my, ny, fy, shadow_fn=shadow, n_shadow=3)
    assert len(calls) == 3 and all(n == len(received) for n in calls)
    assert result.auc > 0.9
    with pytest.raises(ValueError, match="reference_y"):
        calibrated_attack(received, members, non, reference[fy == 0], my, my, ny, fy[fy == 0])
    with pytest.raises(ValueError, match="reference_y"):
        calibrated_attack(received, members, non, reference, my, my, ny)
    with pytest.raises(ValueError, match="n_shadow"):
        calibrated_attack(received, members, non, reference, n_shadow=0)


# --- model confidence, run_attacks ------------------------------------------------------------


class Memoriser:
    """A two-class model that is sure of the examples it trained on and hesitant elsewhere."""

    def __init__(self, train: np.ndarray) -> None:
        self.train = train

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        seen = np.array([np.min(np.abs(self.train - row).sum(1)) < 1e-6 for row in x])
        first = np.where(x[:, 0] < 1500, np.where(seen, 0.99, 0.7), np.where(seen, 0.01, 0.3))
        return np.stack([first, 1 - first], 1)


def test_run_attacks_with_a_memorising_model():
    rng = np.random.default_rng(6)
    members, my, spread = varying_density(rng, 20)
    non, ny, _ = varying_density(rng, 20)
    reference, fy, _ = varying_density(rng, 60)
    my, ny, fy = (np.where(v < 1500, 0, 1) for v in (members[:, 0], non[:, 0], reference[:, 0]))
    received = members + (0.3 * spread[:, None] * rng.normal(size=members.shape)).astype(np.float32)
    model = Memoriser(members)
    results = run_attacks(received, my, members, my, non, ny, reference, fy, model=model)
    assert set(results) == {"distance", "calibrated", "confidence", "combined"}
    assert results["confidence"].auc == 1.0
    assert confidence_attack(model, members, my, non, ny, reference, fy).auc == 1.0
    assert best(results)[1].auc == 1.0
    assert set(run_attacks(received, None, members, None, non, None, reference, None)) == {"distance", "calibrated"}


def test_predict_proba_from_a_module_keeps_its_mode():
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    module.train()
    proba = predict_proba(module, np.zeros((5, 3, 4), np.float32))
    assert proba.shape == (5, 3) and module.training
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="probabilities"):
        predict_proba(lambda x: np.zeros(len(x)), np.zeros((5, 2)))


# --- reconstruction view ----------------------------------------------------------------------


def test_reconstruction_pairs_closest_first_and_grid(tmp_path):
    rng = np.random.default_rng(7)
    private = rng.random((20, 1, 6, 6)).astype(np.float32)
    received = np.concatenate([rng.random((10, 1, 6, 6)).astype(np.float32), private[[3]] + 0.01, private[[8]]])
    pairs = reconstruction_pairs(received, private, k=3)
    assert len(pairs) == 3
    assert pairs[0].distance == 0.0
    np.testing.assert_array_equal(pairs[0].private, private[8])
    np.testing.assert_array_equal(pairs[1].private, private[3])
    assert pairs[1].distance == pytest.approx(0.06, rel=1e-4)
    assert pairs[0].distance <= pairs[1].distance <= pairs[2].distance
    path = save_reconstruction_grid(pairs, tmp_path / "grid.png", "received vs private")
    assert path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="k"):
        reconstruction_pairs(received, private, k=0)
    twice = np.concatenate([received, private[[8]] + 0.001])
    assert [p.distance for p in reconstruction_pairs(twice, private, k=2)] == [0.0, pairs[1].distance]
    assert reconstruction_pairs(twice, private, k=2, distinct=False)[1].distance == pytest.approx(0.006, rel=1e-3)


def test_aligned_attack_sees_shifted_copies_that_plain_distance_misses():
    rng = np.random.default_rng(5)
    images = rng.random((400, 10, 10), dtype=np.float32) ** 4  # sparse bright pixels: shifts move far
    members, non = images[:200], images[200:]
    received = shifted(members, 2)[0]  # every member sent, shifted by (-2, -2)
    flat = lambda a: a.reshape(len(a), -1)  # noqa: E731
    plain = distance_attack(flat(received), flat(members), flat(non))
    aligned = aligned_distance_attack(flat(received), flat(members), flat(non), (10, 10))
    assert aligned.auc > 0.99 and aligned.tpr_at_1pct_fpr > 0.95
    assert plain.auc < aligned.auc and plain.tpr_at_1pct_fpr < 0.5
    unrelated = rng.random((200, 10, 10), dtype=np.float32) ** 4
    assert abs(aligned_distance_attack(flat(unrelated), flat(members), flat(non), (10, 10)).auc - 0.5) < 0.1
    assert "aligned" in run_attacks(
        flat(received), None, flat(members), None, flat(non), None, flat(non), None, image_shape=(10, 10)
    )
    with pytest.raises(ValueError):
        aligned_distance_attack(flat(received), flat(members), flat(non), (9, 10))


def test_unmix_attack_finds_the_sources_of_mixes_and_not_unrelated_examples():
    from peer.privacy.attacks import unmix_attack

    rng = np.random.default_rng(0)

    def images(n):  # textured images: any two differ in most pixels
        return rng.random((n, 256), dtype=np.float32)

    members, non_members, others = images(200), images(200), images(200)
    # the first 100 members are each mixed with another image (as a mix of 2 starts), then quantised to
    # the uint8 levels that go on the wire
    mixes = np.round((members[:100] + others[:100]) / 2 * 255) / 255
    found = unmix_attack(np.clip(mixes, 0, 1), members[:100], non_members[:100], k=2)
    assert found.auc > 0.95 and found.tpr_at_1pct_fpr > 0.5
    # examples unrelated to the private set tell nothing
    unrelated = unmix_attack(images(100), members, non_members, k=2)
    assert abs(unrelated.auc - 0.5) < 0.1
    with pytest.raises(ValueError, match="k >= 2"):
        unmix_attack(mixes, members, non_members, k=1)
