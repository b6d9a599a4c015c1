"""The round loop: train, publish, teach every other peer, retrain; over any Transport."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from tqdm import tqdm

from peer.peer import Peer, TeachReport
from peer.transport import Transport


@dataclass
class RunLog:
    """Everything a run measured, per peer and per round."""

    evaluations: dict[str, list[dict]] = field(default_factory=dict)  # peer -> [round 0, round 1, ...]
    teach: list[TeachReport] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=lambda: {"train": 0.0, "teach": 0.0, "retrain": 0.0,
                                                                 "evaluate": 0.0})
    train_sizes: dict[str, list[int]] = field(default_factory=dict)


def teach_round(teacher: Peer, students: Sequence[str], transport: Transport, round: int) -> list[TeachReport]:
    """One teacher's work in a round: pull each student's model, teach it, push the batches."""
    reports = []
    for sid in students:
        if sid == teacher.id:
            continue
        batches, report = teacher.teach(sid, transport.get_model(sid, round), round)
        for batch in batches:
            transport.push_examples(sid, batch)
        reports.append(report)
    return reports


def _bar(total: int, desc: str, quiet: bool, unit: str = "it") -> tqdm:
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, disable=quiet, leave=False, dynamic_ncols=True)


def train_all(peers: Sequence[Peer], epochs: int, label: str, quiet: bool, log: RunLog, round: int = 0) -> None:
    for p in peers:
        size = len(p.training_set()[1])
        with _bar(size * epochs, f"{label} {p.id}", quiet, "img") as bar:
            log.train_sizes.setdefault(p.id, []).append(p.train(epochs, progress=bar.update, round=round))


def evaluate_all(peers: Sequence[Peer], test_x: np.ndarray | dict[str, np.ndarray], test_y: np.ndarray,
                 log: RunLog) -> None:
    """Each peer on the test set; `test_x` may give each peer its own columns (peer id -> inputs)."""
    t = time.perf_counter()
    for p in peers:
        x = test_x[p.id] if isinstance(test_x, dict) else test_x
        log.evaluations.setdefault(p.id, []).append(p.evaluate(x, test_y))
    log.timings["evaluate"] += time.perf_counter() - t


def run_rounds(peers: Sequence[Peer], transport: Transport, test_x: np.ndarray | dict[str, np.ndarray],
               test_y: np.ndarray,
               rounds: int, epochs: int, retrain_epochs: int, quiet: bool = False) -> RunLog:
    """The whole in-process experiment: local training, then `rounds` of teach and retrain."""
    log = RunLog()
    ids = [p.id for p in peers]
    t = time.perf_counter()
    train_all(peers, epochs, "train", quiet, log)
    log.timings["train"] += time.perf_counter() - t
    evaluate_all(peers, test_x, test_y, log)
    for r in range(1, rounds + 1):
        t = time.perf_counter()
        with _bar(len(peers) * (len(peers) - 1), f"round {r}/{rounds} teach", quiet, "pair") as bar:
            for p in peers:
                p.snapshot(r)
            for p in peers:
                for report in teach_round(p, ids, transport, r):
                    log.teach.append(report)
                    bar.update(1)
                    bar.set_postfix(sent=sum(x.sent for x in log.teach if x.round == r))
        log.timings["teach"] += time.perf_counter() - t
        t = time.perf_counter()
        train_all(peers, retrain_epochs, f"round {r}/{rounds} retrain", quiet, log, round=r)
        log.timings["retrain"] += time.perf_counter() - t
        evaluate_all(peers, test_x, test_y, log)
    return log
