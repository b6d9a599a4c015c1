"""Feature spaces of tabular peers: map columns by name, filling what a source lacks with neutral values."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def map_columns(x: np.ndarray, source: Sequence[str], target: Sequence[str], neutral: np.ndarray) -> np.ndarray:
    """Rows of `x` (columns named `source`) rewritten in the columns `target`, by name.

    A target column the source lacks takes its `neutral` value (declared by the model that owns
    the target space, e.g. its training median), never a value guessed from other columns.
    """
    lookup = {name: i for i, name in enumerate(source)}
    out = np.empty((len(x), len(target)), dtype=np.float32)
    for j, name in enumerate(target):
        out[:, j] = x[:, lookup[name]] if name in lookup else neutral[j]
    return out


def shared(a: Sequence[str], b: Sequence[str]) -> list[str]:
    """Names in both feature spaces, in the order of `a`."""
    bs = set(b)
    return [name for name in a if name in bs]
