"""Membership inference against a teacher, mounted by a peer from what the teacher sent it.

The attacker received `received` examples (with labels) from a teacher, may query the teacher's
model, and holds candidates: `members` (in the teacher's private set) and `non_members` (same
classes, not in it). Each attack scores every candidate, higher = more likely a member; `roc`
turns the two score sets into an `AttackResult` (AUC, TPR at 1% and 0.1% FPR).

Attacks:
- `distance_attack`: minus the L2 distance to the closest received example (of the candidate's
  label when labels are given). Sent examples that are near-copies of private ones betray them.
- `aligned_distance_attack` (images): the same distance, minimised over small whole-pixel shifts
  of the candidate, so that shifted copies of private images (what augmentation sends) betray
  them as plain copies do.
- `calibrated_attack`: the same distance, calibrated per candidate against shadow "received"
  sets the attacker builds from its own reference data (offline LiRA). Plain distance confuses
  "z sits in a dense part of its class" with "z was sent": calibration asks how much closer the
  received set is to z than a comparable set that did *not* contain z would be.
- `confidence_attack` (with the teacher's model and labels): LiRA's logit-scaled confidence on
  the true class, standardised against reference examples of the same class.
- "combined" in `run_attacks`: calibrated distance score + calibrated confidence score.

`AttackResult.to_dict()` keys: auc, tpr_at_1pct_fpr, tpr_at_01pct_fpr, n_members, n_non_members.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple, Protocol, overload

import numpy as np
import torch

from peer.privacy.measures import nearest, shifted

Array = np.ndarray | torch.Tensor
ShadowFn = Callable[[np.ndarray, np.ndarray | None], np.ndarray | tuple[np.ndarray, np.ndarray]]
_TINY = 1e-12  # distances are floored here before taking logs (an exact copy scores very high, not inf)


class _HasProba(Protocol):
    def predict_proba(self, x: np.ndarray) -> np.ndarray: ...


Model = Callable[[np.ndarray], np.ndarray] | torch.nn.Module | _HasProba


# --- evaluation -------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttackResult:
    """How well an attack's scores separate members from non-members."""

    auc: float
    tpr_at_1pct_fpr: float
    tpr_at_01pct_fpr: float
    n_members: int
    n_non_members: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _scores(values: Array, name: str) -> np.ndarray:
    out = _numpy(values).astype(np.float64).reshape(-1)
    if len(out) == 0:
        raise ValueError(f"{name} is empty")
    if np.isnan(out).any():
        raise ValueError(f"{name} contains NaN")
    return out


def _ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing the average of their ranks."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(values)]
    avg = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def tpr_at_fpr(scores_members: np.ndarray, scores_non_members: np.ndarray, fpr: float) -> float:
    """Share of members scoring above the lowest threshold that flags at most `fpr` of non-members.

    A candidate is flagged when its score is strictly above the threshold; the threshold is the
    (k+1)-th highest non-member score with k = floor(fpr * n_non_members), so at most k
    non-members (fewer on ties) are flagged.
    """
    neg = np.sort(scores_non_members)[::-1]
    k = int(np.floor(fpr * len(neg) + 1e-9))
    threshold = -np.inf if k >= len(neg) else neg[k]
    return float(np.mean(scores_members > threshold))


def roc(scores_members: Array, scores_non_members: Array) -> AttackResult:
    """AUC (Mann-Whitney, ties count half) and TPR at 1% and 0.1% FPR; higher score = member."""
    pos, neg = _scores(scores_members, "scores_members"), _scores(scores_non_members, "scores_non_members")
    ranks = _ranks(np.concatenate([pos, neg]))
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2.0
    return AttackResult(
        auc=float(u / (len(pos) * len(neg))),
        tpr_at_1pct_fpr=tpr_at_fpr(pos, neg, 0.01),
        tpr_at_01pct_fpr=tpr_at_fpr(pos, neg, 0.001),
        n_members=len(pos),
        n_non_members=len(neg),
    )


def best(results: dict[str, AttackResult]) -> tuple[str, AttackResult]:
    """The (name, result) with the highest AUC; ties go to the higher TPR at 1% FPR."""
    if not results:
        raise ValueError("results is empty")
    name = max(results, key=lambda n: (results[n].auc, results[n].tpr_at_1pct_fpr))
    return name, results[name]


