"""A random forest (scikit-learn to fit) whose trees travel and predict as plain arrays."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from peer.core.blob import InvalidPayload, ModelBlob
from peer.learners.base import Learner, TrainConfig, expect_arrays, register

if TYPE_CHECKING:
    from sklearn.ensemble import RandomForestClassifier


@register
class ForestLearner(Learner):
    """Non-differentiable: teaches through a search of its own leaf boxes (`leaf_boxes`), with the
    gradient-free search for what that does not reach.

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
        self._boxes: dict[tuple, LeafBoxes] = {}
        self._walk: tuple[dict[str, np.ndarray], list | None] | None = None  # (arrays, compiled trees)

    def fit(
        self,
        x,
        y,
        *,
        epochs=None,
        progress: Callable[[int], None] | None = None,
        seed: int | None = None,
        targets: np.ndarray | None = None,  # a forest trains on labels: soft_targets is False
    ):
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
        self._boxes = {}
        if progress:
            progress(len(x) * (epochs or self.train_config.epochs))
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        if self.arrays is None:
            return np.full((len(x), len(self.classes)), 1.0 / len(self.classes), dtype=np.float32)
        if self._walk is None or self._walk[0] is not self.arrays:  # built once per fitted or received forest
            # scikit-learn's walk only where it is loaded already (a process that fits forests): a peer
            # that only receives forests does not pay its import (~90 MB) for a faster prediction
            fast = "sklearn" in sys.modules
            shape, classes = int(np.prod(self.input_shape)), len(self.classes)
            self._walk = (self.arrays, compiled_trees(self.arrays, shape, classes) if fast else None)
        return _predict(self.arrays, np.asarray(x, dtype=np.float32).reshape(len(x), -1), self._walk[1])

    def leaf_boxes(self, low: np.ndarray | None = None, high: np.ndarray | None = None) -> LeafBoxes | None:
        """The leaves as boxes of the search space: the input itself, or with `low` and `high` the
        [0, 1] coordinates u of the box low + u (high - low) (a table's search space). None before
        fitting. Built once per fitted forest and space."""
        if self.arrays is None:
            return None
        key = (None, None) if low is None or high is None else (low.tobytes(), high.tobytes())
        if key not in self._boxes:
            self._boxes = {key: leaf_boxes(self.arrays, int(np.prod(self.input_shape)), low, high)}
        return self._boxes[key]

    def to_blob(self) -> ModelBlob:
        if self.arrays is None:
            raise ValueError("forest has not been fitted")
        return ModelBlob({**self.base_spec(), "arch": self.arch}, {**self.arrays, **self.column_arrays()})

    @classmethod
    def from_blob(cls, blob: ModelBlob, device: str = "auto") -> ForestLearner:  # numpy: no device
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


@dataclass(frozen=True)
class LeafBoxes:
    """Every leaf of a forest as the box of inputs that reach it, in the search space.

    Leaf i is node `leaf_node[i]` of tree `tree[i]`, predicts `value[i]` and is reached by x iff
    low[i, j] < x[feature[i, j]] <= high[i, j] for every j: one pair of bounds per feature its path
    splits on, padded with unbounded pairs on the dummy feature `n_features`.

    Per node (the forest's own numbering), the split that leads to it from its parent: the feature
    `split[n]` (`n_features` at a root) bounded to (`node_low[n]`, `node_high[n]`] here and to
    (`parent_low[n]`, `parent_high[n]`] at the parent, and the node's `depth`; enough to grow the
    distance from an input to every box from the root down, one split at a time.
    """

    tree: np.ndarray  # (L,) int32
    leaf_node: np.ndarray  # (L,) int64
    value: np.ndarray  # (L, classes) float32
    feature: np.ndarray  # (L, D) int32
    low: np.ndarray  # (L, D) float64
    high: np.ndarray  # (L, D) float64
    parent: np.ndarray  # (nodes,) int64, -1 at a root
    depth: np.ndarray  # (nodes,) int32
    split: np.ndarray  # (nodes,) int32
    node_low: np.ndarray  # (nodes,) float64
    node_high: np.ndarray
    parent_low: np.ndarray
    parent_high: np.ndarray
    n_features: int


