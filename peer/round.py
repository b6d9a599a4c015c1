"""One round for one peer, written once: train, publish, teach each student given, absorb, retrain,
evaluate, report.

The three runtimes (in-process, gRPC peers, Flower) call these steps and supply only how peers
meet (who takes part in a round), how bytes move (a `Transport`: get a model, push a batch) and
where the resulting `PeerRound` records go. Nothing of the algorithm lives in a runtime.

A round r >= 1 for peer i:
    publish f_i(r)                          Peer.snapshot(r)
    teach every student j it is given       teach_students: pull f_j(r), Peer.teach, push batches
    absorb what its teachers pushed         Peer.absorb (the runtime's inbound side)
    retrain (gated) and evaluate            train_step(round=r): Peer.train keeps what arrived only
                                            where its validation slice loses nothing beyond noise
    report                                  the PeerRound record (to_dict / from_dict)
Round 0 is train_step(round=0) alone: local training on private data, then evaluation.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from peer.core.blob import ExampleBatch, InvalidPayload, ModelBlob
from peer.core.fanout import Profile, profile_of, students_of
from peer.core.gate import GateReport
from peer.core.peer import Peer, TeachReport


class Transport(ABC):
    """How bytes move between peers: pull a peer's published model; push examples to a peer."""

    @abstractmethod
    def get_model(self, peer_id: str, round: int) -> ModelBlob:
        """The model `peer_id` published for `round`."""

    @abstractmethod
    def push_examples(self, peer_id: str, batch: ExampleBatch) -> bool:
        """Deliver a batch; True if stored, False if that batch id was already stored."""

    def get_spec(self, peer_id: str, round: int) -> dict[str, Any]:
        """The spec of the model `peer_id` published for `round` (its profile included), without
        its weights where the transport can send less than the whole model."""
        return self.get_model(peer_id, round).spec


class PeerUnreachable(RuntimeError):
    """A peer did not answer (down, slow, or refused the call); worth retrying until the deadline."""


class UnknownPeer(LookupError):
    """A peer id this runtime has no address for; not retried."""


@dataclass
class PeerRound:
    """What one peer did in one round: the record every runtime reports, one schema for all.

    Timings are this peer's own seconds in each step; a run adds them up over peers.
    `errors` are the students this peer could not teach (with why); `skipped` the peers a
    barrier left out of the round because they did not arrive before its deadline; `gate` what
    this peer's validation gate decided about the examples it received (GateReport.to_dict).
    """

    peer: str
    round: int
    train_size: int = 0
    train_seconds: float = 0.0
    evaluation: dict[str, Any] = field(default_factory=dict)  # accuracy, per_class
    evaluate_seconds: float = 0.0
    teach: list[TeachReport] = field(default_factory=list)
    teach_seconds: float = 0.0
    errors: list[dict[str, Any]] = field(default_factory=list)  # {teacher, student, round, error}
    skipped: list[str] = field(default_factory=list)
    gate: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["teach"] = [r.to_dict() for r in self.teach]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PeerRound:
        """The record back from to_dict (as another process sent it): every field converted to its
        type, so a malformed record raises ValueError, TypeError or KeyError here, not later."""
        record = cls(str(data["peer"]), int(data["round"]))
        record.train_size = int(data.get("train_size", 0))
        for name in ("train_seconds", "evaluate_seconds", "teach_seconds"):
            setattr(record, name, float(data.get(name, 0.0)))
        evaluation = dict(data.get("evaluation") or {})
        if evaluation:
            record.evaluation = {
                **evaluation,
                "accuracy": float(evaluation["accuracy"]),
                "per_class": [None if v is None else float(v) for v in evaluation["per_class"]],
            }
        record.errors = [{**dict(e), "error": str(e["error"])} for e in data.get("errors", [])]
        record.skipped = [str(p) for p in data.get("skipped", [])]
        record.teach = [TeachReport.from_dict(t) for t in data.get("teach", [])]
        record.gate = GateReport.from_dict(data["gate"]).to_dict() if data.get("gate") else {}
        return record

    def merge(self, other: PeerRound) -> PeerRound:
        """One record from two halves of the same round (e.g. Flower's teach and retrain phases)."""
        if (other.peer, other.round) != (self.peer, self.round):
            raise ValueError(f"cannot merge {other.peer} round {other.round} into {self.peer} round {self.round}")
        for name in ("train_size", "train_seconds", "evaluation", "evaluate_seconds", "teach_seconds", "gate"):
            if getattr(other, name):
                setattr(self, name, getattr(other, name))
        self.teach += other.teach
        self.errors += other.errors
        self.skipped = sorted(set(self.skipped) | set(other.skipped))
        return self


