"""Learners: one interface (fit, predict_proba, to_blob, from_blob) over torch and scikit-learn."""

from peer.learners import forest, neural  # noqa: F401  (registers the learner kinds)
from peer.learners.base import Learner, TrainConfig, learner_from_blob, learner_kinds, make_learner

__all__ = ["Learner", "TrainConfig", "learner_from_blob", "learner_kinds", "make_learner"]