def leaf_boxes(
    a: dict[str, np.ndarray], n_features: int, low: np.ndarray | None = None, high: np.ndarray | None = None
) -> LeafBoxes:
    """The leaf boxes of a flattened forest; with `low` and `high`, in u = (x - low) / (high - low)
    (a feature with high == low cannot move: its splits are decided once, from its value low)."""
    left, right, feature, threshold = a["left"], a["right"], a["feature"], a["threshold"]
    if low is not None and high is not None:
        lo64, span = low.astype(np.float64), (high - low).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            moved = (threshold - lo64[feature]) / span[feature]
        fixed = np.where(lo64[feature] <= threshold, np.inf, -np.inf)
        threshold = np.where(span[feature] > 0, moved, fixed)
    nodes = len(left)
    parent = np.full(nodes, -1, dtype=np.int64)
    depth = np.zeros(nodes, dtype=np.int32)
    split = np.full(nodes, n_features, dtype=np.int32)
    node_low, node_high = np.full(nodes, -np.inf), np.full(nodes, np.inf)
    parent_low, parent_high = np.full(nodes, -np.inf), np.full(nodes, np.inf)
    leaves: list[tuple[int, int, dict[int, tuple[float, float]]]] = []
    for t, root in enumerate(a["roots"]):
        stack: list[tuple[int, dict[int, tuple[float, float]]]] = [(int(root), {})]
        while stack:
            node, bounds = stack.pop()
            if left[node] < 0:
                leaves.append((t, node, bounds))
                continue
            f, thr = int(feature[node]), float(threshold[node])
            lo, hi = bounds.get(f, (-np.inf, np.inf))
            for child, box in ((int(left[node]), (lo, min(hi, thr))), (int(right[node]), (max(lo, thr), hi))):
                parent[child], depth[child], split[child] = node, depth[node] + 1, f
                node_low[child], node_high[child] = box
                parent_low[child], parent_high[child] = lo, hi
                stack.append((child, {**bounds, f: box}))
    width = max((len(b) for _, _, b in leaves), default=0) or 1
    feat = np.full((len(leaves), width), n_features, dtype=np.int32)
    lows = np.full((len(leaves), width), -np.inf)
    highs = np.full((len(leaves), width), np.inf)
    for i, (_, _, bounds) in enumerate(leaves):
        for j, (f, (lo, hi)) in enumerate(bounds.items()):
            feat[i, j], lows[i, j], highs[i, j] = f, lo, hi
    leaf_node = np.array([n for _, n, _ in leaves], dtype=np.int64)
    return LeafBoxes(
        np.array([t for t, _, _ in leaves], dtype=np.int32),
        leaf_node,
        a["value"][leaf_node].astype(np.float32),
        feat,
        lows,
        highs,
        parent,
        depth,
        split,
        node_low,
        node_high,
        parent_low,
        parent_high,
        n_features,
    )


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


def _leaves(a: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """(rows, trees): the leaf each row of x reaches in each tree, all trees walked at once.

    Flat over (row, tree) pairs: each level steps only the pairs still at an inner node and drops
    those that reached a leaf, so the work is the number of nodes visited, not rows x trees x depth."""
    n, trees = len(x), len(a["roots"])
    left, right, feature, threshold = a["left"], a["right"], a["feature"], a["threshold"]
    flat = np.ascontiguousarray(x).reshape(-1)
    out = np.tile(a["roots"], n)  # pair p = row * trees + tree
    pairs = np.flatnonzero(left[out] >= 0)
    node = out[pairs]
    base = (pairs // trees) * x.shape[1]  # offset of the pair's row in flat (x: rows x features)
    while len(pairs):
        node = np.where(flat[base + feature[node]] <= threshold[node], left[node], right[node])
        inner = left[node] >= 0
        out[pairs[~inner]] = node[~inner]
        pairs, node, base = pairs[inner], node[inner], base[inner]
    return out.reshape(n, trees)


def compiled_trees(a: dict[str, np.ndarray], n_features: int, n_classes: int) -> list | None:
    """The trees as scikit-learn `Tree` objects, whose compiled `apply` walks a tree faster than the
    arrays' own walk and reaches the same leaves (the same comparisons: a float32 input <= a float64
    threshold, NaN to the right). Built from the arrays through the state that
    scikit-learn pickles its trees with; None (the arrays' own walk serves) for arrays that are not
    one contiguous block of nodes per tree, as `_flatten_forest` makes them, or a scikit-learn whose
    trees take another state."""
    roots = np.asarray(a["roots"], dtype=np.int64)
    left, right = a["left"].astype(np.int64), a["right"].astype(np.int64)
    n = len(left)
    if len(roots) == 0 or roots[0] != 0 or (np.diff(roots) <= 0).any() or roots[-1] >= n:
        return None
    ends = np.append(roots[1:], n)
    try:
        from sklearn.tree._tree import NODE_DTYPE, Tree
    except ImportError:  # pragma: no cover - scikit-learn is a dependency
        return None
    trees = []
    for r, e in zip(roots.tolist(), ends.tolist()):
        leaf = left[r:e] < 0
        inner = ~leaf
        if (left[r:e][inner] >= e).any() or (right[r:e][inner] >= e).any():
            return None  # a child in another tree's block
        nodes = np.zeros(e - r, dtype=NODE_DTYPE)
        nodes["left_child"] = np.where(leaf, -1, left[r:e] - r)
        nodes["right_child"] = np.where(leaf, -1, right[r:e] - r)
        nodes["feature"] = np.where(leaf, -2, a["feature"][r:e])
        nodes["threshold"] = np.where(leaf, -2.0, a["threshold"][r:e])
        depth = np.zeros(e - r, dtype=np.int64)  # children come after their parent
        for i in np.flatnonzero(inner).tolist():
            depth[nodes["left_child"][i]] = depth[nodes["right_child"][i]] = depth[i] + 1
        try:
            tree = Tree(n_features, np.array([n_classes], dtype=np.intp), 1)
            tree.__setstate__(
                {
                    "max_depth": int(depth.max()),
                    "node_count": e - r,
                    "nodes": nodes,
                    "values": np.zeros((e - r, 1, n_classes), dtype=np.float64),
                }
            )
        except (TypeError, ValueError, KeyError):
            return None
        trees.append(tree)
    return trees


def _predict(a: dict[str, np.ndarray], x: np.ndarray, trees: list | None = None) -> np.ndarray:
    """The mean of the leaves' class probabilities over all trees; the leaves found by the compiled
    `trees` (compiled_trees) where given, else by walking the arrays for all rows at once."""
    if trees is None or len(x) == 0:
        leaves = _leaves(a, x)
    else:
        flat = np.ascontiguousarray(x, dtype=np.float32)
        leaves = np.stack([t.apply(flat) for t in trees], axis=1) + a["roots"].astype(np.int64)
    return a["value"][leaves].mean(axis=1).astype(np.float32)