def train_step(
    peer: Peer,
    round: int,
    epochs: int,
    test_x: np.ndarray,
    test_y: np.ndarray,
    progress: Callable[[int], None] | None = None,
) -> PeerRound:
    """Train on private data plus everything received (round 0: private data alone), then evaluate."""
    record = PeerRound(peer.id, round)
    t = time.perf_counter()
    record.train_size = peer.train(epochs, progress=progress, round=round)
    record.train_seconds = time.perf_counter() - t
    gate = peer.gates.get(round)
    record.gate = gate.to_dict() if gate is not None else {}
    t = time.perf_counter()
    record.evaluation = peer.evaluate(test_x, test_y)
    record.evaluate_seconds = time.perf_counter() - t
    return record


def teach_one(peer: Peer, student: str, round: int, transport: Transport) -> TeachReport:
    """Pull the student's model of this round, teach it, push the batches.

    Peers on their own data may name different classes: examples of a class the student's model
    does not predict are not sent (it could not learn them and would refuse the batch)."""
    blob = transport.get_model(student, round)
    batches, report = peer.teach(student, blob, round)
    for batch in batches:
        kept = known_classes_only(batch, blob.classes)
        report.sent -= kept.dropped
        if len(kept.batch):
            transport.push_examples(student, kept.batch)
    return report


@dataclass
class Kept:
    batch: ExampleBatch
    dropped: int = 0


def known_classes_only(batch: ExampleBatch, classes: tuple[str, ...]) -> Kept:
    """`batch` without the examples whose class name is not among `classes`."""
    known = np.array([name in set(classes) for name in batch.classes], dtype=bool)
    keep = known[batch.y] if len(batch.y) else np.zeros(0, dtype=bool)
    if keep.all():
        return Kept(batch)
    proba = None if batch.proba is None else batch.proba[keep]
    kept = replace(batch, x=batch.x[keep], y=batch.y[keep], distance=batch.distance[keep], proba=proba)
    return Kept(kept, int((~keep).sum()))


def teach_students(
    peer: Peer,
    round: int,
    students: Sequence[str],
    transport: Transport,
    deadline: float | None = None,
    refresh: Callable[[], None] | None = None,
    on_report: Callable[[TeachReport], None] | None = None,
    retry_every: float = 1.0,
    fanout: int = 0,
) -> PeerRound:
    """Teach each student given (never itself); a record with the reports and the students it could not teach.

    With `fanout` K > 0, only the students whose K most useful teachers include this peer
    (peer.core.fanout.plan over the profiles of the models published for this round).

    A student whose model is malformed or who is unknown is recorded and not retried. One that
    is unreachable is retried (after `refresh`, e.g. a new peer list) until `deadline`
    (time.monotonic() seconds; None: no retry). Batch ids make a retried push store once.
    """
    record = PeerRound(peer.id, round)
    start = time.perf_counter()
    pending = [s for s in students if s != peer.id]
    if fanout > 0 and fanout < len(pending):
        pending, record.errors = choose_students(peer, round, pending, transport, fanout)
    errors: dict[str, str] = {}
    while pending:
        for sid in list(pending):
            try:
                report = teach_one(peer, sid, round, transport)
            except PeerUnreachable as exc:
                errors[sid] = f"unreachable: {exc}"
                continue
            except (InvalidPayload, UnknownPeer) as exc:
                errors[sid] = f"{type(exc).__name__}: {exc}"
                pending.remove(sid)
                continue
            pending.remove(sid)
            errors.pop(sid, None)
            record.teach.append(report)
            if on_report is not None:
                on_report(report)
        if not pending or deadline is None or time.monotonic() >= deadline:
            break
        time.sleep(retry_every)
        if refresh is not None:
            refresh()
    record.errors += [{"teacher": peer.id, "student": s, "round": round, "error": e} for s, e in errors.items()]
    record.teach_seconds = time.perf_counter() - start
    return record


