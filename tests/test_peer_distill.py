"""Learning back from pulled models (--peer-distill W): a teacher keeps what each student's model
said of its own rows while teaching it, and its retrain trains those rows toward the beliefs of
the models that got them right."""

import argparse

import numpy as np
import pytest

from peer.config import ExperimentConfig, add_experiment_options, from_args, from_run_config
from peer.core.blob import ExampleBatch
from peer.core.consult import distill_targets, qualified_beliefs
from peer.core.peer import Peer, TeachConfig
from peer.errors import UsageError
from peer.learners import TrainConfig, make_learner

CLASSES = ("a", "b", "c")


def test_beliefs_average_only_the_models_right_on_a_row():
    y = np.array([0, 1, 2])
    right_on_0_and_1 = np.array([[0.6, 0.1, 0.3], [0.2, 0.7, 0.1], [0.5, 0.4, 0.1]], np.float32)
    right_on_0 = np.array([[0.8, 0.0, 0.2], [0.9, 0.05, 0.05], [0.1, 0.8, 0.1]], np.float32)
    beliefs, has = qualified_beliefs([right_on_0_and_1, right_on_0], y, 3)
    assert has.tolist() == [True, True, False]  # no model gets row 2 right
    np.testing.assert_allclose(beliefs[0], [0.7, 0.05, 0.25], atol=1e-6)  # both models, averaged
    np.testing.assert_allclose(beliefs[1], [0.2, 0.7, 0.1], atol=1e-6)  # the one right on it alone
    none, nobody = qualified_beliefs([], y, 3)
    assert not nobody.any() and not none.any()
    with pytest.raises(ValueError, match="shape"):
        qualified_beliefs([right_on_0[:2]], y, 3)


def test_targets_move_the_beliefs_mass_on_lacking_classes_where_a_model_was_right():
    y = np.array([0, 1, 2])
    beliefs = np.array([[0.7, 0.05, 0.25], [0.2, 0.7, 0.1], [0, 0, 0]], np.float32)
    has = np.array([True, True, False])
    lacking = np.array([False, False, True])  # my data holds a and b, lacks c
    t = distill_targets(y, 3, beliefs, has, 1.0, lacking)
    np.testing.assert_allclose(t[0], [0.75, 0, 0.25], atol=1e-6)  # held classes keep the label
    np.testing.assert_allclose(t[1], [0, 0.9, 0.1], atol=1e-6)
    np.testing.assert_allclose(t[2], [0, 0, 1])  # no qualified model: its label
    np.testing.assert_allclose(t.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(distill_targets(y, 3, beliefs, has, 0.5, lacking)[0], [0.875, 0, 0.125], atol=1e-6)
    eye = np.eye(3, dtype=np.float32)
    np.testing.assert_array_equal(distill_targets(y, 3, beliefs, has, 0.0, lacking), eye)
    np.testing.assert_array_equal(distill_targets(y, 3, beliefs, has, 1.0, np.zeros(3, bool)), eye)  # lacks none
    with pytest.raises(ValueError, match="weight"):
        distill_targets(y, 3, beliefs, has, 1.5, lacking)


def _peer(peer_id, y, distill, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((len(y), 4, 4), dtype=np.float32)
    learner = make_learner("mlp", (4, 4), CLASSES, TrainConfig(epochs=1, seed=seed))
    return Peer(peer_id, x, y, CLASSES, learner, TeachConfig(), seed=seed, peer_distill=distill)


def test_a_teacher_keeps_what_its_students_models_said_and_its_retrain_distills_from_it():
    teacher = _peer("t", np.array([0, 1] * 20), 0.5)
    student = _peer("s", np.array([1, 2] * 20), 0.0, seed=1)
    for p in (teacher, student):
        p.train(round=0)
    blob = student.snapshot(1)
    teacher.teach("s", blob, 1)
    said = teacher.consulted[1]["s"]
    assert set(teacher.consulted) == {1} and said.shape == (len(teacher.y), 3)
    from peer.learners import learner_from_blob

    np.testing.assert_allclose(said, learner_from_blob(blob, "cpu").predict_proba(teacher.x), atol=1e-6)
    # nothing received: the labels alone, as before
    assert teacher.fit_set(round=1)[2] is None
    images = np.zeros((2, 4, 4), np.uint8)
    teacher.absorb(ExampleBatch("s", "t", 1, 0, images, np.array([2, 2]), CLASSES, np.ones(2, np.float32)))
    x, y, targets = teacher.fit_set(round=1)
    own = targets[: len(teacher.y)]
    right = said.argmax(axis=1) == teacher.y
    assert right.any() and not right.all()  # both kinds of row below
    moved = 0.5 * said[:, 2:]  # the teacher lacks c
    expect = np.eye(3, dtype=np.float32)[teacher.y] * (1 - moved)
    expect[:, 2:] += moved
    np.testing.assert_allclose(own[right], expect[right], atol=1e-5)
    np.testing.assert_array_equal(own[~right], np.eye(3, dtype=np.float32)[teacher.y[~right]])
    assert teacher.distilled_rows(1) == int(right.sum())
    assert teacher.distilled_rows(2) == 0  # nothing pulled for that round
    # a later round forgets the earlier one's
    teacher.teach("s", student.snapshot(2), 2)
    assert set(teacher.consulted) == {2}
    # off: nothing kept, labels alone
    plain = _peer("t", np.array([0, 1] * 20), 0.0)
    plain.train(round=0)
    plain.teach("s", blob, 1)
    assert plain.consulted == {}
    # nor with labels alone (--soft-labels off): own rows train toward their labels
    rng = np.random.default_rng(0)
    mlp = make_learner("mlp", (4, 4), CLASSES, TrainConfig(epochs=1, seed=0))
    y = np.array([0, 1] * 20)
    labels = Peer("t", rng.random((40, 4, 4), dtype=np.float32), y, CLASSES, mlp, soft_labels="off", peer_distill=1.0)
    labels.train(round=0)
    labels.teach("s", blob, 1)
    assert labels.consulted == {} and labels.distilled_rows(1) == 0
    with pytest.raises(UsageError, match="peer distill"):
        _peer("x", np.array([0, 1]), 1.5)


def test_peer_distill_is_an_option_everywhere(monkeypatch, fmnist):
    from peer.experiment import build_peers

    assert ExperimentConfig().peer_distill == 1.0  # the guarded release's default
    assert from_run_config({"privacy": "paper"}).peer_distill == 0.0  # the paper's students: examples alone
    assert from_run_config({"privacy": "paper", "peer-distill": 0.3}).peer_distill == 0.3
    with pytest.raises(UsageError, match="peer-distill"):
        ExperimentConfig(peer_distill=-0.1)
    monkeypatch.setenv("CKD_PEER_DISTILL", "0.25")
    parser = argparse.ArgumentParser()
    add_experiment_options(parser)
    assert from_args(parser.parse_args([]))["peer_distill"] == 0.25
    assert from_args(parser.parse_args(["--peer-distill", "0.75"]))["peer_distill"] == 0.75
    peers = build_peers(ExperimentConfig(peers=3, train_per_peer=60, peer_distill=0.25), fmnist[0])
    assert [p.peer_distill for p in peers] == [0.25] * 3