# --- inputs -----------------------------------------------------------------------------------


def _numpy(x: Array) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _inputs(x: Array, name: str, allow_empty: bool = False) -> np.ndarray:
    arr = _numpy(x)
    if arr.ndim < 2:
        raise ValueError(f"{name} must be examples (N, ...), got shape {arr.shape}")
    if len(arr) == 0 and not allow_empty:
        raise ValueError(f"{name} is empty")
    return arr


@overload
def _labels(y: Array, n: int, name: str) -> np.ndarray: ...
@overload
def _labels(y: Array | None, n: int, name: str) -> np.ndarray | None: ...
def _labels(y: Array | None, n: int, name: str) -> np.ndarray | None:
    if y is None:
        return None
    arr = _numpy(y).reshape(-1)
    if len(arr) != n:
        raise ValueError(f"{name} has {len(arr)} labels for {n} examples")
    return arr


def _same_width(a: np.ndarray, b: np.ndarray, a_name: str, b_name: str) -> None:
    width_a, width_b = int(np.prod(a.shape[1:])), int(np.prod(b.shape[1:]))
    if width_a != width_b:
        raise ValueError(f"{a_name} has {width_a} values per example but {b_name} has {width_b}")


def _all_or_none(**labels: np.ndarray | None) -> bool:
    given = [k for k, v in labels.items() if v is not None]
    if given and len(given) != len(labels):
        missing = [k for k in labels if k not in given]
        raise ValueError(f"labels must be given for all or none; missing {', '.join(missing)}")
    return bool(given)


# --- distance attacks -------------------------------------------------------------------------


def min_distance(
    candidates: np.ndarray, pool: np.ndarray, candidates_y: np.ndarray | None = None, pool_y: np.ndarray | None = None
) -> np.ndarray:
    """L2 distance from each candidate to its closest pool example (same label when labels given; inf if none)."""
    if candidates_y is None or pool_y is None:
        return nearest(candidates, pool)[0] if len(pool) else np.full(len(candidates), np.inf)
    out = np.full(len(candidates), np.inf)
    for label in np.unique(candidates_y):
        rows, same = candidates_y == label, pool_y == label
        if same.any():
            out[rows] = nearest(candidates[rows], pool[same])[0]
    return out


def distance_attack(
    received: Array,
    members: Array,
    non_members: Array,
    received_y: Array | None = None,
    members_y: Array | None = None,
    non_members_y: Array | None = None,
) -> AttackResult:
    """Score = minus the L2 distance to the closest received example (of the same label when labels given)."""
    rec, mem, non = _inputs(received, "received"), _inputs(members, "members"), _inputs(non_members, "non_members")
    _same_width(rec, mem, "received", "members")
    _same_width(rec, non, "received", "non_members")
    ry, my, ny = (
        _labels(received_y, len(rec), "received_y"),
        _labels(members_y, len(mem), "members_y"),
        _labels(non_members_y, len(non), "non_members_y"),
    )
    _all_or_none(received_y=ry, members_y=my, non_members_y=ny)
    return roc(-min_distance(mem, rec, my, ry), -min_distance(non, rec, ny, ry))


def aligned_min_distance(
    candidates: np.ndarray,
    pool: np.ndarray,
    image_shape: tuple[int, ...],
    radius: int = 2,
    candidates_y: np.ndarray | None = None,
    pool_y: np.ndarray | None = None,
) -> np.ndarray:
    """`min_distance` minimised over the whole-pixel shifts of each candidate image within `radius`."""
    moved = shifted(candidates.reshape(len(candidates), *image_shape), radius)
    flat = moved.reshape(len(moved) * len(candidates), -1)
    labels = None if candidates_y is None else np.tile(candidates_y, len(moved))
    return min_distance(flat, pool, labels, pool_y).reshape(len(moved), len(candidates)).min(axis=0)