def choose_students(
    peer: Peer, round: int, others: Sequence[str], transport: Transport, fanout: int
) -> tuple[list[str], list[dict[str, Any]]]:
    """The students among `others` that the fan-out plan gives `peer` this round, and errors.

    Every peer reads the same profiles (one spec per peer, not its weights) and computes the same
    plan. A peer whose spec cannot be read is left out of the plan and recorded as an error; the
    plan of the others stands.
    """
    profiles: dict[str, Profile | None] = {peer.id: profile_of(peer.snapshot(round).spec)}
    errors = []
    for sid in others:
        try:
            profiles[sid] = profile_of(transport.get_spec(sid, round))
        except (PeerUnreachable, InvalidPayload, UnknownPeer) as exc:
            errors.append({"teacher": peer.id, "student": sid, "round": round, "error": f"profile: {exc}"})
    chosen = set(students_of(peer.id, profiles, fanout))
    return [s for s in others if s in chosen], errors


def stop_after(round: int, improved: Mapping[str, bool], rounds: int | str, max_rounds: int) -> str | None:
    """Whether the run goes on after `round`: None to run round + 1, else why it stops. Every
    runtime asks this after each round (the in-process loop, the gRPC coordinator at the round's
    last barrier, the Flower ServerApp), so all stop at the same round.

    `improved`: peer -> whether its model of `round` beat its model of before on the peer's own
    validation slice beyond noise, or it kept the first examples of a class it lacks
    (GateReport.improved); a peer that did not report counts as not improved.
    `rounds`: a number of rounds, or "auto": stop after the first round in which no
    peer improved, or after `max_rounds`. Round 0 (local training alone) always goes on in auto:
    no peer has been taught yet.
    """
    if rounds != "auto":
        if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 0:
            raise ValueError(f"rounds must be a number >= 0 or 'auto', got {rounds!r}")
        return f"{rounds} round{'' if rounds == 1 else 's'} asked" if round >= rounds else None
    if max_rounds < 1:
        raise ValueError(f"max_rounds must be >= 1, got {max_rounds}")
    if round == 0:
        return None
    if not any(improved.values()):
        return f"no peer improved in round {round}"
    if round >= max_rounds:
        return f"cap of {max_rounds} rounds"
    return None


def improved_in(records: Sequence[PeerRound], round: int) -> dict[str, bool]:
    """Peer -> whether its gate found its model of `round` better on its validation slice."""
    return {r.peer: bool(r.gate.get("improved", False)) for r in records if r.round == round}


# What RunLog.timings holds: seconds peers spent in each step, summed over peers, whichever
# runtime ran them (peers working in parallel add up to more than the wall time).
TIMINGS: tuple[str, ...] = ("train", "teach", "retrain", "evaluate")


@dataclass
class RunLog:
    """A run's records added up: evaluations and training-set sizes per peer and round, every
    teach report, every gate decision, every error and skipped peer, and the seconds peers spent
    in each step."""

    evaluations: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # peer -> [round 0, 1, ...]
    teach: list[TeachReport] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TIMINGS, 0.0))
    train_sizes: dict[str, list[int]] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)  # {peer, round, skipped: [...]}
    gates: list[dict[str, Any]] = field(default_factory=list)  # {peer, **GateReport.to_dict()}
    stopped: str = ""  # why the run stopped after its last round (stop_after)

    def add(self, record: PeerRound) -> None:
        """Record one peer's round; rounds of a peer must come in order."""
        evals = self.evaluations.setdefault(record.peer, [])
        if len(evals) != record.round:
            raise ValueError(f"{record.peer}: round {record.round} reported after {len(evals)} rounds")
        evals.append(record.evaluation)
        self.train_sizes.setdefault(record.peer, []).append(record.train_size)
        self.teach += record.teach
        self.errors += record.errors
        if record.gate:
            self.gates.append({"peer": record.peer, **record.gate})
        if record.skipped:
            self.skipped.append({"peer": record.peer, "round": record.round, "skipped": list(record.skipped)})
        self.timings["train" if record.round == 0 else "retrain"] += record.train_seconds
        self.timings["teach"] += record.teach_seconds
        self.timings["evaluate"] += record.evaluate_seconds

    @classmethod
    def from_records(cls, records: Sequence[PeerRound], order: Sequence[str]) -> RunLog:
        """The log of `records`, peers in `order`, teach reports by (round, teacher, student)."""
        log = cls()
        rank = {p: i for i, p in enumerate(order)}
        for record in sorted(records, key=lambda r: (rank[r.peer], r.round)):
            log.add(record)
        log.teach.sort(key=lambda t: (t.round, rank.get(t.teacher, -1), rank.get(t.student, -1)))
        return log
