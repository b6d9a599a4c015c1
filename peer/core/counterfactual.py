"""The CKD teaching step: who is a qualified teacher, the soft target y', and the counterfactual x'.

Formulas (docs: ALGORITHM.md):
- qualified_mask: x in R_{i->j}  iff  argmax f_i(x) = y  and  argmax f_j(x) != y
- soft_targets:   y' = f_i(x) + alpha * (onehot(y) - f_i(x))
- counterfactual x' in [0, 1]^D close to x with f_i(x') = y'. Differentiable teachers take
  Gauss-Newton steps in logit space ("newton", the default: minimal-norm moves, 2 to 4 steps)
  or the paper's projected Adam on ||f_i(x') - y'||^2 + lam * ||x' - x||_1 ("adam"); a forest
  a search of its own leaf boxes (the nearest points where more of its trees vote for the
  target); other teachers a derivative-free search (a line search toward the class prototype,
  then an evolution strategy).

Early stop. A confident teacher starts close to its own target, so an absolute tolerance would
stop at x' = x. Here an example stops once its gap max|f_i(x') - y'| falls to `rel_tol` times
its starting gap (or below `abs_tol`), and never before `min_steps` steps. The search is judged
on the quantised x' that is actually sent: an x' that still equals x after quantisation, or
whose gap did not shrink to the tolerance, is a failure and is not sent.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from peer.core.input_grad import with_fold_grads
from peer.errors import UsageError
from peer.learners.forest import LeafBoxes

METHODS = ("newton", "adam")
FOREST_SEARCHES = ("leaf-box", "sampling")


@dataclass(frozen=True)
class CounterfactualConfig:
    alpha: float = 0.5
    method: str = "newton"  # differentiable teachers: "newton" or "adam"
    lam: float = 1e-4  # weight of ||x' - x||_1 ("adam" and the gradient-free search)
    lr: float = 0.02  # step size of "adam"
    max_steps: int = 20
    min_steps: int = 1
    rel_tol: float = 0.3
    abs_tol: float = 1e-3
    batch_size: int = 1024
    population: int = 16  # candidates per example and step of the gradient-free search
    start: str = "instance"  # where the search starts: instance (the paper), mix, prototype, noise
    start_k: int = 4  # start "mix": instances averaged (the instance and k-1 of its class)
    start_cross: int = 0  # start "mix": of the k-1, this many of the class the student takes x for (<= (k-1)//2)
    # start "mix": the others of x's class drawn from all of it ("class") or from those the student
    # takes for the same class as x where there are enough ("alike")
    start_pool: str = "class"
    # a forest: steps in all (at most max_steps) of the gradient-free search for examples neither its
    # line search nor its leaf boxes reach, where some output of the forest can reach the target
    fallback_steps: int = 6
    # a forest: "leaf-box" (its leaf boxes after the line search) or "sampling" (the gradient-free
    # search alone, as for any teacher that can only predict)
    forest_search: str = "leaf-box"

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise UsageError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.lam < 0:
            raise UsageError(f"lambda must be >= 0, got {self.lam}")
        if self.max_steps < 1 or self.min_steps < 0 or self.min_steps > self.max_steps:
            raise UsageError(
                f"need 0 <= min_steps <= max_steps and max_steps >= 1, got {self.min_steps} and {self.max_steps}"
            )
        if self.method not in METHODS:
            raise UsageError(f"unknown counterfactual method {self.method!r}; choose from {', '.join(METHODS)}")
        if not 0.0 < self.rel_tol <= 1.0:
            raise UsageError(f"rel_tol must be in (0, 1], got {self.rel_tol}")
        from peer.privacy.release import START_MODES, START_POOLS

        if self.start not in START_MODES:
            raise UsageError(f"unknown counterfactual start {self.start!r}; choose from {', '.join(START_MODES)}")
        if self.forest_search not in FOREST_SEARCHES:
            raise UsageError(f"unknown forest search {self.forest_search!r}; choose from {', '.join(FOREST_SEARCHES)}")
        if self.fallback_steps < 1:
            raise UsageError(f"fallback_steps must be >= 1, got {self.fallback_steps}")
        if self.start_k < 2:
            raise UsageError(f"start_k (instances averaged by start mix) must be >= 2, got {self.start_k}")
        if self.start_pool not in START_POOLS:
            raise UsageError(f"unknown start pool {self.start_pool!r}; choose from {', '.join(START_POOLS)}")
        if self.start_cross < 0:
            raise UsageError(
                f"start_cross (members of a mix from the confused class) must be >= 0, got {self.start_cross}"
            )


def qualified_mask(teacher_proba: np.ndarray, student_proba: np.ndarray, y: np.ndarray) -> np.ndarray:
    """R_{i->j} as a boolean mask: the teacher is right and the student is wrong."""
    return (teacher_proba.argmax(axis=1) == y) & (student_proba.argmax(axis=1) != y)


def soft_targets(teacher_proba: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """y' = f_i(x) + alpha * (onehot(y) - f_i(x)); rows still sum to one."""
    onehot = np.eye(teacher_proba.shape[1], dtype=np.float32)[y]
    return (teacher_proba + alpha * (onehot - teacher_proba)).astype(np.float32)


