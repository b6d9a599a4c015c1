"""Augment counterfactuals before they are sent: small shifts and rotations, plus noise."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class AugmentConfig:
    copies: int = 1  # augmented copies per counterfactual (0 = send only x')
    degrees: float = 10.0  # rotation range, +/-
    translate: float = 0.08  # shift range, as a fraction of width and height
    noise: float = 0.02  # std of Gaussian noise, in input units
    groups: int = 32  # distinct random transforms per copy and call


def _inverse_rotation(angle: float, tx: float, ty: float) -> list[float]:
    """The 2x3 inverse of a rotation by `angle` degrees about the image centre, then a shift
    (torchvision's _get_inverse_affine_matrix with centre 0, scale 1 and no shear)."""
    cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    matrix = [cos, sin, 0.0, -sin, cos, 0.0]
    matrix[2] += 0.0 - matrix[0] * tx - matrix[1] * ty
    matrix[5] += 0.0 - matrix[3] * tx - matrix[4] * ty
    return matrix


def rotate_shift(images: torch.Tensor, angle: float, shift: tuple[int, int]) -> torch.Tensor:
    """Images (N, C, H, W) rotated by `angle` degrees about their centre and shifted by `shift`
    pixels (x, y), nearest pixel, zeros outside: torchvision.transforms.v2.functional.affine with
    scale 1 and no shear, operation for operation (the same pixels), without importing
    torchvision, whose import loads torch's compiler (about 170 MB in every peer process)."""
    height, width = images.shape[-2:]
    theta = torch.tensor(_inverse_rotation(angle, float(shift[0]), float(shift[1])), dtype=images.dtype)
    theta = theta.reshape(1, 2, 3)
    base = torch.empty(1, height, width, 3, dtype=images.dtype)
    base[..., 0].copy_(torch.linspace((1.0 - width) * 0.5, (width - 1.0) * 0.5, steps=width))
    base[..., 1].copy_(torch.linspace((1.0 - height) * 0.5, (height - 1.0) * 0.5, steps=height).unsqueeze_(-1))
    base[..., 2].fill_(1)
    scaled = theta.transpose(1, 2).div_(torch.tensor([0.5 * width, 0.5 * height], dtype=images.dtype))
    grid = base.view(1, height * width, 3).bmm(scaled).view(1, height, width, 2)
    if len(images) > 1:
        grid = grid.expand(len(images), -1, -1, -1)
    return torch.nn.functional.grid_sample(images, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def augment_images(
    x: np.ndarray, y: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator, levels: int | None = 255
) -> tuple[np.ndarray, np.ndarray]:
    """`cfg.copies` randomly shifted, rotated and noised copies of each image in x (N, [C,] H, W)."""
    if cfg.copies <= 0 or len(x) == 0:
        return x[:0], y[:0]
    squeeze = x.ndim == 3
    imgs = torch.from_numpy(np.ascontiguousarray(x[:, None] if squeeze else x, dtype=np.float32))
    height, width = imgs.shape[-2:]
    out = []
    for _ in range(cfg.copies):
        # `groups` random transforms per copy, each applied by torchvision to its share of the images
        group = rng.integers(0, cfg.groups, len(x))
        moved = torch.empty_like(imgs)
        for g in np.unique(group):
            sel = torch.from_numpy(np.flatnonzero(group == g))
            angle = float(rng.uniform(-cfg.degrees, cfg.degrees))
            dx, dy = rng.uniform(-cfg.translate, cfg.translate, 2) * (width, height)
            moved[sel] = rotate_shift(imgs[sel], angle, (int(round(dx)), int(round(dy))))
        moved = moved + torch.from_numpy(rng.standard_normal(moved.shape).astype(np.float32)) * cfg.noise
        out.append(moved.clamp_(0.0, 1.0))
    result = torch.cat(out).numpy()
    if levels is not None:
        result = np.round(result * levels) / levels
    if squeeze:
        result = result[:, 0]
    return result.astype(np.float32), np.tile(y, cfg.copies)


def augment_vectors(
    x: np.ndarray, y: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Copies of feature vectors with Gaussian noise, clipped to [0, 1]."""
    if cfg.copies <= 0 or len(x) == 0:
        return x[:0], y[:0]
    reps = np.repeat(x[None], cfg.copies, axis=0).reshape(-1, *x.shape[1:])
    noisy = np.clip(reps + rng.standard_normal(reps.shape).astype(np.float32) * cfg.noise, 0.0, 1.0)
    return noisy.astype(np.float32), np.tile(y, cfg.copies)


def class_mixes(
    x: np.ndarray, y: np.ndarray, k: int, rng: np.random.Generator, cross: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """One mix per row of x: the mean of that row and k - 1 rows drawn at random with replacement
    (the row itself may be drawn again), labelled with the row's class; a class of one row is left out.
    Of the k - 1, the last `cross` are rows of the other classes of x (where x has any), the rest rows
    of the row's own class; at most (k - 1) // 2 of them, so the row's class keeps the majority (as the
    release's mix starts, peer.privacy.release.mix_starts).

    A student trains on these beside what it received under a mix release, so that a mean's
    blur is seen in every class it holds and is no cue for the classes it learns from teachers;
    with `cross` as the release's starts, so is the trace of another class that each of those
    starts carries."""
    if cross < 0:
        raise ValueError(f"cross (members of another class) must be >= 0, got {cross}")
    if k < 2 or len(x) == 0:
        return x[:0], y[:0]
    flat = np.asarray(x, np.float32).reshape(len(x), -1)
    n = min(cross, (k - 1) // 2)  # members of another class in each mix
    out_x, out_y = [], []
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        if len(rows) < 2:
            continue
        others = rows[rng.integers(0, len(rows), (len(rows), k - 1))]
        foreign = np.flatnonzero(y != c) if n else rows[:0]
        if len(foreign):
            others[:, k - 1 - n :] = foreign[rng.integers(0, len(foreign), (len(rows), n))]
        out_x.append((flat[rows] + flat[others].sum(axis=1)) / np.float32(k))
        out_y.append(np.full(len(rows), c, dtype=np.int64))
    if not out_x:
        return x[:0], y[:0]
    return np.concatenate(out_x).reshape(-1, *x.shape[1:]).astype(np.float32), np.concatenate(out_y)
