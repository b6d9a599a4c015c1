"""What a teacher's counterfactual search starts from, and what it may release.

The paper starts the search at the private instance x itself and moves x' only as far as the
target needs, so what is sent is x barely perturbed. This module holds the knobs that trade
that leakage against what a student learns, as pure functions over arrays in the teacher's
search space (images in [0, 1]; a table's columns scaled to its own [min, max], also [0, 1]):

- start points (`start_points`): where the search starts for each qualified instance
    instance    x itself (the paper)
    mix         the mean of k >= 2 correctly classified instances of x's class: x and k-1 others
                drawn with the teacher's rng (with `cross`, that many of the others from the
                class the student takes x for: a start between the two classes; with `alike`,
                the others of x's class from those the student takes for the same class as x)
    prototype   the class prototype (mean of the class's correctly classified instances) plus a
                small Gaussian jitter so that starts differ
    noise       uniform noise steered by the teacher's model toward x's class (data-free)
- a minimum-distance filter (`min_distance_keep`): drop any candidate closer to some private
  example p than `fraction` x p's own nearest-other-private distance (the "near-copy" test at
  fraction 1); or first move such a candidate out of p's ball, away from p (`push_out`)
- release noise (`release_noise`): Gaussian noise of a recorded scale added to what is sent,
  clipped to [0, 1] and, for images, quantised to the uint8 levels that go on the wire
(distances come from peer.privacy.measures: `nearest`, `nearest_ratio`)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from peer.privacy.measures import RatioIndex, nearest_ratio

START_MODES = ("instance", "mix", "prototype", "noise")
START_POOLS = ("class", "alike")  # where a mix's others of x's class come from (mix_starts, `alike`)
PROTOTYPE_JITTER = 0.03  # std of the Gaussian jitter added to a class prototype start
STEER_STEPS = 10  # gradient steps that steer a noise start toward its class
STEER_STEP = 0.1  # largest change of one input in one steering step


# -- minimum distance -------------------------------------------------------------------------
def min_distance_keep(
    candidates: np.ndarray, private: np.ndarray, private_nn: np.ndarray, fraction: float, chunk: int = 1024
) -> np.ndarray:
    """Boolean mask of the candidates that may be released: none closer to a private example p
    than `fraction` x nn(p). `fraction` 0 keeps everything (and computes nothing)."""
    if fraction <= 0 or len(candidates) == 0:
        return np.ones(len(candidates), dtype=bool)
    return nearest_ratio(candidates, private, private_nn, chunk) >= fraction


PUSH_MARGIN = 1.05  # a pushed candidate lands this much beyond the ball it was in
PUSH_ROUNDS = 8  # balls a candidate is pushed out of, one after another, before it is given up


def push_out(
    candidates: np.ndarray,
    private: np.ndarray,
    private_nn: np.ndarray,
    fraction: float,
    levels: int | None = None,
    margin: float = PUSH_MARGIN,
    rounds: int = PUSH_ROUNDS,
    index: RatioIndex | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The candidates, each moved out of every private example's ball (radius `fraction` x nn(p)):
    a candidate inside p's ball is moved along the ray from p through it to `margin` x the radius,
    clipped to [0, 1] and quantised to `levels`; then checked against every private example again
    (the move may enter another ball), up to `rounds` moves. Candidates outside every ball are
    returned unchanged; one still inside after `rounds` moves (or an exact copy, which has no ray)
    is returned as it came, for the minimum-distance filter to drop.

    Returns them and the nearest_ratio of each as returned (measured on the way: a filter after it
    need not measure them again; NaN where `fraction` <= 0 measured nothing). `index`: `private`
    and `private_nn` prepared once (RatioIndex), for a caller that pushes many times."""
    out = np.array(candidates, dtype=np.float32, copy=True)
    final = np.full(len(out), np.nan)
    if fraction <= 0 or len(out) == 0:
        return out, final
    flat = out.reshape(len(out), -1)
    pflat = np.asarray(private, np.float32).reshape(len(private), -1)
    index = index or RatioIndex(pflat, private_nn)
    todo = np.arange(len(out))
    first: np.ndarray | None = None
    for _ in range(rounds):
        ratio, j = index.ratio_index(flat[todo])
        final[todo] = ratio
        if first is None:
            first = ratio.copy()
        inside = ratio < fraction
        todo, j = todo[inside], j[inside]
        if len(todo) == 0:
            return out, final
        ray = flat[todo] - pflat[j]
        length = np.linalg.norm(ray, axis=1)
        movable = length > 0
        todo, j, ray, length = todo[movable], j[movable], ray[movable], length[movable]
        reach = (margin * fraction * np.asarray(private_nn, np.float64)[j] / length).astype(np.float32)
        moved = np.clip(pflat[j] + ray * reach[:, None], 0.0, 1.0)
        if levels is not None:
            moved = np.round(moved * levels) / levels
        flat[todo] = moved
    if len(todo):
        final[todo] = index.ratio(flat[todo])
        still = todo[final[todo] < fraction]
        flat[still] = np.asarray(candidates, np.float32).reshape(len(out), -1)[still]
        assert first is not None
        final[still] = first[still]  # returned as it came: its ratio as it came
    return out, final