def aligned_distance_attack(
    received: Array,
    members: Array,
    non_members: Array,
    image_shape: tuple[int, ...],
    received_y: Array | None = None,
    members_y: Array | None = None,
    non_members_y: Array | None = None,
    radius: int = 2,
) -> AttackResult:
    """Score = minus the L2 distance from any whole-pixel shift (within `radius`) of the candidate
    image to the closest received example (of the same label when labels given)."""
    rec, mem, non = _inputs(received, "received"), _inputs(members, "members"), _inputs(non_members, "non_members")
    _same_width(rec, mem, "received", "members")
    _same_width(rec, non, "received", "non_members")
    if int(np.prod(image_shape)) != rec.shape[1]:
        raise ValueError(f"image_shape {tuple(image_shape)} does not hold {rec.shape[1]} inputs")
    ry, my, ny = (
        _labels(received_y, len(rec), "received_y"),
        _labels(members_y, len(mem), "members_y"),
        _labels(non_members_y, len(non), "non_members_y"),
    )
    _all_or_none(received_y=ry, members_y=my, non_members_y=ny)
    return roc(
        -aligned_min_distance(mem, rec, image_shape, radius, my, ry),
        -aligned_min_distance(non, rec, image_shape, radius, ny, ry),
    )


def unmix_violation(candidates: np.ndarray, pool: np.ndarray, k: int, chunk: int = 32) -> np.ndarray:
    """Per candidate c, min over pool examples x of how far k x - c falls outside [0, k - 1] (L1):
    were x the mean of c and k - 1 other inputs in [0, 1], k x - c would be their sum, inside."""
    if len(pool) == 0:
        return np.full(len(candidates), np.inf)
    pool_t = torch.from_numpy(np.ascontiguousarray(pool, dtype=np.float32))
    out = []
    for i in range(0, len(candidates), chunk):
        c = torch.from_numpy(np.ascontiguousarray(candidates[i : i + chunk], dtype=np.float32))
        rest = k * pool_t[None] - c[:, None]  # (chunk, pool, inputs): the other k - 1, summed
        off = torch.relu(-rest).sum(-1) + torch.relu(rest - (k - 1)).sum(-1)
        out.append(off.min(dim=1).values)
    return torch.cat(out).numpy().astype(np.float64)


def unmix_attack(received: Array, members: Array, non_members: Array, k: int) -> AttackResult:
    """Against a release whose search starts at the mean of k private inputs: score = minus
    `unmix_violation`, small when the candidate is one of a received example's sources (the
    receiver is assumed to know k, as results.json records it)."""
    if k < 2:
        raise ValueError(f"unmixing needs k >= 2, got {k}")
    rec, mem, non = _inputs(received, "received"), _inputs(members, "members"), _inputs(non_members, "non_members")
    _same_width(rec, mem, "received", "members")
    _same_width(rec, non, "received", "non_members")
    return roc(-unmix_violation(mem, rec, k), -unmix_violation(non, rec, k))


