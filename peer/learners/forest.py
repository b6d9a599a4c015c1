"""A random forest (scikit-learn to fit) whose trees travel and predict as plain arrays."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from peer.core.blob import InvalidPayload, ModelBlob
from peer.learners.base import Learner, TrainConfig, expect_arrays, register

if TYPE_CHECKING:
    from sklearn.ensemble import RandomForestClassifier


@register
class ForestLearner(Learner):
    """Non-differentiable: teaches through a gradient-free counterfactual search.

    After fitting, the trees are flattened into arrays (children, feature, threshold, class
    probabilities per node); prediction walks those arrays, so a forest rebuilt from a blob
    predicts exactly as the one that was fitted, with no pickle anywhere.
    """

    kind = "forest"
    differentiable = False

    def __init__(self, input_shape, classes, train: TrainConfig, arch: dict | None = None):
        super().__init__(input_shape, classes, train)
        self.arch = {"trees": 50, "max_depth": 20, "min_samples_leaf": 1, **(arch or {})}
        self.arrays: dict[str, np.ndarray] | None = None

    def fit(self, x, y, *, epochs=None, progress: Callable[[int], None] | None = None, seed: int | None = None):
        # imported here: scikit-learn costs every peer process ~90 MB and seconds, forest peers only need it
        from sklearn.ensemble import RandomForestClassifier

        flat = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
        forest = RandomForestClassifier(
            n_estimators=int(self.arch["trees"]),
            max_depth=self.arch["max_depth"],
            min_samples_leaf=int(self.arch["min_samples_leaf"]),
            random_state=self.train_config.seed if seed is None else seed % 2**31,
            n_jobs=1,
        ).fit(flat, y)
        self.arrays = _flatten_forest(forest, len(self.classes))
        if progress:
            progress(len(x) * (epochs or self.train_config.epochs))
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        if self.arrays is None:
            return np.full((len(x), len(self.classes)), 1.0 / len(self.classes), dtype=np.float32)
        return _predict(self.arrays, np.asarray(x, dtype=np.float32).reshape(len(x), -1))

    def to_blob(self) -> ModelBlob:
        if self.arrays is None:
            raise ValueError("forest has not been fitted")
        return ModelBlob({**self.base_spec(), "arch": self.arch}, {**self.arrays, **self.column_arrays()})

    @classmethod
    def from_blob(cls, blob: ModelBlob) -> ForestLearner:
        learner = cls(
            tuple(blob.spec["input_shape"]),
            tuple(blob.spec["classes"]),
            TrainConfig(),
            blob.spec.get("arch") if isinstance(blob.spec.get("arch"), dict) else None,
        )
        roots = blob.arrays.get("roots")
        feature = blob.arrays.get("feature")
        if roots is None or feature is None or roots.ndim != 1 or feature.ndim != 1:
            raise InvalidPayload("forest blob needs 1-d arrays 'roots' and 'feature'")
        n, n_classes, n_features = len(feature), len(learner.classes), int(np.prod(learner.input_shape))
        expect_arrays(
            blob,
            {
                "roots": ((len(roots),), "int32"),
                "left": ((n,), "int32"),
                "right": ((n,), "int32"),
                "feature": ((n,), "int32"),
                "threshold": ((n,), "float64"),
                "value": ((n, n_classes), "float32"),
            },
        )
        a = blob.arrays
        leaf = a["left"] < 0
        inner = ~leaf
        if len(roots) == 0 or n == 0 or roots.min() < 0 or roots.max() >= n:
            raise InvalidPayload("forest blob roots point outside its nodes")
        if (a["left"][inner] >= n).any() or (a["right"][inner] >= n).any() or (a["right"][inner] < 0).any():
            raise InvalidPayload("forest blob children point outside its nodes")
        if (a["feature"][inner] < 0).any() or (a["feature"][inner] >= n_features).any():
            raise InvalidPayload(f"forest blob splits on a feature outside 0..{n_features - 1}")
        # Children must come after their parent, which also rules out cycles.
        parents = np.flatnonzero(inner)
        if (a["left"][inner] <= parents).any() or (a["right"][inner] <= parents).any():
            raise InvalidPayload("forest blob is not a forest (a child precedes its parent)")
        learner.arrays = dict(a)
        return learner


def _flatten_forest(forest: RandomForestClassifier, n_classes: int) -> dict[str, np.ndarray]:
    roots, left, right, feature, threshold, value = [], [], [], [], [], []
    offset = 0
    seen = forest.classes_.astype(np.int64)
    for est in forest.estimators_:
        t = est.tree_
        leaf = t.children_left < 0
        roots.append(offset)
        left.append(np.where(leaf, -1, t.children_left + offset))
        right.append(np.where(leaf, -1, t.children_right + offset))
        feature.append(np.where(leaf, 0, t.feature))
        threshold.append(np.where(leaf, 0.0, t.threshold))
        probs = t.value[:, 0, :] / np.maximum(t.value[:, 0, :].sum(axis=1, keepdims=True), 1e-12)
        full = np.zeros((t.node_count, n_classes), dtype=np.float32)
        full[:, seen] = probs
        value.append(full)
        offset += t.node_count
    return {
        "roots": np.asarray(roots, dtype=np.int32),
        "left": np.concatenate(left).astype(np.int32),
        "right": np.concatenate(right).astype(np.int32),
        "feature": np.concatenate(feature).astype(np.int32),
        "threshold": np.concatenate(threshold).astype(np.float64),
        "value": np.concatenate(value).astype(np.float32),
    }


def _predict(a: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Walk all trees for all rows at once; returns the mean of the leaves' class probabilities."""
    rows = np.arange(len(x))[:, None]
    node = np.broadcast_to(a["roots"][None, :], (len(x), len(a["roots"]))).copy()
    left, right, feature, threshold = a["left"], a["right"], a["feature"], a["threshold"]
    while True:
        active = left[node] >= 0
        if not active.any():
            break
        r, t = np.nonzero(active)
        cur = node[r, t]
        go_left = x[rows[r, 0], feature[cur]] <= threshold[cur]
        node[r, t] = np.where(go_left, left[cur], right[cur])
    return a["value"][node].mean(axis=1).astype(np.float32)