# -- release noise ----------------------------------------------------------------------------
def release_noise(x: np.ndarray, scale: float, rng: np.random.Generator, levels: int | None = 255) -> np.ndarray:
    """x + N(0, scale^2) per input, clipped to [0, 1], quantised to `levels` (None: not quantised).
    Scale 0 returns x unchanged (the same array)."""
    if scale <= 0 or len(x) == 0:
        return x
    noisy = np.clip(x + rng.standard_normal(x.shape).astype(np.float32) * np.float32(scale), 0.0, 1.0)
    if levels is not None:
        noisy = np.round(noisy * levels) / levels
    return noisy.astype(np.float32)


# -- start points -----------------------------------------------------------------------------
@dataclass
class Starts:
    """Where the search starts for each qualified instance, and which private rows made it.

    `x`: (n, *shape) float32 in [0, 1]. `sources[i]`: indices into the private set that start i
    was computed from (instance: [i's instance]; mix: the k instances averaged; prototype: every
    instance of the class's mean; noise: none). `ok`: False where no start could be made (a noise
    start the teacher could not steer to its class); such rows are not searched.
    """

    x: np.ndarray
    sources: list[np.ndarray]
    ok: np.ndarray


def class_pools(y: np.ndarray, correct: np.ndarray, classes: int) -> list[np.ndarray]:
    """Per class, the private indices the teacher classifies right (all of the class if none)."""
    pools = []
    for c in range(classes):
        pool = np.flatnonzero((y == c) & correct)
        pools.append(pool if len(pool) else np.flatnonzero(y == c))
    return pools