def _shadow_subset(
    reference: np.ndarray,
    reference_y: np.ndarray | None,
    received_y: np.ndarray | None,
    size: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Reference examples drawn without replacement like the received set: per label, as many as
    were received of it (all the reference has when it has fewer)."""
    if reference_y is None or received_y is None:
        idx = rng.choice(len(reference), size=min(size, len(reference)), replace=False)
        return reference[idx], None
    picks = []
    for label, count in zip(*np.unique(received_y, return_counts=True)):
        pool = np.flatnonzero(reference_y == label)
        picks.append(rng.choice(pool, size=min(count, len(pool)), replace=False))
    idx = np.concatenate(picks) if picks else np.empty(0, np.int64)
    return reference[idx], reference_y[idx]


def _apply_shadow(
    shadow_fn: ShadowFn | None, x: np.ndarray, y: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None]:
    if shadow_fn is None:
        return x, y
    out = shadow_fn(x, y)
    if isinstance(out, tuple):
        sx, sy = _numpy(out[0]), out[1]
        return sx, None if sy is None else _numpy(sy).reshape(-1)
    sx = _numpy(out)
    if y is not None and len(sx) != len(y):
        raise ValueError(f"shadow_fn returned {len(sx)} examples for {len(y)}; return (x, y) when it drops some")
    return sx, y


def _calibrate(log_d: np.ndarray, log_shadow: np.ndarray, prior_weight: float = 4.0) -> np.ndarray:
    """(mean_s log d_s - log d) / sigma per candidate; sigma is each candidate's std over shadows
    shrunk toward the pooled std (a few shadows give noisy per-candidate spreads)."""
    finite = np.isfinite(log_shadow)
    counts = finite.sum(axis=1)
    filled = np.where(finite, log_shadow, 0.0)
    mu = np.divide(filled.sum(axis=1), counts, out=np.full(len(log_d), np.nan), where=counts > 0)
    sq = np.where(finite, (log_shadow - mu[:, None]) ** 2, 0.0).sum(axis=1)
    dof = np.maximum(counts - 1, 0)
    pooled = np.sqrt(sq.sum() / dof.sum()) if dof.sum() > 0 else 0.0
    pooled = pooled if pooled > 0 else 1.0
    sigma = np.sqrt((sq + prior_weight * pooled**2) / (dof + prior_weight))
    score = (mu - log_d) / sigma
    # no finite shadow distance (no reference of that label reached): fall back to the raw distance
    return np.where(np.isnan(mu), -log_d / pooled, score)


def calibrated_scores(
    received: np.ndarray,
    candidates: np.ndarray,
    reference: np.ndarray,
    received_y: np.ndarray | None = None,
    candidates_y: np.ndarray | None = None,
    reference_y: np.ndarray | None = None,
    shadow_fn: ShadowFn | None = None,
    n_shadow: int = 4,
    rng: np.random.Generator | int | None = None,
) -> np.ndarray:
    """Per candidate z: (mu(z) - log d(z)) / sigma(z), d(z) its distance to the closest received
    example and mu, sigma the mean and spread of log d_s(z) over `n_shadow` shadow received sets.

    Each shadow set is drawn from `reference` (the attacker's own data, disjoint from the
    candidates) with the received set's per-label counts and passed through `shadow_fn` (the
    teacher's transform, e.g. its counterfactual step; identity when None, i.e. a teacher sending
    near-copies). A shadow set never contains z, so d_s(z) is what d(z) looks like when z is not a
    member, at z's own place in the data: dense regions give small d_s, sparse ones large. Logs
    make the score scale-free, so a member in a sparse region (received copy at 0.3 but shadows
    at 3) ranks above a non-member in a dense one (received neighbour at 0.3, shadows at 0.3),
    which the plain distance cannot tell apart.
    """
    if n_shadow < 1:
        raise ValueError(f"n_shadow must be >= 1, got {n_shadow}")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    log_d = np.log(np.maximum(min_distance(candidates, received, candidates_y, received_y), _TINY))
    log_shadow = np.empty((len(candidates), n_shadow))
    for s in range(n_shadow):
        sx, sy = _shadow_subset(reference, reference_y, received_y, len(received), gen)
        sx, sy = _apply_shadow(shadow_fn, sx, sy)
        dist = min_distance(candidates, sx, candidates_y, sy if candidates_y is not None else None)
        log_shadow[:, s] = np.log(np.maximum(dist, _TINY))
    return _calibrate(log_d, log_shadow)


def calibrated_attack(
    received: Array,
    members: Array,
    non_members: Array,
    reference: Array,
    received_y: Array | None = None,
    members_y: Array | None = None,
    non_members_y: Array | None = None,
    reference_y: Array | None = None,
    shadow_fn: ShadowFn | None = None,
    n_shadow: int = 4,
    rng: np.random.Generator | int | None = None,
) -> AttackResult:
    """The distance attack calibrated per candidate with shadow sets from `reference` (see
    `calibrated_scores`). `reference` must share the candidates' classes and be disjoint from
    both candidate groups; labels are given for all four sets or for none."""
    rec, mem, non = _inputs(received, "received"), _inputs(members, "members"), _inputs(non_members, "non_members")
    ref = _inputs(reference, "reference")
    for arr, name in ((mem, "members"), (non, "non_members"), (ref, "reference")):
        _same_width(rec, arr, "received", name)
    ry, my = _labels(received_y, len(rec), "received_y"), _labels(members_y, len(mem), "members_y")
    ny, fy = _labels(non_members_y, len(non), "non_members_y"), _labels(reference_y, len(ref), "reference_y")
    if _all_or_none(received_y=ry, members_y=my, non_members_y=ny, reference_y=fy) and fy is not None:
        _check_classes(fy, np.concatenate([my, ny]))
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    scores = calibrated_scores(
        rec,
        np.concatenate([mem, non]),
        ref,
        ry,
        None if my is None else np.concatenate([my, ny]),
        fy,
        shadow_fn,
        n_shadow,
        gen,
    )
    return roc(scores[: len(mem)], scores[len(mem) :])


def _check_classes(reference_y: np.ndarray, candidates_y: np.ndarray) -> None:
    missing = np.setdiff1d(np.unique(candidates_y), np.unique(reference_y))
    if len(missing):
        raise ValueError(f"reference_y lacks candidate class(es) {missing.tolist()}; calibration needs each class")


# --- model confidence -------------------------------------------------------------------------


def predict_proba(model: Model, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """(N, C) class probabilities from a callable, an object with predict_proba, or a torch module
    (its outputs are taken as logits; it runs in eval mode and is put back as it was)."""
    if isinstance(model, torch.nn.Module):
        return _module_proba(model, x, batch_size)
    fn = model.predict_proba if hasattr(model, "predict_proba") else model
    proba = _numpy(fn(x)).astype(np.float64)
    if proba.ndim != 2 or len(proba) != len(x):
        raise ValueError(f"model must return (N, C) probabilities, got shape {proba.shape} for {len(x)} inputs")
    return proba


def _module_proba(module: torch.nn.Module, x: np.ndarray, batch_size: int) -> np.ndarray:
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            device = next(module.parameters(), torch.empty(0)).device
            out = [
                torch.softmax(module(torch.as_tensor(x[i : i + batch_size], dtype=torch.float32, device=device)), 1)
                for i in range(0, len(x), batch_size)
            ]
        return torch.cat(out).double().cpu().numpy()
    finally:
        module.train(was_training)


def logit_confidence(proba: np.ndarray, y: np.ndarray) -> np.ndarray:
    """LiRA's phi = log p_y - log(1 - p_y), clipped so that a certain prediction stays finite."""
    p = np.clip(proba[np.arange(len(y)), y.astype(np.int64)], 1e-12, 1 - 1e-12)
    return np.log(p) - np.log1p(-p)