@dataclass
class CounterfactualResult:
    """x' for every input (float32, quantised when `levels` was given), success flags, work done."""

    x: np.ndarray
    ok: np.ndarray
    moved: np.ndarray
    steps: np.ndarray
    gap: np.ndarray

    @property
    def failed(self) -> int:
        return int((~self.ok).sum())


def _quantise(x: torch.Tensor, levels: int | None) -> torch.Tensor:
    return x if levels is None else torch.round(x * levels) / levels


def _on_grid_copy(x: torch.Tensor, levels: int | None) -> torch.Tensor:
    """`_quantise` of a tensor the caller owns (an indexed copy), in place: no temporaries."""
    return x if levels is None else x.mul_(levels).round_().div_(levels)


def _gap(proba: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (proba - target).abs().amax(dim=1)


def _judge(x0, xq, gap_final, gap0, cfg: CounterfactualConfig):
    moved = (xq != x0).flatten(1).any(dim=1)
    reached = gap_final <= torch.clamp(gap0 * cfg.rel_tol, min=cfg.abs_tol)
    return moved, moved & reached


def gradient_counterfactuals(
    module: torch.nn.Module,
    x: np.ndarray,
    target: np.ndarray | Callable[[np.ndarray, slice], np.ndarray],
    cfg: CounterfactualConfig,
    levels: int | None = 255,
    device: torch.device | None = None,
) -> CounterfactualResult:
    """Counterfactuals for a torch teacher, vectorised over the batch, each example stopping on its own.

    `target`: y' per example, or a function of the teacher's probabilities at x[rows] and `rows`
    (a slice) giving their y': the probabilities are then read off the search's own first pass
    instead of a prediction of their own."""
    device = device or next(module.parameters()).device
    module.eval()
    grads = [p.requires_grad for p in module.parameters()]
    for p in module.parameters():
        p.requires_grad_(False)
    search = _fast_layout(module, device)
    outs = []
    try:
        for start in range(0, len(x), cfg.batch_size):
            x0 = torch.from_numpy(np.ascontiguousarray(x[start : start + cfg.batch_size], dtype=np.float32)).to(device)
            tgt: torch.Tensor | Callable[[np.ndarray], np.ndarray]
            if callable(target):
                tgt = _for_rows(target, slice(start, start + len(x0)))
            else:
                tgt = torch.from_numpy(target[start : start + cfg.batch_size]).to(device)
            if cfg.method == "newton":
                xs, steps, gap0, tgt, gap = _newton_batch(search, x0, tgt, cfg, levels)
            else:
                xs, steps, gap0, tgt = _adam_batch(search, x0, tgt, cfg)
                gap = torch.full((len(x0),), float("nan"), device=device)
            with torch.no_grad():
                xq = _quantise(xs, levels)
                judge = torch.isnan(gap)  # the last point not yet checked as it is sent
                if judge.any():
                    gap[judge] = _gap(torch.softmax(search(xq[judge]), dim=1), tgt[judge])
                moved, ok = _judge(_quantise(x0, levels), xq, gap, gap0, cfg)
            outs.append(
                CounterfactualResult(
                    xq.cpu().numpy(), ok.cpu().numpy(), moved.cpu().numpy(), steps.cpu().numpy(), gap.cpu().numpy()
                )
            )
    finally:
        for p, g in zip(module.parameters(), grads):
            p.requires_grad_(g)
    return _concat(outs, x)


def _for_rows(target: Callable[[np.ndarray, slice], np.ndarray], rows: slice) -> Callable[[np.ndarray], np.ndarray]:
    return lambda proba: target(proba, rows)


def _targets(target: torch.Tensor | Callable[[np.ndarray], np.ndarray], proba: torch.Tensor) -> torch.Tensor:
    if not callable(target):
        return target
    return torch.from_numpy(np.ascontiguousarray(target(proba.cpu().numpy()), dtype=np.float32)).to(proba.device)


def _fast_layout(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The module to search with: on a CPU, a copy of a convolutional one with its weights in
    channels-last layout (oneDNN's fast path: about 2x faster passes, the same function) and its
    input convolutions' input gradients computed as a fold (peer.core.input_grad)."""
    if device.type != "cpu" or not any(isinstance(m, torch.nn.Conv2d) for m in module.modules()):
        return module
    return with_fold_grads(copy.deepcopy(module).to(memory_format=torch.channels_last))


def _done(gap: torch.Tensor, gap0: torch.Tensor, cfg: CounterfactualConfig) -> torch.Tensor:
    return gap <= torch.clamp(gap0 * cfg.rel_tol, min=cfg.abs_tol)


_PROBE = 1e-2  # finite-difference step for J d
_TRUST = 0.25  # most change of any one input in one step


def _newton_batch(
    module,
    x0: torch.Tensor,
    target: torch.Tensor | Callable[[np.ndarray], np.ndarray],
    cfg: CounterfactualConfig,
    levels: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gauss-Newton steps in logit space; returns x', steps taken, the starting gap, the targets
    and the gap at x' where a check found it (NaN where x' moved after its last check).

    The logits z(x') should move by r = log y' - log f(x') (centred). Each step goes along
    d = J^T r, the steepest direction for that change, by the length t that best fits
    J(t d) = r, where J d is read off one extra forward pass (a finite difference, exact for a
    ReLU network within one linear region); a trust region caps each step. Minimal-norm steps
    keep x' close to x without a distance term; two to four steps usually reach the target.
    The iterate itself is kept exact; every pass reads the model at it on the `levels` grid,
    where it would be sent, so that what is checked is what is sent (and small moves still add up).

    Work is spent on the examples still moving. The same J d predicts, to first order, where
    each step lands: an example predicted to have reached its target is checked with a forward
    pass without gradient, and only if it has not does it take the gradient pass; the others go
    straight to the gradient pass, which serves as their check (those found there to have
    reached it are dropped after it). Either way an example is checked on the same point, so the
    prediction decides only what the check costs, never its outcome. Only the examples still
    moving take the probe.
    """
    xs = x0.clone()
    steps = torch.zeros(len(x0), dtype=torch.int32, device=x0.device)
    active = torch.arange(len(x0), device=x0.device)
    likely = torch.zeros(len(x0), dtype=torch.bool, device=x0.device)  # predicted to have reached it
    checked = torch.full((len(x0),), float("nan"), dtype=x0.dtype, device=x0.device)
    shape = (-1,) + (1,) * (x0.dim() - 1)
    gap0 = torch.zeros(0, device=x0.device)
    tgt = log_target = torch.zeros(0, device=x0.device)
    for t in range(1, cfg.max_steps + 1):
        check = t > cfg.min_steps
        if check and bool(likely[active].any()):  # check those likely done without gradient
            sure = active[likely[active]]
            with torch.no_grad():
                gap = _gap(torch.softmax(module(_on_grid_copy(xs[sure], levels)), dim=1), tgt[sure])
            done = _done(gap, gap0[sure], cfg)
            checked[sure[done]] = gap[done]
            active = torch.cat([active[~likely[active]], sure[~done]]).sort().values
            if len(active) == 0:
                break
        xa = _on_grid_copy(xs[active], levels).requires_grad_(True)
        z = module(xa)
        logp = torch.log_softmax(z, dim=1)
        proba = logp.detach().exp()
        going: torch.Tensor | None = None
        if t == 1:  # all examples: their targets and starting gaps
            tgt = _targets(target, proba)
            log_target = torch.log(tgt.clamp_min(1e-12))
            gap0 = _gap(proba, tgt)
        if check:  # the pass with gradient serves as the check of the rest
            gap = _gap(proba, tgt[active])
            going = ~_done(gap, gap0[active], cfg)
            checked[active[~going]] = gap[~going]
            if not going.any():
                break
        r = (log_target[active] - logp).detach()
        r = r - r.mean(dim=1, keepdim=True)
        zc = z - z.mean(dim=1, keepdim=True)
        (d,) = torch.autograd.grad((zc * r).sum(), xa)
        if going is not None:  # rows are independent: those that stopped are dropped after the pass
            active, xa, d, r, zc = active[going], xa[going], d[going], r[going], zc[going]
        with torch.no_grad():
            d = d / d.flatten(1).abs().amax(dim=1).clamp_min(1e-12).view(shape)  # max |d| = 1
            u = module(xa + _PROBE * d)
            u = (u - u.mean(dim=1, keepdim=True) - zc) / _PROBE  # J d, by a finite difference
            length = ((r * u).sum(dim=1) / (u * u).sum(dim=1).clamp_min(1e-12)).clamp_(0.0, _TRUST)
            xs[active] = (xs[active] + length.view(shape) * d).clamp_(0.0, 1.0)
            steps[active] = t
            checked[active] = float("nan")
            landing = torch.softmax(zc + length.view(-1, 1) * u, dim=1)  # first order, off the grid
            likely[active] = _done(_gap(landing, tgt[active]), gap0[active], cfg)
    return xs, steps, gap0, tgt, checked


def _adam_batch(
    module, x0: torch.Tensor, target: torch.Tensor | Callable[[np.ndarray], np.ndarray], cfg: CounterfactualConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The paper's objective ||f(x') - y'||^2 + lam ||x' - x||_1 by projected Adam."""
    with torch.no_grad():
        proba0 = torch.softmax(module(x0), dim=1)
    target = _targets(target, proba0)
    gap0 = _gap(proba0, target)
    xs = x0.clone()
    steps = torch.zeros(len(x0), dtype=torch.int32, device=x0.device)
    active = torch.arange(len(x0), device=x0.device)
    m, v = torch.zeros_like(x0), torch.zeros_like(x0)
    beta1, beta2 = 0.9, 0.999
    for t in range(1, cfg.max_steps + 1):
        xa = xs[active].requires_grad_(True)
        proba = torch.softmax(module(xa), dim=1)
        done = _done(_gap(proba, target[active]), gap0[active], cfg) & (t > cfg.min_steps)
        loss = ((proba - target[active]) ** 2).sum(dim=1) + cfg.lam * (xa - x0[active]).abs().flatten(1).sum(dim=1)
        (grad,) = torch.autograd.grad(loss.sum(), xa)
        with torch.no_grad():
            ma = m[active].mul_(beta1).add_(grad, alpha=1 - beta1)
            va = v[active].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            m[active], v[active] = ma, va
            update = cfg.lr * (ma / (1 - beta1**t)) / ((va / (1 - beta2**t)).sqrt() + 1e-8)
            stepped = (xa - update).clamp_(0.0, 1.0)
            xs[active[~done]] = stepped[~done]
            steps[active[~done]] = t
            active = active[~done]
        if len(active) == 0:
            break
    return xs, steps, gap0, target


def search_counterfactuals(
    predict_proba: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    target: np.ndarray | Callable[[np.ndarray], np.ndarray],
    prototypes: np.ndarray,
    cfg: CounterfactualConfig,
    rng: np.random.Generator,
    levels: int | None = 255,
    boxes: LeafBoxes | None = None,
) -> CounterfactualResult:
    """Derivative-free counterfactuals for any teacher that can only predict. `target`: y' per
    example, or a function of the teacher's probabilities at x giving y' (read off the search's
    own prediction at x, which it makes anyway).

    With a forest's `boxes`, what the line search toward the prototype does not reach goes on
    through the forest's leaf boxes (`leaf_box_counterfactuals`) from the line search's best point,
    and only what those miss, where the forest's votes can reach the target at all
    (`votes_can_reach`), through the evolution strategy, up to `cfg.fallback_steps` steps in all.

    1. Line search toward the class prototype (the mean of the teacher's confidently right
       examples of the target class): x' = x + s (prototype - x) for `population` values of s,
       evaluated a block of examples at a time; the smallest s that reaches the target wins. This moves x
       toward what is typical of its class, the "quintessential" direction.
    2. Examples still short of their target continue with a (1+lambda) evolution strategy:
       sparse Gaussian moves, kept when they lower |f(x') - y'|_1 + lam * ||x' - x||_1.
    """
    n = len(x)
    shape = x.shape[1:]
    dim = int(np.prod(shape))
    x0 = x.reshape(n, dim).astype(np.float32)
    proba0 = predict_proba(x)
    tgt = (target(proba0) if callable(target) else target).astype(np.float32)
    gap0 = np.abs(proba0 - tgt).max(axis=1)
    goal = np.maximum(gap0 * cfg.rel_tol, cfg.abs_tol)
    # 1. line search toward the prototype of each example's own class, a block of examples at a time
    pop = cfg.population
    s = np.linspace(0.0, 1.0, pop + 1, dtype=np.float32)[1:]
    proto = prototypes.reshape(len(prototypes), dim)[tgt.argmax(axis=1)]
    dtype = np.result_type(x0, proto, s)
    best = np.empty((n, dim), dtype=dtype)
    best_proba = np.empty_like(tgt)
    reached = np.zeros(n, dtype=bool)
    block = _block(pop * dim)
    for a in range(0, n, block):
        rows = slice(a, min(a + block, n))
        m = rows.stop - a
        cands = np.multiply(s[None, :, None], (proto[rows] - x0[rows])[:, None, :], dtype=dtype)  # (m, pop, dim)
        cands += x0[rows, None, :]
        _quantise_into(cands, levels)
        proba = predict_proba(cands.reshape(-1, *shape)).reshape(m, pop, -1)
        gaps = np.abs(proba - tgt[rows, None, :]).max(axis=2)
        hit = gaps <= goal[rows, None]
        pick = np.where(hit.any(axis=1), hit.argmax(axis=1), gaps.argmin(axis=1))
        best[rows] = cands[np.arange(m), pick]
        best_proba[rows] = proba[np.arange(m), pick]
        reached[rows] = hit.any(axis=1)
    best_cost = np.abs(best_proba - tgt).sum(axis=1) + cfg.lam * np.abs(best - x0).sum(axis=1)
    steps = np.ones(n, dtype=np.int32)

    active = np.flatnonzero(~reached)
    last = cfg.max_steps
    if boxes is not None and len(active):  # a forest: its leaf boxes from the line search's best point
        found = leaf_box_counterfactuals(
            boxes, predict_proba, best[active].reshape(-1, *shape), tgt[active], cfg, levels, goal[active]
        )
        won = active[found.ok]
        best[won] = found.x[found.ok].reshape(len(won), dim)
        steps[active] += found.steps
        active = active[~found.ok]
        active = active[votes_can_reach(boxes, tgt[active], goal[active])]  # no budget on the impossible
        last = min(cfg.fallback_steps, cfg.max_steps)

    # 2. evolution strategy for the rest
    sigma = np.full(n, 0.25, dtype=np.float32)
    frac = min(1.0, max(8.0 / dim, 0.05))
    for _ in range(2, last + 1):
        if len(active) == 0:
            break
        k = len(active)
        # the whole step's draws in the order they always had: every mask, then every move
        per = max(1, _block(dim) // pop) * pop  # candidate rows at a time
        mask = np.concatenate([rng.random((min(per, k * pop - a), dim)) < frac for a in range(0, k * pop, per)])
        c = np.empty(k * pop, dtype=np.result_type(best_proba, best))
        chosen = np.empty((k, dim), dtype=best.dtype)
        chosen_proba = np.empty((k, tgt.shape[1]), dtype=best_proba.dtype)
        for a in range(0, k * pop, per):  # `per` is a multiple of pop: whole examples per block
            rows = slice(a, min(a + per, k * pop))
            mine = active[a // pop : rows.stop // pop]
            cands = rng.standard_normal((rows.stop - a, dim)).astype(np.float32)
            cands *= np.repeat(sigma[mine], pop)[:, None]
            cands = np.repeat(best[mine], pop, axis=0) + mask[rows] * cands
            np.clip(cands, 0.0, 1.0, out=cands)
            _quantise_into(cands, levels)
            proba = predict_proba(cands.reshape(-1, *shape))
            c[rows] = np.abs(proba - np.repeat(tgt[mine], pop, axis=0)).sum(axis=1) + cfg.lam * np.abs(
                cands - np.repeat(x0[mine], pop, axis=0)
            ).sum(axis=1)
            at = c[rows].reshape(-1, pop).argmin(axis=1) + np.arange(len(mine)) * pop
            chosen[a // pop : rows.stop // pop] = cands[at]
            chosen_proba[a // pop : rows.stop // pop] = proba[at]
        cost = c.reshape(k, pop)
        pick = cost.argmin(axis=1)
        better = cost[np.arange(k), pick] < best_cost[active]
        best[active[better]] = chosen[better]
        best_cost[active[better]] = cost[better, pick[better]]
        best_proba[active[better]] = chosen_proba[better]
        sigma[active] = np.where(better, sigma[active] * 1.5, sigma[active] * 0.85).clip(0.02, 1.0)
        steps[active] += 1
        active = active[np.abs(best_proba[active] - tgt[active]).max(axis=1) > goal[active]]

    gap = np.abs(predict_proba(best.reshape(n, *shape)) - tgt).max(axis=1)
    moved = (best != _quantised(x0, levels)).any(axis=1)
    return CounterfactualResult(best.reshape(n, *shape), moved & (gap <= goal), moved, steps, gap)


def _block(row_size: int, elements: int = 1 << 22) -> int:
    """Rows of `row_size` values to take at a time: about 16 MB of float32 candidates, which stay in
    cache-friendly memory instead of a fresh array of hundreds of MB per search step."""
    return max(1, elements // max(row_size, 1))


def _quantise_into(a: np.ndarray, levels: int | None) -> None:
    """`a` on the `levels` grid in place: the same values as round(a * levels) / levels."""
    if levels is not None:
        a *= levels
        np.round(a, out=a)
        a /= levels


def _quantised(a: np.ndarray, levels: int | None) -> np.ndarray:
    """`a` on the `levels` grid (a copy; `a` itself where there is no grid)."""
    if levels is None:
        return a
    out = a.copy()
    _quantise_into(out, levels)
    return out


def _on_grid(low: np.ndarray, high: np.ndarray, levels: int | None) -> tuple[np.ndarray, np.ndarray]:
    """For bounds low < v <= high, the least and the most value of [0, 1] that v may take, on the
    `levels` grid when given (as float32, the precision the forest compares); empty where least > most."""
    if levels is None:
        vmin, vmax = np.where(np.isfinite(low), low + 1e-6, 0.0), high
    else:
        with np.errstate(invalid="ignore"):
            k = np.floor(np.clip(low, -1.0, 2.0) * levels)
            vmin = np.where((k / levels).astype(np.float32) > low, k, k + 1) / levels
            k = np.floor(np.clip(high, -1.0, 2.0) * levels)
            k = np.where(((k + 1) / levels).astype(np.float32) <= high, k + 1, k)
            vmax = np.where((k / levels).astype(np.float32) <= high, k, k - 1) / levels
    return np.clip(vmin, 0.0, 1.0).astype(np.float32), np.clip(vmax, 0.0, 1.0).astype(np.float32)


def _box_distances(
    boxes: LeafBoxes, x: np.ndarray, levels: int | None, leaves: np.ndarray, chunk: int = 1 << 24
) -> np.ndarray:
    """(rows, len(leaves)) L1 distance from each row of x to each of those leaf boxes on the grid,
    inf for a box with no grid point. Grown from the roots down over the nodes above those leaves:
    a split moves one bound of one feature, so a child adds clip(s x - s b, 0, s b' - s b) to its
    parent's distance (b its bound, b' the parent's, s = +1 for an upper bound, -1 for a lower)."""
    vmin, vmax = _on_grid(boxes.node_low, boxes.node_high, levels)
    pmin, pmax = _on_grid(boxes.parent_low, boxes.parent_high, levels)
    upper = vmax < pmax  # which bound the split moved (a split that moves neither adds nothing)
    sign = np.where(upper, 1.0, -1.0).astype(np.float32)
    bound = np.where(upper, vmax, -vmin)
    width = np.where(upper, pmax - vmax, vmin - pmin)
    empty = vmin > vmax
    bound[empty], width[empty] = -np.inf, np.inf
    keep = np.zeros(len(boxes.depth), dtype=bool)  # the nodes on the paths to `leaves`
    node = boxes.leaf_node[leaves]
    while len(node):
        keep[node] = True
        node = np.unique(boxes.parent[node])
        node = node[(node >= 0) & ~keep[np.maximum(node, 0)]]
    depth = np.where(keep, boxes.depth, 0)
    by_depth = [np.flatnonzero(depth == k) for k in range(1, int(depth.max(initial=0)) + 1)]
    at = np.full(len(boxes.depth), -1, dtype=np.int64)
    kept = np.flatnonzero(keep)
    at[kept] = np.arange(len(kept))
    out = np.empty((len(x), len(leaves)), dtype=np.float32)
    per = max(1, chunk // max(len(kept), 1))
    for s in range(0, len(x), per):
        xs = x[s : s + per]
        dist = np.zeros((len(xs), len(kept)), dtype=np.float32)
        for nodes in by_depth:
            step = xs[:, boxes.split[nodes]] * sign[nodes] - bound[nodes]
            np.clip(step, 0.0, width[nodes], out=step)
            dist[:, at[nodes]] = dist[:, at[boxes.parent[nodes]]] + step
        out[s : s + per] = dist[:, at[boxes.leaf_node[leaves]]]
    return out


def votes_can_reach(boxes: LeafBoxes, target: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """Per row, whether some forest output lies within `goal` of `target` in every class. A forest
    whose leaves each vote for one class outputs votes / trees: each class needs a whole number of
    votes in its band, and those numbers must add up to the trees. True for any other forest."""
    if not np.isin(boxes.value, (0.0, 1.0)).all():
        return np.ones(len(target), dtype=bool)
    trees = int(boxes.tree.max(initial=0)) + 1
    eps = 1e-6
    low = np.clip(np.ceil((target - goal[:, None]) * trees - eps), 0, trees)
    high = np.clip(np.floor((target + goal[:, None]) * trees + eps), 0, trees)
    return (low <= high).all(axis=1) & (low.sum(axis=1) <= trees) & (high.sum(axis=1) >= trees)


def leaf_box_counterfactuals(
    boxes: LeafBoxes,
    predict_proba: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    target: np.ndarray,
    cfg: CounterfactualConfig,
    levels: int | None = 255,
    goal: np.ndarray | None = None,
) -> CounterfactualResult:
    """Counterfactuals for a forest from its own structure, no sampling.

    For the target class c of each example, every tree offers the leaf predicting c whose box is
    nearest to x (L1; the nearest point of a box is x clipped to it, also nearest in L2). Trees are
    taken in order of that distance, each box intersected with those before it where they overlap
    (skipped where they do not), and x' is x clipped to the intersection, on the `levels` grid: a
    path of ever more trees voting c at the least change of x. The first point on that path where
    the forest's prediction reaches the target (the gap rule of the gradient searches) is x'; an
    example whose path runs out of trees is a failure (a box that overshoots the target is left
    out). `steps` counts the forest evaluations spent on an example.
    """
    n = len(x)
    shape = x.shape[1:]
    d = int(np.prod(shape))
    x0 = x.reshape(n, d).astype(np.float32)
    tgt = target.astype(np.float32)
    gap0 = np.abs(predict_proba(x) - tgt).max(axis=1)
    if goal is None:  # else the gap each example must reach, from a search before this one
        goal = np.maximum(gap0 * cfg.rel_tol, cfg.abs_tol)
    # + a dummy column
    start = np.concatenate([_quantised(x0, levels), np.zeros((n, 1), np.float32)], axis=1).astype(np.float32)
    best = start.copy()
    ok = np.zeros(n, dtype=bool)
    steps = np.zeros(n, dtype=np.int32)
    gap = gap0.copy()
    vmin, vmax = _on_grid(boxes.low, boxes.high, levels)
    voted = boxes.value.argmax(axis=1)
    cls = tgt.argmax(axis=1)
    there = gap0 <= goal  # at the target already: x' must still move, to another box voting c
    for c in np.unique(cls):
        rows = np.flatnonzero(cls == c)
        cand = np.flatnonzero(voted == c)
        if len(cand) == 0:
            continue
        trees, first = np.unique(boxes.tree[cand], return_index=True)  # leaves are in tree order
        dist = _box_distances(boxes, start[rows], levels, cand)
        dist[there[rows][:, None] & (dist <= 0)] = np.inf
        bounds = np.append(first, len(cand))
        nearest = np.stack([cand[a + dist[:, a:b].argmin(axis=1)] for a, b in zip(bounds[:-1], bounds[1:])], axis=1)
        near_dist = np.stack([dist[:, a:b].min(axis=1) for a, b in zip(bounds[:-1], bounds[1:])], axis=1)
        order = np.argsort(near_dist, axis=1, kind="stable")
        low = np.full((len(rows), d + 1), -np.inf, dtype=np.float32)
        high = np.full((len(rows), d + 1), np.inf, dtype=np.float32)
        point = start[rows].copy()
        live = np.ones(len(rows), dtype=bool)
        r = np.arange(len(rows))[:, None]
        for k in range(len(trees)):
            leaf = nearest[np.arange(len(rows)), order[:, k]]
            reachable = np.isfinite(near_dist[np.arange(len(rows)), order[:, k]])
            lf = boxes.feature[leaf]
            nlo = np.maximum(low[r, lf], vmin[leaf])
            nhi = np.minimum(high[r, lf], vmax[leaf])
            fits = live & reachable & (nlo <= nhi).all(axis=1)
            if not fits.any():
                continue
            i = np.flatnonzero(fits)
            fi = lf[i]
            saved = low[i[:, None], fi], high[i[:, None], fi], point[i[:, None], fi]
            low[i[:, None], fi], high[i[:, None], fi] = nlo[i], nhi[i]
            new = np.clip(start[rows[i]][np.arange(len(i))[:, None], fi], nlo[i], nhi[i])
            point[i[:, None], fi] = new
            moves = (new != saved[2]).any(axis=1)
            changed = i[moves]
            if len(changed) == 0:
                continue
            proba = predict_proba(point[changed, :d].reshape(-1, *shape))
            rc = rows[changed]
            steps[rc] += 1
            g = np.abs(proba - tgt[rc]).max(axis=1)
            gap[rc] = g
            reached = g <= goal[rc]
            best[rc[reached]] = point[changed[reached]]
            ok[rc[reached]] = True
            live[changed[reached]] = False
            # past the target's confidence: this box is left out, the path goes on without it
            over = np.flatnonzero(moves)[~reached & (proba[:, c] > tgt[rc, c] + goal[rc])]
            if len(over):
                back = i[over][:, None], fi[over]
                low[back], high[back], point[back] = saved[0][over], saved[1][over], saved[2][over]
            if not live.any():
                break
    out = best[:, :d]
    moved = (out != start[:, :d]).any(axis=1)
    return CounterfactualResult(out.reshape(n, *shape), ok & moved, moved, steps, gap)


def _concat(parts: list[CounterfactualResult], x: np.ndarray) -> CounterfactualResult:
    if not parts:
        empty = np.zeros(0, dtype=bool)
        return CounterfactualResult(x.astype(np.float32), empty, empty, np.zeros(0, np.int32), np.zeros(0, np.float32))
    return CounterfactualResult(
        *(np.concatenate([getattr(p, f) for p in parts]) for f in ("x", "ok", "moved", "steps", "gap"))
    )


def dedupe(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of the first occurrence of each distinct (input bytes, label) pair, in order."""
    if len(x) == 0:
        return np.zeros(0, dtype=np.int64)
    rows = np.ascontiguousarray(x.reshape(len(x), -1))
    labels = np.asarray(y, dtype=np.int64)
    first: dict[tuple[bytes, int], int] = {}
    for i in range(len(rows)):  # a dict of row bytes: linear, where sorting the rows (np.unique) is not
        first.setdefault((rows[i].tobytes(), int(labels[i])), i)
    return np.fromiter(first.values(), dtype=np.int64, count=len(first))
