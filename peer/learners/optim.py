"""Adam under a one-cycle schedule, as torch.optim computes them on a CPU, without torch.optim.

Constructing any torch.optim optimizer imports torch._dynamo (and sympy with it): about 150 MB
resident in every peer process, 15% of a peer's peak, for a compiler ckd never uses. This is
torch.optim.Adam's single-tensor path (no weight decay, no amsgrad) under
torch.optim.lr_scheduler.OneCycleLR (cosine, two phases, beta1 cycled between 0.95 and 0.85),
operation for operation, so a fit gives bit-identical weights (tests/test_learners.py compares
the two on a CPU).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

BETA2 = 0.999
EPS = 1e-8
DIV_FACTOR = 25.0  # the schedule starts at max_lr / 25
FINAL_DIV_FACTOR = 1e4  # and ends at that / 1e4
BASE_MOMENTUM, MAX_MOMENTUM = 0.85, 0.95


def _cos(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


class OneCycleAdam:
    """Adam whose learning rate and beta1 follow one cycle over `total_steps` steps: a warm-up
    from max_lr/25 to max_lr over the first `pct_start` of the steps, then cosine decay."""

    def __init__(self, params: Iterable[torch.nn.Parameter], max_lr: float, total_steps: int, pct_start: float):
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.params = list(params)
        self.total = total_steps
        self.initial_lr = max_lr / DIV_FACTOR
        self.max_lr = max_lr
        self.min_lr = self.initial_lr / FINAL_DIV_FACTOR
        self.warm_end = float(pct_start * total_steps) - 1
        self.steps = 0  # optimiser steps taken
        # per parameter, as torch keeps them: steps taken, first and second moment
        self.state: dict[torch.nn.Parameter, tuple[list[float], torch.Tensor, torch.Tensor]] = {}

    def schedule(self, k: int) -> tuple[float, float]:
        """(learning rate, beta1) of step k (0-based)."""
        if k <= self.warm_end:
            pct = k / self.warm_end
            return _cos(self.initial_lr, self.max_lr, pct), _cos(MAX_MOMENTUM, BASE_MOMENTUM, pct)
        pct = (k - self.warm_end) / (self.total - 1 - self.warm_end)
        return _cos(self.max_lr, self.min_lr, pct), _cos(BASE_MOMENTUM, MAX_MOMENTUM, pct)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        if self.steps >= self.total:
            raise ValueError(f"stepped {self.steps + 1} times; the schedule has {self.total} steps")
        lr, beta1 = self.schedule(self.steps)
        self.steps += 1
        for p in self.params:
            if p.grad is None:
                continue
            if p not in self.state:
                self.state[p] = (
                    [0.0],
                    torch.zeros_like(p, memory_format=torch.preserve_format),
                    torch.zeros_like(p, memory_format=torch.preserve_format),
                )
            taken, exp_avg, exp_avg_sq = self.state[p]
            taken[0] += 1
            t = taken[0]
            g = p.grad
            exp_avg.lerp_(g, 1 - beta1)
            exp_avg_sq.mul_(BETA2).addcmul_(g, g, value=1 - BETA2)
            step_size = lr / (1 - beta1**t)
            denom = (exp_avg_sq.sqrt() / (1 - BETA2**t) ** 0.5).add_(EPS)
            p.addcdiv_(exp_avg, denom, value=-step_size)
