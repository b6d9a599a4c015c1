"""Split a labelled set among peers: miss-class, keep-fraction, Dirichlet label skew; all seeded."""

from __future__ import annotations

import numpy as np

from peer.errors import UsageError

SPLITS = ("miss-class", "keep-fraction", "dirichlet", "iid")


def _shuffled_parts(n_items: int, n_peers: int, seed: int) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(n_items)
    return np.array_split(order, n_peers)


def _check(labels: np.ndarray, n_peers: int, n_classes: int) -> None:
    if n_peers < 2:
        raise UsageError(f"need at least 2 peers, got {n_peers}")
    if n_peers > len(labels):
        raise UsageError(f"cannot split {len(labels)} examples among {n_peers} peers")


def iid(labels: np.ndarray, n_peers: int, seed: int) -> list[np.ndarray]:
    """Shuffle (seed) into n disjoint, equal parts."""
    _check(labels, n_peers, int(labels.max()) + 1)
    return [np.sort(p) for p in _shuffled_parts(len(labels), n_peers, seed)]


def keep_fraction(labels: np.ndarray, n_peers: int, n_classes: int, fraction: float, seed: int) -> list[np.ndarray]:
    """Shuffle into n disjoint parts; peer k keeps only `fraction` of its examples of class k."""
    _check(labels, n_peers, n_classes)
    if n_peers > n_classes:
        raise UsageError(f"this split gives each peer its own weak class: {n_peers} peers but only {n_classes} classes")
    if not 0.0 <= fraction <= 1.0:
        raise UsageError(f"keep fraction must be in [0, 1], got {fraction}")
    rng = np.random.default_rng([seed, 1])
    parts = []
    for k, part in enumerate(_shuffled_parts(len(labels), n_peers, seed)):
        weak = part[labels[part] == k]
        kept = rng.permutation(weak)[: int(round(fraction * len(weak)))]
        parts.append(np.sort(np.concatenate([part[labels[part] != k], kept])))
    return parts


def miss_class(labels: np.ndarray, n_peers: int, n_classes: int, seed: int) -> list[np.ndarray]:
    """fmnist-10's split: shuffle (seed) into n disjoint parts; peer k never sees class k."""
    return keep_fraction(labels, n_peers, n_classes, 0.0, seed)


def dirichlet(
    labels: np.ndarray, n_peers: int, n_classes: int, beta: float, seed: int, min_size: int = 10
) -> list[np.ndarray]:
    """Label skew: each class is divided among peers in Dirichlet(beta) proportions."""
    _check(labels, n_peers, n_classes)
    if beta <= 0:
        raise UsageError(f"Dirichlet beta must be > 0, got {beta}")
    if len(labels) < n_peers * min_size:
        raise UsageError(f"cannot give {n_peers} peers {min_size} examples each from {len(labels)}")
    rng = np.random.default_rng(seed)
    for _ in range(100):
        parts: list[list[np.ndarray]] = [[] for _ in range(n_peers)]
        for c in range(n_classes):
            idx = rng.permutation(np.flatnonzero(labels == c))
            cuts = (np.cumsum(rng.dirichlet(np.full(n_peers, beta))) * len(idx)).astype(int)[:-1]
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].append(chunk)
        result = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in result) >= min_size:
            return result
    raise UsageError(f"Dirichlet beta={beta} leaves some peer with under {min_size} examples; raise beta")


def split(
    name: str, labels: np.ndarray, n_peers: int, n_classes: int, seed: int, fraction: float = 0.1, beta: float = 0.5
) -> list[np.ndarray]:
    """Dispatch by split name; returns one sorted index array per peer."""
    if name == "miss-class":
        return miss_class(labels, n_peers, n_classes, seed)
    if name == "keep-fraction":
        return keep_fraction(labels, n_peers, n_classes, fraction, seed)
    if name == "dirichlet":
        return dirichlet(labels, n_peers, n_classes, beta, seed)
    if name == "iid":
        return iid(labels, n_peers, seed)
    raise UsageError(f"unknown split {name!r}; choose from {', '.join(SPLITS)}")
