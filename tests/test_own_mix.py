"""A student's own mixes (--own-mix k): means of k of its own rows of a class, trained on beside
what it received, so that a mix release's blur is seen in the classes it holds too."""

import argparse

import numpy as np
import pytest

from peer.config import ExperimentConfig, add_experiment_options, from_args, from_run_config
from peer.core.augment import class_mixes
from peer.core.blob import ExampleBatch
from peer.core.peer import Peer, TeachConfig
from peer.errors import UsageError
from peer.learners import TrainConfig, make_learner

CLASSES = ("a", "b", "c")


def test_each_mix_is_the_mean_of_its_row_and_k_minus_1_others_of_the_same_class():
    y = np.array([0, 1, 0, 1, 0, 2, 1, 0])  # class 2 has a single row: no mix of it
    x = np.eye(len(y), dtype=np.float32)  # row i is the i-th basis vector: a mix * k counts its members
    mixes, labels = class_mixes(x, y, 3, np.random.default_rng(0))
    assert len(mixes) == len(labels) == 7 and 2 not in labels
    counts = np.rint(mixes * 3).astype(int)
    np.testing.assert_allclose(counts, mixes * 3, atol=1e-5)  # whole members, nothing else
    assert (counts.sum(axis=1) == 3).all()
    for c in (0, 1):
        rows = np.flatnonzero(y == c)
        got = counts[labels == c]
        assert got[:, ~np.isin(np.arange(len(y)), rows)].sum() == 0  # members all of class c
        assert (got[np.arange(len(rows)), rows] >= 1).all()  # one mix per row, holding that row


def test_cross_members_come_from_the_other_classes_and_the_row_keeps_its_label():
    y = np.array([0, 1, 0, 1, 0, 2, 1, 0, 2, 2])
    x = np.eye(len(y), dtype=np.float32)
    for k, cross, expect in ((4, 1, 1), (5, 2, 2), (4, 3, 1), (2, 1, 0)):  # at most (k - 1) // 2 of them
        mixes, labels = class_mixes(x, y, k, np.random.default_rng(0), cross=cross)
        counts = np.rint(mixes * k).astype(int)
        assert len(labels) == len(y) and (counts.sum(axis=1) == k).all()
        for c in (0, 1, 2):
            rows = np.flatnonzero(y == c)
            got = counts[labels == c]
            assert (got[np.arange(len(rows)), rows] >= 1).all()  # each mix holds its own row
            foreign = got[:, y != c].sum(axis=1)
            assert (foreign == expect).all()  # exactly that many of another class, the rest of c
    # with one class alone there is no other class to draw from: the mixes are of that class
    one = np.zeros(5, dtype=np.int64)
    mixes, labels = class_mixes(np.eye(5, dtype=np.float32), one, 4, np.random.default_rng(0), cross=1)
    assert len(labels) == 5 and (np.rint(mixes * 4).sum(axis=1) == 4).all()
    with pytest.raises(ValueError, match="cross"):
        class_mixes(x, y, 4, np.random.default_rng(0), cross=-1)


def test_no_mixes_below_two_members_or_without_rows():
    x = np.random.default_rng(1).random((6, 2, 2), dtype=np.float32)
    y = np.array([0, 0, 1, 1, 2, 2])
    for k in (0, 1):
        assert class_mixes(x, y, k, np.random.default_rng(0))[0].shape == (0, 2, 2)
    assert class_mixes(x[:0], y[:0], 4, np.random.default_rng(0))[0].shape == (0, 2, 2)
    mixes, labels = class_mixes(x, y, 4, np.random.default_rng(0))
    assert mixes.shape == (6, 2, 2) and mixes.dtype == np.float32 and sorted(labels) == [0, 0, 1, 1, 2, 2]


def _student(own_mix, own_mix_cross=0):
    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 20)  # holds a and b, lacks c
    x = rng.random((40, 4, 4), dtype=np.float32)
    learner = make_learner("mlp", (4, 4), CLASSES, TrainConfig(epochs=1, seed=0))
    return Peer("me", x, y, CLASSES, learner, TeachConfig(), own_mix=own_mix, own_mix_cross=own_mix_cross)


def _received():
    x = np.arange(4 * 16, dtype=np.uint8).reshape(4, 4, 4)
    return ExampleBatch("t", "me", 1, 0, x, np.array([2, 2, 2, 1]), CLASSES, np.ones(4, np.float32))


