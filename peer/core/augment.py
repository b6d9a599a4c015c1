"""Augment counterfactuals before they are sent: small shifts and rotations, plus noise."""

from __future__ import annotations

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


def augment_images(
    x: np.ndarray, y: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator, levels: int | None = 255
) -> tuple[np.ndarray, np.ndarray]:
    """`cfg.copies` randomly shifted, rotated and noised copies of each image in x (N, [C,] H, W)."""
    if cfg.copies <= 0 or len(x) == 0:
        return x[:0], y[:0]
    from torchvision.transforms.v2 import functional as TF  # here: a peer on a table never loads torchvision

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
            moved[sel] = TF.affine(
                imgs[sel], angle=angle, translate=[int(round(dx)), int(round(dy))], scale=1.0, shear=[0.0]
            )
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
