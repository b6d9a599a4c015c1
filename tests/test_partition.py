"""Partitioners: disjoint, complete, seeded, and shaped as they promise."""

import numpy as np
import pytest

from peer.data.partition import dirichlet, iid, keep_fraction, miss_class, split
from peer.errors import UsageError

LABELS = np.repeat(np.arange(10), 100)


def _disjoint_and_complete(parts, n):
    allidx = np.concatenate(parts)
    assert len(allidx) == len(set(allidx.tolist()))
    return set(allidx.tolist()) <= set(range(n))


def test_miss_class_peer_k_never_sees_class_k():
    parts = miss_class(LABELS, 10, 10, seed=0)
    assert _disjoint_and_complete(parts, len(LABELS))
    for k, part in enumerate(parts):
        assert k not in set(LABELS[part])
        assert set(LABELS[part]) == set(range(10)) - {k}
    # peer k drops its share of class k and keeps everything else of its iid part
    for k, (part, whole) in enumerate(zip(parts, iid(LABELS, 10, seed=0))):
        assert np.array_equal(part, whole[LABELS[whole] != k])


def test_split_is_seeded():
    a = miss_class(LABELS, 5, 10, seed=3)
    b = miss_class(LABELS, 5, 10, seed=3)
    c = miss_class(LABELS, 5, 10, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_keep_fraction_keeps_that_share_of_the_weak_class():
    full = iid(LABELS, 4, seed=1)
    parts = keep_fraction(LABELS, 4, 10, 0.3, seed=1)
    for k, (p, f) in enumerate(zip(parts, full)):
        assert (LABELS[p] == k).sum() == round(0.3 * (LABELS[f] == k).sum())
        assert ((LABELS[p] != k).sum()) == (LABELS[f] != k).sum()


def test_dirichlet_is_skewed_disjoint_and_seeded():
    parts = dirichlet(LABELS, 5, 10, beta=0.1, seed=0)
    assert _disjoint_and_complete(parts, len(LABELS))
    assert sum(len(p) for p in parts) == len(LABELS)
    shares = np.array([np.bincount(LABELS[p], minlength=10) for p in parts]) / 100
    assert shares.max() > 0.6  # strong skew at small beta
    again = dirichlet(LABELS, 5, 10, beta=0.1, seed=0)
    assert all(np.array_equal(x, y) for x, y in zip(parts, again))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: miss_class(LABELS, 11, 10, 0), "11 peers but only 10 classes"),
        (lambda: miss_class(LABELS, 1, 10, 0), "at least 2 peers"),
        (lambda: keep_fraction(LABELS, 3, 10, 1.5, 0), "keep fraction"),
        (lambda: dirichlet(LABELS, 3, 10, 0.0, 0), "beta must be > 0"),
        (lambda: split("stripes", LABELS, 3, 10, 0), "unknown split"),
    ],
)
def test_impossible_splits_are_refused(call, message):
    with pytest.raises(UsageError, match=message):
        call()
