"""Baselines on the same split as a CKD run: each peer alone, all data pooled, and FedAvg."""

from __future__ import annotations

import numpy as np
import torch

from peer.config import ExperimentConfig
from peer.data.fashion import Dataset
from peer.experiment import as_float, partition
from peer.inprocess import each
from peer.learners import TrainConfig, make_learner


def _accuracy(learner, test: Dataset) -> float:
    return float((learner.predict(as_float(test.x)) == test.y).mean())


def _per_class(learner, test: Dataset) -> list[float]:
    pred = learner.predict(as_float(test.x))
    return [round(float((pred[test.y == c] == c).mean()), 4) for c in range(len(test.classes))]


def local_only(cfg: ExperimentConfig, train: Dataset, test: Dataset, rounds: int | None = None) -> list[float]:
    """Each peer trains on its own part alone, for as many epochs as it trains in a CKD run of
    `rounds` rounds (default: the most the config runs; with --rounds auto give the rounds run)."""
    epochs = cfg.epochs + (cfg.round_limit() if rounds is None else rounds) * cfg.retrain_epochs
    accs = []
    for k, (kind, part) in enumerate(zip(cfg.learner_list(), partition(cfg, train))):
        learner = make_learner(kind, train.x.shape[1:], train.classes, cfg.train(k))
        learner.fit(as_float(train.x[part]), train.y[part], epochs=epochs)
        accs.append(_accuracy(learner, test))
    return accs


def pooled(
    cfg: ExperimentConfig, train: Dataset, test: Dataset, kind: str = "cnn", epochs: int = 5
) -> tuple[float, list[float]]:
    """One model on all peers' data together: the ceiling that pooling (which CKD avoids) would give.

    Returns its accuracy and its accuracy on each class (the ceiling for each peer's missing class).
    """
    idx = np.concatenate(partition(cfg, train))
    learner = make_learner(
        kind,
        train.x.shape[1:],
        train.classes,
        TrainConfig(epochs=epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed, device=cfg.device),
    )
    learner.fit(as_float(train.x[idx]), train.y[idx])
    return _accuracy(learner, test), _per_class(learner, test)


def fedavg(
    cfg: ExperimentConfig,
    train: Dataset,
    test: Dataset,
    kind: str = "cnn",
    rounds: int = 10,
    local_epochs: int = 1,
    workers: int = 1,
) -> list[float]:
    """FedAvg: each round every peer trains the global model one epoch; weights averaged by data size.
    `workers` clients train at once (threads), as ckd's in-process runtime works on its peers; the
    average is summed in client order either way, so the result does not depend on it.

    Returns the global model's test accuracy after each round (the last is FedAvg's result).
    """
    parts = partition(cfg, train)
    shape, classes = train.x.shape[1:], train.classes
    global_model = make_learner(kind, shape, classes, cfg.train(0))
    sizes = np.array([len(p) for p in parts], dtype=np.float64)
    weights = sizes / sizes.sum()
    clients = [make_learner(kind, shape, classes, cfg.train(k)) for k in range(len(parts))]
    local = [(as_float(train.x[part]), train.y[part]) for part in parts]  # each client's data, once
    curve = []
    for _ in range(rounds):
        state = global_model.module.state_dict()
        avg = {k: torch.zeros_like(v) for k, v in state.items()}
        for client in clients:
            client.module.load_state_dict(state)
        each(range(len(clients)), lambda k: clients[k].fit(*local[k], epochs=local_epochs), workers)
        for client, w in zip(clients, weights):
            for k, v in client.module.state_dict().items():
                avg[k] += w * v
        global_model.module.load_state_dict(avg)
        curve.append(_accuracy(global_model, test))
    return curve


def model_bytes(cfg: ExperimentConfig, train: Dataset, kind: str = "cnn") -> int:
    """Bytes of the arrays of one float32 model of `kind`, as a FedAvg round moves it."""
    learner = make_learner(kind, train.x.shape[1:], train.classes, cfg.train(0))
    return sum(a.nbytes for a in learner.to_blob().arrays.values())