def _subsets(n: np.ndarray, m: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per row a uniformly random m[i]-subset of range(n[i]) (Floyd's algorithm, all rows at once):
    (rows, max m) positions, -1 past a row's m."""
    width = int(m.max()) if len(m) else 0
    out = np.full((len(n), width), -1, dtype=np.int64)
    for s in range(width):
        rows = np.flatnonzero(s < m)
        top = n[rows] - m[rows] + s  # draw from range(top + 1); a value already taken gives top
        v = rng.integers(0, top + 1)
        taken = (out[rows, :s] == v[:, None]).any(axis=1)
        out[rows, s] = np.where(taken, top, v)
    return out


def mix_starts(
    x: np.ndarray,
    y: np.ndarray,
    idx: np.ndarray,
    pools: list[np.ndarray],
    k: int,
    rng: np.random.Generator,
    confused: np.ndarray | None = None,
    cross: int = 0,
    alike: bool = False,
) -> Starts:
    """Mean of instance idx[i] and k-1 other instances of its class drawn from `pools` without
    replacement (fewer when the pool is smaller).

    `alike` (with `confused`): the others of x's class are drawn from those of its pool the student
    takes for the same class as x (for x the student gets wrong: instances it errs on the same way),
    so that the mix stays where the student errs instead of at the class's middle; from the whole
    pool where fewer than needed are alike.

    `cross` > 0 (with `confused`, per private row the class the student takes it for): `cross` of
    the k-1 are drawn from the class the student takes idx[i] for instead, so that the mix sits
    between that class and its own, where the student errs; at most (k - 1) // 2 of them, so that
    x's class keeps the majority (none in a mix of 2). Where the student takes it for its own class,
    or that class has too few instances, all come from its own class.

    The draws are made for all instances of one (class, pool) group at once: each instance's
    others are a uniformly random subset of its pool without itself."""
    if k < 2:
        raise ValueError(f"mix needs k >= 2 instances, got {k}")
    if cross < 0 or ((cross or alike) and confused is None):
        raise ValueError(
            f"cross must be >= 0, and cross or alike come with the classes the student takes rows for, got {cross}"
        )
    cross = min(cross, (k - 1) // 2)
    idx = np.asarray(idx, dtype=np.int64)
    own = y[idx].astype(np.int64)
    c = confused[idx].astype(np.int64) if confused is not None and (cross or alike) else own
    n_cross = np.where((c != own) & (np.array([len(p) for p in pools])[c] >= cross), cross, 0)
    sources: list[np.ndarray] = [np.empty(0, np.int64)] * len(idx)  # each filled by its group below
    # one group per (own class, the student's class, cross count): the same pool for all its rows
    keys = np.stack([own, c, n_cross], axis=1)
    groups, inverse = np.unique(keys, axis=0, return_inverse=True)
    for g, (cls, taken_for, nc) in enumerate(groups):
        rows = np.flatnonzero(inverse.ravel() == g)
        j = idx[rows]
        want = k - 1 - int(nc)
        pool = pools[cls]
        use = np.zeros(len(rows), dtype=bool)
        same = pool
        if alike and confused is not None:
            same = pool[confused[pool] == taken_for]
            use = len(same) - np.isin(j, same) >= want
        picks = np.full((len(rows), want), -1, dtype=np.int64)
        for sub, flag in ((same, True), (pool, False)):
            part = np.flatnonzero(use == flag)
            if len(part) == 0:
                continue
            at = np.searchsorted(sub, j[part])
            has = (at < len(sub)) & (sub[np.minimum(at, len(sub) - 1)] == j[part])
            n = len(sub) - has.astype(np.int64)
            pos = _subsets(n, np.minimum(want, n), rng)
            valid = pos >= 0
            pos = pos + (has[:, None] & (pos >= at[:, None]))  # skip the instance's own position
            picks[part, : pos.shape[1]] = np.where(valid, sub[np.where(valid, pos, 0)], -1)
        if nc:
            other = pools[taken_for]
            pos = _subsets(np.full(len(rows), len(other)), np.full(len(rows), int(nc)), rng)
            picks = np.concatenate([picks, other[pos]], axis=1)
        picks.sort(axis=1)  # -1 (none drawn) first
        for r, row in enumerate(rows):
            p = picks[r]
            sources[row] = np.concatenate([j[r : r + 1], p[p >= 0]])
    starts = np.empty((len(idx), *x.shape[1:]), dtype=np.float32)
    # the means by number of members (k but for classes with fewer instances), each group at once
    sizes = np.array([len(m) for m in sources], dtype=np.int64)
    for size in np.unique(sizes):
        rows = np.flatnonzero(sizes == size)
        cols = np.stack([sources[i] for i in rows])
        total = x[cols[:, 0]].astype(np.float32, copy=False)  # indexing made it a copy already
        for m in range(1, size):
            total += x[cols[:, m]]
        starts[rows] = total / np.float32(size)
    return Starts(starts, sources, np.ones(len(idx), dtype=bool))


def prototype_starts(
    x: np.ndarray,
    y: np.ndarray,
    idx: np.ndarray,
    pools: list[np.ndarray],
    rng: np.random.Generator,
    jitter: float = PROTOTYPE_JITTER,
) -> Starts:
    """The class prototype of each instance plus N(0, jitter^2) noise, clipped to [0, 1]."""
    protos = {c: x[pools[c]].mean(axis=0) for c in np.unique(y[idx])}
    base = np.stack([protos[c] for c in y[idx]]) if len(idx) else np.zeros((0, *x.shape[1:]), np.float32)
    starts = np.clip(base + rng.standard_normal(base.shape).astype(np.float32) * np.float32(jitter), 0.0, 1.0)
    return Starts(starts.astype(np.float32), [pools[c] for c in y[idx]], np.ones(len(idx), dtype=bool))


def steer(
    module: torch.nn.Module, x: np.ndarray, labels: np.ndarray, steps: int = STEER_STEPS, step: float = STEER_STEP
) -> np.ndarray:
    """Move each x toward its label under a torch model: normalised gradient steps on log p(label)
    inside [0, 1], each example stopping once the model predicts its label. Returns the moved x."""
    if len(x) == 0:
        return x
    device = next(module.parameters()).device
    wanted = [p.requires_grad for p in module.parameters()]
    for p in module.parameters():
        p.requires_grad_(False)
    module.eval()
    try:
        xs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)
        lab = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)
        shape = (-1,) + (1,) * (xs.dim() - 1)
        for _ in range(steps):
            xa = xs.clone().requires_grad_(True)
            logp = torch.log_softmax(module(xa), dim=1)
            todo = logp.argmax(dim=1) != lab
            if not todo.any():
                break
            (g,) = torch.autograd.grad(logp.gather(1, lab[:, None]).sum(), xa)
            with torch.no_grad():
                g = g / g.flatten(1).abs().amax(dim=1).clamp_min(1e-12).view(shape)
                xs = torch.where(todo.view(shape), (xs + step * g).clamp_(0.0, 1.0), xs)
        return xs.detach().cpu().numpy()
    finally:
        for p, w in zip(module.parameters(), wanted):
            p.requires_grad_(w)


def noise_starts(
    shape: tuple[int, ...],
    labels: np.ndarray,
    rng: np.random.Generator,
    module: torch.nn.Module | None = None,
    predict_proba: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Starts:
    """Uniform noise in [0, 1]^shape, one per label, steered toward its label by a torch `module`
    when the teacher has one. With `predict_proba`, starts the teacher does not (yet) assign to
    their label stay ok: a gradient-free search with target argmax = label steers them itself."""
    starts = rng.random((len(labels), *shape), dtype=np.float32)
    if module is not None:
        starts = steer(module, starts, labels)
    ok = np.ones(len(labels), dtype=bool)
    if module is not None and predict_proba is not None and len(labels):
        ok = predict_proba(starts).argmax(axis=1) == labels
    empty = np.zeros(0, dtype=np.int64)
    return Starts(starts.astype(np.float32), [empty] * len(labels), ok)


def start_points(
    mode: str,
    x: np.ndarray,
    y: np.ndarray,
    idx: np.ndarray,
    correct: np.ndarray,
    classes: int,
    rng: np.random.Generator,
    k: int = 4,
    module: torch.nn.Module | None = None,
    predict_proba: Callable[[np.ndarray], np.ndarray] | None = None,
    confused: np.ndarray | None = None,
    cross: int = 0,
    alike: bool = False,
) -> Starts:
    """Start points of the search for private instances `idx` of (x, y) in search space.

    `correct`: which private rows the teacher classifies right (mix and prototype use only those
    of each class). `module` / `predict_proba`: the teacher's model in search space (noise mode).
    `confused` / `cross` / `alike`: mix only, see mix_starts.
    """
    if mode == "instance":
        return Starts(
            x[idx].astype(np.float32, copy=False),
            [np.array([j], dtype=np.int64) for j in idx],
            np.ones(len(idx), dtype=bool),
        )
    if mode == "mix":
        return mix_starts(x, y, idx, class_pools(y, correct, classes), k, rng, confused, cross, alike)
    if mode == "prototype":
        return prototype_starts(x, y, idx, class_pools(y, correct, classes), rng)
    if mode == "noise":
        return noise_starts(tuple(x.shape[1:]), y[idx], rng, module, predict_proba)
    raise ValueError(f"unknown start mode {mode!r}; choose from {', '.join(START_MODES)}")
