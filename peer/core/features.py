"""Feature spaces of tabular peers: map columns by name, filling what a source lacks.

A student declares in its model blob how its own columns vary together (`ColumnModel`: per class
and pooled, the mean and covariance of its columns, and their observed range). A teacher that
lacks some of the student's columns fills them from that model *given the columns they share and
the example's class*: a draw from the conditional Gaussian, clipped to the student's range. One
constant per missing column (the student's median, the fallback when no model is declared) makes
a region no real row lies in, and a tree splits on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from peer.core.blob import InvalidPayload

COLUMN_ARRAYS = ("columns.mean", "columns.cov", "columns.count", "columns.low", "columns.high")
SHRINK = 1e-3  # ridge added to every covariance, relative to its mean variance


@dataclass(frozen=True)
class ColumnModel:
    """How a peer's columns vary together. Row k < K of `mean` / `cov` / `count` is class k; row K
    is all rows pooled. A class with few rows is shrunk toward the pooled covariance."""

    mean: np.ndarray  # (K + 1, d)
    cov: np.ndarray  # (K + 1, d, d)
    count: np.ndarray  # (K + 1,) rows behind each row of mean
    low: np.ndarray  # (d,) smallest value seen per column
    high: np.ndarray  # (d,) largest

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, classes: int) -> ColumnModel:
        x = np.asarray(x, dtype=np.float64)
        d = x.shape[1]
        pooled_mean = x.mean(axis=0)
        pooled = np.cov(x, rowvar=False).reshape(d, d) if len(x) > 1 else np.zeros((d, d))
        means, covs, counts = [], [], []
        for c in range(classes):
            rows = x[y == c]
            n = len(rows)
            if n == 0:
                means.append(pooled_mean)
                covs.append(pooled)
            else:
                own = np.cov(rows, rowvar=False).reshape(d, d) if n > 1 else np.zeros((d, d))
                means.append(rows.mean(axis=0))
                covs.append((n * own + d * pooled) / (n + d))  # few rows: mostly the pooled shape
            counts.append(n)
        means.append(pooled_mean)
        covs.append(pooled)
        counts.append(len(x))
        cov = np.stack(covs)
        ridge = SHRINK * max(float(np.trace(pooled)) / max(d, 1), 1e-12)
        cov = cov + ridge * np.eye(d)[None]
        return cls(
            np.stack(means).astype(np.float32),
            cov.astype(np.float32),
            np.asarray(counts, dtype=np.int64),
            x.min(axis=0).astype(np.float32) if len(x) else np.zeros(d, np.float32),
            x.max(axis=0).astype(np.float32) if len(x) else np.zeros(d, np.float32),
        )

    def arrays(self) -> dict[str, np.ndarray]:
        return dict(zip(COLUMN_ARRAYS, (self.mean, self.cov, self.count, self.low, self.high)))

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], classes: int, columns: int) -> ColumnModel:
        """The model from a blob's arrays; InvalidPayload unless every shape fits and every value is
        finite, counts are >= 0 and low <= high."""
        want = {
            "columns.mean": ((classes + 1, columns), "f"),
            "columns.cov": ((classes + 1, columns, columns), "f"),
            "columns.count": ((classes + 1,), "i"),
            "columns.low": ((columns,), "f"),
            "columns.high": ((columns,), "f"),
        }
        for name, (shape, kind) in want.items():
            arr = arrays.get(name)
            if not isinstance(arr, np.ndarray) or arr.shape != shape or arr.dtype.kind != kind:
                raise InvalidPayload(f"model blob column array {name!r} must be {kind} {shape}")
            if kind == "f" and not np.isfinite(arr).all():
                raise InvalidPayload(f"model blob column array {name!r} holds NaN or infinite values")
        model = cls(*(arrays[name] for name in COLUMN_ARRAYS))
        if (model.count < 0).any() or (model.low > model.high).any():
            raise InvalidPayload("model blob column counts must be >= 0 and low <= high")
        return model

    def fill(
        self,
        known: np.ndarray,
        known_cols: np.ndarray,
        missing_cols: np.ndarray,
        y: np.ndarray,
        rng: np.random.Generator,
    ) -> np.ndarray:
        """Values of `missing_cols` for rows whose `known_cols` are `known`, each a draw from the
        Gaussian of its class `y` (the pooled one where y is out of range) conditioned on what is
        known, clipped to the observed range. (N, len(missing_cols)) float32."""
        out = np.empty((len(known), len(missing_cols)), dtype=np.float64)
        y = np.asarray(y, dtype=np.int64)
        groups = np.where((y >= 0) & (y < len(self.mean) - 1), y, len(self.mean) - 1)
        for g in np.unique(groups):
            rows = np.flatnonzero(groups == g)
            mu, cov = self.mean[g].astype(np.float64), self.cov[g].astype(np.float64)
            mu_m, mu_k = mu[missing_cols], mu[known_cols]
            c_mm = cov[np.ix_(missing_cols, missing_cols)]
            if len(known_cols):
                c_mk = cov[np.ix_(missing_cols, known_cols)]
                c_kk = cov[np.ix_(known_cols, known_cols)]
                gain = np.linalg.solve(c_kk, c_mk.T).T  # Sigma_mk Sigma_kk^-1
                centre = mu_m + (known[rows].astype(np.float64) - mu_k) @ gain.T
                spread = c_mm - gain @ c_mk.T
            else:
                centre = np.repeat(mu_m[None], len(rows), axis=0)
                spread = c_mm
            spread = (spread + spread.T) / 2
            w, v = np.linalg.eigh(spread)
            root = v * np.sqrt(np.clip(w, 0.0, None))
            out[rows] = centre + rng.standard_normal((len(rows), len(missing_cols))) @ root.T
        return np.clip(out, self.low[missing_cols], self.high[missing_cols]).astype(np.float32)


def map_columns(
    x: np.ndarray,
    source: Sequence[str],
    target: Sequence[str],
    neutral: np.ndarray,
    columns: ColumnModel | None = None,
    y: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Rows of `x` (columns named `source`) rewritten in the columns `target`, by name.

    A target column the source lacks is drawn from the target's `columns` model given the shared
    columns and the row's class `y` when the target declares one (and `y`, `rng` are given), else
    takes the target's `neutral` value (e.g. its training median).
    """
    lookup = {name: i for i, name in enumerate(source)}
    out = np.empty((len(x), len(target)), dtype=np.float32)
    for j, name in enumerate(target):
        out[:, j] = x[:, lookup[name]] if name in lookup else neutral[j]
    missing = np.array([j for j, name in enumerate(target) if name not in lookup], dtype=np.int64)
    if columns is not None and y is not None and rng is not None and len(missing) and len(x):
        known = np.array([j for j, name in enumerate(target) if name in lookup], dtype=np.int64)
        out[:, missing] = columns.fill(out[:, known], known, missing, np.asarray(y), rng)
    return out


def shared(a: Sequence[str], b: Sequence[str]) -> list[str]:
    """Names in both feature spaces, in the order of `a`."""
    bs = set(b)
    return [name for name in a if name in bs]
