"""The in-process runtime: every peer in this process, rounds in lockstep, calls straight to the peers."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TypeVar

import numpy as np
from tqdm import tqdm

from peer.config import ExperimentConfig
from peer.core.blob import ExampleBatch, ModelBlob
from peer.core.peer import Peer
from peer.data.fashion import Dataset
from peer.experiment import Experiment, build_peers, evaluation_inputs, limit_test, load_data
from peer.round import (
    PeerRound,
    RunLog,
    Transport,
    UnknownPeer,
    improved_in,
    stop_after,
    teach_students,
    train_step,
)


class InProcessTransport(Transport):
    """All peers in this process: a model pull is the peer's snapshot, a push is its absorb."""

    def __init__(self, peers: dict[str, Peer]) -> None:
        self.peers = peers

    def _peer(self, peer_id: str) -> Peer:
        if peer_id not in self.peers:
            raise UnknownPeer(f"unknown peer {peer_id!r}; known: {', '.join(sorted(self.peers))}")
        return self.peers[peer_id]

    def get_model(self, peer_id: str, round: int) -> ModelBlob:
        return self._peer(peer_id).snapshot(round)

    def push_examples(self, peer_id: str, batch: ExampleBatch) -> bool:
        return self._peer(peer_id).absorb(batch)


T = TypeVar("T")
U = TypeVar("U")


def each(items: Sequence[U], work: Callable[[U], T], workers: int) -> list[T]:
    """work(item) for every item, in order; `workers` > 1 of them at once, each in a thread.
    For peers: one peer's work touches no other peer's state but through the transport (a
    published snapshot, read only, and absorb, which stores under the student's lock), and each
    peer's random draws are its own, so the results are those of one at a time, peer for peer."""
    if workers <= 1 or len(items) <= 1:
        return [work(item) for item in items]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ckd-peer") as pool:
        return list(pool.map(work, items))


def _ticks(bar: tqdm) -> Callable[[object], None]:
    return lambda _: bar.update(1)


def _bar(total: int, desc: str, quiet: bool, unit: str = "it") -> tqdm:
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, disable=quiet, leave=False, dynamic_ncols=True)


def _test_x(test_x: np.ndarray | dict[str, np.ndarray], peer: Peer) -> np.ndarray:
    return test_x[peer.id] if isinstance(test_x, dict) else test_x


def _train_all(
    peers: Sequence[Peer],
    round: int,
    epochs: int,
    test_x,
    test_y: np.ndarray,
    label: str,
    quiet: bool,
    workers: int = 1,
) -> list[PeerRound]:
    def train(p: Peer) -> PeerRound:
        with _bar(len(p.fit_set(round=round)[1]) * epochs, f"{label} {p.id}", quiet, "img") as bar:
            return train_step(p, round, epochs, _test_x(test_x, p), test_y, progress=bar.update)

    return each(peers, train, workers)


def run_rounds(
    peers: Sequence[Peer],
    transport: Transport,
    test_x: np.ndarray | dict[str, np.ndarray],
    test_y: np.ndarray,
    rounds: int | str,
    epochs: int,
    retrain_epochs: int,
    quiet: bool = False,
    fanout: int = 0,
    max_rounds: int = 10,
    workers: int = 1,
) -> RunLog:
    """The whole experiment in this process: round 0 (local training), then rounds until
    peer.round.stop_after says stop (`rounds` of them, or with "auto" until one in which no peer
    improved, at most `max_rounds`), all peers stepping together (every peer publishes, then every
    peer teaches, then all retrain).

    `test_x` may give each peer its own columns (peer id -> inputs). `fanout` K > 0: each student
    is taught by its K most useful teachers only (peer.core.fanout). `workers`: peers that train,
    and teachers that teach, at once (threads of this process); the results do not depend on it.
    """
    ids = [p.id for p in peers]
    records = _train_all(peers, 0, epochs, test_x, test_y, "train", quiet, workers)
    limit = max_rounds if rounds == "auto" else rounds
    r = 0
    while (stopped := stop_after(r, improved_in(records, r), rounds, max_rounds)) is None:
        r += 1
        for p in peers:
            p.snapshot(r)  # publish
        per_student = len(peers) - 1 if fanout <= 0 else min(fanout, len(peers) - 1)
        with _bar(len(peers) * per_student, f"round {r}/{limit} teach", quiet, "pair") as bar:
            teach = partial(
                teach_students, round=r, students=ids, transport=transport, on_report=_ticks(bar), fanout=fanout
            )
            taught = dict(zip(ids, each(peers, teach, workers)))
        retrained = _train_all(peers, r, retrain_epochs, test_x, test_y, f"round {r}/{limit} retrain", quiet, workers)
        records += [rec.merge(taught[rec.peer]) for rec in retrained]
    log = RunLog.from_records(records, ids)
    log.stopped = stopped
    return log


def run_experiment(
    cfg: ExperimentConfig,
    quiet: bool = False,
    data: tuple[Dataset, Dataset] | None = None,
    transport: Callable[[list[Peer]], Transport] | None = None,
    workers: int = 1,
) -> Experiment:
    """The whole experiment in this process. `transport`: peers -> Transport (default: calls
    straight to the peers); closed after the run if it can be. `workers`: peers worked on at once."""
    train, test = data or load_data(cfg)
    test = limit_test(cfg, test)
    peers = build_peers(cfg, train)
    missing = {p.id: p.missing_classes() for p in peers}
    moves = transport(peers) if transport else InProcessTransport({p.id: p for p in peers})
    start = time.perf_counter()
    try:
        log = run_rounds(
            peers,
            moves,
            evaluation_inputs(peers, test),
            test.y,
            cfg.rounds,
            cfg.epochs,
            cfg.retrain_epochs,
            quiet=quiet,
            fanout=cfg.fanout,
            max_rounds=cfg.max_rounds,
            workers=workers,
        )
    finally:
        getattr(moves, "close", lambda: None)()
    return Experiment(
        cfg,
        cfg.learner_list(),
        missing,
        log,
        time.perf_counter() - start,
        train.classes,
        test.y,
        {p.id: p.features for p in peers},
    )