def confidence_scores(
    model: Model, candidates: np.ndarray, candidates_y: np.ndarray, reference: np.ndarray, reference_y: np.ndarray
) -> np.ndarray:
    """Per candidate (phi(z) - mu_c) / sigma_c: its logit-scaled confidence on its true class c,
    standardised by phi over the attacker's reference examples of class c (non-members of the
    teacher). A model fits its training data more confidently than unseen data of the class."""
    phi = logit_confidence(predict_proba(model, candidates), candidates_y)
    phi_ref = logit_confidence(predict_proba(model, reference), reference_y)
    out = np.empty(len(candidates))
    for label in np.unique(candidates_y):
        rows, ref = phi[candidates_y == label], phi_ref[reference_y == label]
        sigma = ref.std() if len(ref) > 1 and ref.std() > 0 else 1.0
        out[candidates_y == label] = (rows - ref.mean()) / sigma
    return out


def confidence_attack(
    model: Model,
    members: Array,
    members_y: Array,
    non_members: Array,
    non_members_y: Array,
    reference: Array,
    reference_y: Array,
) -> AttackResult:
    """Membership from the teacher model's calibrated confidence (see `confidence_scores`)."""
    mem, non, ref = _inputs(members, "members"), _inputs(non_members, "non_members"), _inputs(reference, "reference")
    my, ny = _labels(members_y, len(mem), "members_y"), _labels(non_members_y, len(non), "non_members_y")
    fy = _labels(reference_y, len(ref), "reference_y")
    _check_classes(fy, np.concatenate([my, ny]))
    scores = confidence_scores(model, np.concatenate([mem, non]), np.concatenate([my, ny]), ref, fy)
    return roc(scores[: len(mem)], scores[len(mem) :])


# --- all together -----------------------------------------------------------------------------


