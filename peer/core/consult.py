"""What a teacher learns back from the models it pulled (`--peer-distill W`).

To teach student j, teacher i pulls j's model and runs it on i's own private rows (R_{i->j} needs
to know where j errs). Those predictions say more than right or wrong: where j's model is right
on a row of mine, its probabilities tell how typical of the row's class it finds it and which
other classes it sees in it, among them classes my data never shows. Under label skew this is
most of what a peer can learn about a class it lacks from real images: a coat-like pullover of
mine that the models call partly Coat teaches me where Coat lies, from my own sharp images, not
from the blurred mixes the guarded release sends.

So in its retrain a peer moves each of its own rows' target from its label toward the classes it
lacks by what the pulled models that get the row right believe of them:

    target = (1 - W m) onehot(y) + W b_lacking,   b: the mean probabilities of those models,
                                                  m: b's mass on the classes my data lacks

(the qualified models, as in the paper's R: a model that errs on the row says nothing about its
class), and its label where no pulled model is right. The classes my data holds keep their labels:
there my own labelled rows know best (README, learning back from the models it pulled, gives the
one-off probe that compared the two; no benchmark in bench/ reruns it).
Nothing leaves the peer: the models came for teaching, and their outputs on private rows stay where
the rows are.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def qualified_beliefs(probas: Iterable[np.ndarray], y: np.ndarray, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the mean probabilities of the models whose argmax is the row's label, and which
    rows had one. `probas`: each model's (N, classes) probabilities on the rows, classes in my order."""
    y = np.asarray(y, dtype=np.int64)
    total = np.zeros((len(y), classes), dtype=np.float64)
    count = np.zeros(len(y), dtype=np.int64)
    for proba in probas:
        proba = np.asarray(proba, dtype=np.float64)
        if proba.shape != (len(y), classes):
            raise ValueError(f"probabilities of shape {proba.shape}, expected {(len(y), classes)}")
        right = proba.argmax(axis=1) == y
        total[right] += proba[right]
        count += right
    beliefs = np.zeros((len(y), classes), dtype=np.float32)
    has = count > 0
    beliefs[has] = (total[has] / count[has, None]).astype(np.float32)
    return beliefs, has


def distill_targets(
    y: np.ndarray, classes: int, beliefs: np.ndarray, has: np.ndarray, weight: float, lacking: np.ndarray
) -> np.ndarray:
    """Targets for my own rows: the label, with `weight` of the beliefs' mass on the `lacking`
    classes (a boolean mask over classes) moved onto them where a model was right; rows sum to 1."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    targets = np.zeros((len(y), classes), dtype=np.float32)
    targets[np.arange(len(y)), y] = 1.0
    lacking = np.asarray(lacking, dtype=bool)
    if weight > 0 and has.any() and lacking.any():
        moved = np.where(has[:, None], weight * beliefs[:, lacking], 0.0).astype(np.float32)
        targets *= 1.0 - moved.sum(axis=1, keepdims=True)
        targets[:, lacking] += moved
    return targets