def test_a_student_adds_its_own_mixes_only_beside_received_examples_with_their_labels():
    p = _student(4)
    x0, y0, _ = p.fit_set(round=1)
    assert len(y0) == len(p.y)  # nothing received: its own rows alone, no mixes
    p.absorb(_received())
    x, y, targets = p.fit_set(round=1)
    assert len(x) == len(y) == len(targets) == 2 * len(p.y) + 4  # a mix per own row (the slice left out)
    mixes, labels = x[len(p.y) : len(p.y) + len(p.y)], y[len(p.y) : 2 * len(p.y)]
    np.testing.assert_array_equal(np.sort(labels), np.sort(p.y))
    np.testing.assert_array_equal(targets[len(p.y) : 2 * len(p.y)], np.eye(3, dtype=np.float32)[labels])
    # each mix lies inside its class's rows' range, and is drawn from (seed, round) alone
    for c in (0, 1):
        own = p.x[p.y == c]
        assert (mixes[labels == c] >= own.min(axis=0) - 1e-6).all()
        assert (mixes[labels == c] <= own.max(axis=0) + 1e-6).all()
    np.testing.assert_array_equal(p.fit_set(round=1)[0], x)
    assert not np.array_equal(p.fit_set(round=2)[0], x)
    other = _student(0)
    other.absorb(_received())
    assert len(other.fit_set(round=1)[1]) == len(other.y) + 4


def test_own_mix_is_an_option_everywhere_and_1_is_refused(monkeypatch):
    assert ExperimentConfig().own_mix == 4  # the guarded release's default, as its mixes
    assert from_run_config({"privacy": "paper", "own-mix": 4}).own_mix == 0  # the paper's students: none
    assert from_run_config({"privacy": "paper", "own-mix": 3}).own_mix == 3  # unless given
    with pytest.raises(UsageError, match="own-mix"):
        ExperimentConfig(own_mix=1)
    with pytest.raises(UsageError, match="own mix"):
        _student(1)
    monkeypatch.setenv("CKD_OWN_MIX", "3")
    parser = argparse.ArgumentParser()
    add_experiment_options(parser)
    assert from_args(parser.parse_args([]))["own_mix"] == 3
    assert from_args(parser.parse_args(["--own-mix", "5"]))["own_mix"] == 5
    assert from_run_config({"own-mix": 2}).own_mix == 2


def test_own_mix_cross_is_an_option_everywhere_and_reaches_the_student(monkeypatch):
    assert ExperimentConfig().own_mix_cross == 1  # the guarded release's default, as its mix starts
    assert from_run_config({"privacy": "paper"}).own_mix_cross == 0
    # a run config carries every default, so only a value other than the default counts as given
    assert from_run_config({"privacy": "paper", "own-mix-cross": 1}).own_mix_cross == 0
    assert from_run_config({"privacy": "paper", "own-mix-cross": 2}).own_mix_cross == 2
    with pytest.raises(UsageError, match="own-mix-cross"):
        ExperimentConfig(own_mix_cross=-1)
    with pytest.raises(UsageError, match="own mix cross"):
        _student(4, -1)
    monkeypatch.setenv("CKD_OWN_MIX_CROSS", "0")
    parser = argparse.ArgumentParser()
    add_experiment_options(parser)
    assert from_args(parser.parse_args([]))["own_mix_cross"] == 0
    assert from_args(parser.parse_args(["--own-mix-cross", "1"]))["own_mix_cross"] == 1
    # a student's mixes take a member of its other class: no longer inside one class's range
    p, q = _student(4, 1), _student(4, 0)
    for s in (p, q):
        s.absorb(_received())
    n = len(p.y)
    mixed = p.fit_set(round=1)[0][n : 2 * n]
    pure = q.fit_set(round=1)[0][n : 2 * n]
    assert mixed.shape == pure.shape and not np.array_equal(mixed, pure)


def test_the_experiment_builds_its_peers_with_the_configured_own_mixes(fmnist):
    from peer.experiment import build_peers

    cfg = ExperimentConfig(peers=3, train_per_peer=60, own_mix=3, own_mix_cross=1)
    peers = build_peers(cfg, fmnist[0])
    assert [(p.own_mix, p.own_mix_cross) for p in peers] == [(3, 1)] * 3
    paper = build_peers(from_run_config({"privacy": "paper", "peers": 3, "train-per-peer": 60}), fmnist[0])
    assert [(p.own_mix, p.own_mix_cross) for p in paper] == [(0, 0)] * 3