def run_attacks(
    received: Array,
    received_y: Array | None,
    members: Array,
    members_y: Array | None,
    non_members: Array,
    non_members_y: Array | None,
    reference: Array,
    reference_y: Array | None,
    model: Model | None = None,
    shadow_fn: ShadowFn | None = None,
    n_shadow: int = 4,
    rng: np.random.Generator | int | None = 0,
    image_shape: tuple[int, ...] | None = None,
    mix_k: int | None = None,
) -> dict[str, AttackResult]:
    """Every attack the inputs allow, by name: "distance", "calibrated", with `image_shape`
    "aligned" (distance over shifts), with `mix_k` (the release mixed k inputs) "unmix", and with a
    model and labels "confidence" and "combined" (calibrated distance score + calibrated
    confidence score)."""
    rec, mem, non = _inputs(received, "received"), _inputs(members, "members"), _inputs(non_members, "non_members")
    ref = _inputs(reference, "reference")
    ry, my = _labels(received_y, len(rec), "received_y"), _labels(members_y, len(mem), "members_y")
    ny, fy = _labels(non_members_y, len(non), "non_members_y"), _labels(reference_y, len(ref), "reference_y")
    labelled = _all_or_none(received_y=ry, members_y=my, non_members_y=ny, reference_y=fy)
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    results = {"distance": distance_attack(rec, mem, non, ry, my, ny)}
    if image_shape is not None:
        results["aligned"] = aligned_distance_attack(rec, mem, non, image_shape, ry, my, ny)
    if mix_k is not None and mix_k >= 2:
        results["unmix"] = unmix_attack(rec, mem, non, mix_k)
    cand = np.concatenate([mem, non])
    cand_y = np.concatenate([my, ny]) if labelled else None
    if fy is not None and cand_y is not None:  # labelled
        _check_classes(fy, cand_y)
    dist_scores = calibrated_scores(rec, cand, ref, ry, cand_y, fy, shadow_fn, n_shadow, gen)
    results["calibrated"] = roc(dist_scores[: len(mem)], dist_scores[len(mem) :])
    if model is not None and fy is not None and cand_y is not None:  # labelled
        conf = confidence_scores(model, cand, cand_y, ref, fy)
        results["confidence"] = roc(conf[: len(mem)], conf[len(mem) :])
        both = dist_scores + conf
        results["combined"] = roc(both[: len(mem)], both[len(mem) :])
    return results


# --- reconstruction view ----------------------------------------------------------------------


class ReconstructionPair(NamedTuple):
    received: np.ndarray
    private: np.ndarray
    distance: float


def reconstruction_pairs(
    received: Array, private: Array, k: int = 8, distinct: bool = True
) -> list[ReconstructionPair]:
    """The k received examples closest to a private example, each with that private example and
    the L2 distance, closest first: what a receiver could reconstruct of the private set.
    `distinct` keeps only the closest received example per private example (no repeats)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    rec, priv = _inputs(received, "received"), _inputs(private, "private")
    _same_width(rec, priv, "received", "private")
    dist, index = nearest(rec, priv)
    order = np.argsort(dist, kind="stable")
    if distinct:
        order = order[np.sort(np.unique(index[order], return_index=True)[1])]
    return [ReconstructionPair(rec[i], priv[index[i]], float(dist[i])) for i in order[:k]]


def _displayable(x: np.ndarray) -> np.ndarray:
    """An image for imshow: (H, W), (1, H, W), (C, H, W) -> (H, W, C), a flat square vector -> (s, s)."""
    if x.ndim == 3:
        return x[0] if x.shape[0] == 1 else np.moveaxis(x, 0, -1)
    if x.ndim == 1:
        side = int(round(np.sqrt(x.size)))
        return x.reshape(side, side) if side * side == x.size else x.reshape(1, -1)
    return x


def save_reconstruction_grid(pairs: list[ReconstructionPair], path: str | Path, title: str = "") -> Path:
    """A PNG: received examples on the top row, their nearest private examples below, distances above."""
    if not pairs:
        raise ValueError("pairs is empty")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(pairs), figsize=(1.6 * len(pairs), 3.6), squeeze=False)
    for col, (rec, priv, dist) in enumerate(pairs):
        for row, img in enumerate((rec, priv)):
            ax = axes[row][col]
            ax.imshow(np.clip(_displayable(np.asarray(img, np.float32)), 0, 1), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0][col].set_title(f"d={dist:.3f}", fontsize=8)
    axes[0][0].set_ylabel("received", fontsize=8)
    axes[1][0].set_ylabel("nearest private", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
