"""The coordinator: who is in the run, the round barrier with a deadline, and the metrics.

It never sees data or weights: peers register an address, wait at barriers and report numbers.
A barrier releases when every participant arrived, or `round_deadline` seconds after the first
one did, so a slow peer is skipped for that stage rather than waited on forever.

A peer skipped as a student (it had not published its model when a round's `published` barrier
released) is owed that round's teaching. Once the rounds asked are done, up to `makeup_rounds`
make-up rounds follow while some peer still at the run is owed one: every peer teaches, only the
owed peers are students and retrain, the others keep their models. So a peer that was slow once
ends with as many rounds of teaching as the others.

Given `expected` peer names (`ckd server --expect-peers`), it refuses every other name, whatever
CA signed its certificate. Every refusal is logged and kept in `refused`.

Given a state directory, it keeps there (coordinator.json, replaced atomically) the registered
peers, the participants, the metrics reported and every barrier released, each written before the
call that changed it returns: a coordinator killed and started again on that directory goes on
where it was. Peers retry their calls meanwhile; a barrier that had not released is rebuilt from
their retried arrivals.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import grpc
from grpc_health.v1 import health_pb2

from peer.core.blob import InvalidPayload
from peer.core.fanout import by_teacher, plan, profile_of
from peer.durable import atomic_write
from peer.errors import UsageError
from peer.faults import fault
from peer.grpc.tls import Security, caller
from peer.round import stop_after
from protos.ckd.v1 import coordinator_pb2 as pb
from protos.ckd.v1 import coordinator_pb2_grpc

if TYPE_CHECKING:
    from peer.experiment import Experiment

STAGES: dict[int, str] = {
    pb.STAGE_READY: "ready",
    pb.STAGE_PUBLISHED: "published",
    pb.STAGE_TAUGHT: "taught",
    pb.STAGE_DONE: "done",
}
MAX_METRICS_BYTES = 64 << 20
MAX_ADDRESS_CHARS = 300
MAX_PROFILE_CHARS = 1 << 20
STATE_FILE = "coordinator.json"
log = logging.getLogger("ckd.coordinator")


@dataclass
class Barrier:
    arrived: list[str] = field(default_factory=list)  # before it released
    first: float = 0.0
    released: float | None = None
    timed_out: bool = False
    late: list[str] = field(default_factory=list)  # arrived after it released
    stopped: str = ""  # a STAGE_DONE barrier: why the run stops after its round ("" goes on)
    makeup: list[str] = field(default_factory=list)  # a STAGE_DONE barrier: the next round's make-up students
    held: str = ""  # with makeup: why the rounds asked ended (the run's reason once the make-ups are done)
    # a STAGE_PUBLISHED barrier under a fan-out limit: peer -> {"classes", "profile"} of its published model,
    # kept as sent (checked on arrival, parsed for the plan) so that the state file holds it as JSON
    profiles: dict[str, dict] = field(default_factory=dict)


class Coordinator(coordinator_pb2_grpc.CoordinatorServiceServicer):
    def __init__(
        self,
        security: Security,
        rounds: int | str,
        min_peers: int,
        round_deadline: float = 600.0,
        heartbeat_timeout: float = 30.0,
        expected: set[str] | None = None,
        state_dir: Path | None = None,
        max_rounds: int = 10,
        makeup_rounds: int = 1,
    ) -> None:
        self.security = security
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.expected = set(expected) if expected is not None else None
        self.refused: list[tuple[str, str]] = []  # (status code name, message), newest last
        self.heartbeat_timeout = heartbeat_timeout  # a peer silent this long is not waited for
        self.asked = rounds  # a number of rounds, or "auto" (peer.round.stop_after)
        self.max_rounds = max_rounds
        self.auto = rounds == "auto"
        stop_after(0, {}, rounds, max_rounds)  # a ValueError here for a bad number of rounds
        self.rounds = max_rounds if isinstance(rounds, str) else rounds  # the most rounds
        if makeup_rounds < 0:
            raise ValueError(f"makeup_rounds must be >= 0, got {makeup_rounds}")
        self.makeup_rounds = makeup_rounds
        self.min_peers = min_peers
        self.round_deadline = round_deadline
        self.peers: dict[str, str] = {}
        self.heartbeats: dict[str, float] = {}
        self.participants: list[str] | None = None
        self.barriers: dict[tuple[int, int], Barrier] = {}
        # (round, fanout, peers planned over) -> teacher -> students: each plan made once, not per peer
        self._plans: dict[tuple[int, int, tuple[str, ...]], dict[str, list[str]]] = {}
        self.metrics: dict[str, dict[int, dict]] = {}
        self.finished = threading.Event()
        self.left: set[str] = set()  # peers that heard the run's end (Leave)
        self.lost: str | None = None  # why this coordinator cannot go on with the run it was asked about
        self.told: set[str] = set()  # the peers that heard why
        self._lost_at = 0.0
        self.last_call = time.monotonic()  # the last call from a registered peer
        self._cond = threading.Condition()
        if self.state_dir is not None:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self._load()

    # -- state on disk ------------------------------------------------------------------------------
    def _save(self) -> None:
        """Write the state (call with the lock held), before the call that changed it returns."""
        if self.state_dir is None:
            return
        state = {
            "rounds": self.asked,
            "max_rounds": self.max_rounds,
            "peers": self.peers,
            "participants": self.participants,
            "metrics": {p: {str(r): m for r, m in rounds.items()} for p, rounds in self.metrics.items()},
            "barriers": [[r, stage, asdict(b)] for (r, stage), b in sorted(self.barriers.items()) if b.released],
        }
        atomic_write(self.state_dir / STATE_FILE, json.dumps(state), point="coordinator-state")

    def _load(self) -> None:
        assert self.state_dir is not None
        path = self.state_dir / STATE_FILE
        if not path.exists():
            return
        state = json.loads(path.read_text())

        def plan(rounds: int | str, most: int) -> str:
            return f"rounds={rounds}" + (f" (at most {most})" if rounds == "auto" else "")

        held = plan(state["rounds"], state.get("max_rounds", self.max_rounds))
        if held != plan(self.asked, self.max_rounds):
            raise UsageError(
                f"{path} holds a run of {held}, not {plan(self.asked, self.max_rounds)}; give another --state-dir"
            )
        self.peers = dict(state["peers"])
        self.participants = state["participants"]
        self.metrics = {p: {int(r): m for r, m in rounds.items()} for p, rounds in state["metrics"].items()}
        self.barriers = {(int(r), int(stage)): Barrier(**b) for r, stage, b in state["barriers"]}
        now = time.time()
        self.heartbeats = dict.fromkeys(self.peers, now)  # a heartbeat's time to show up again
        if self.last_round() is not None:
            self.finished.set()
        log.info("resumed from %s: %d peers, %d barriers released", path, len(self.peers), len(self.barriers))

    def idle_seconds(self) -> float:
        """Seconds since the last call from a registered peer (or since start)."""
        return time.monotonic() - self.last_call

    def refuse(self, context, code: grpc.StatusCode, message: str) -> NoReturn:
        """Abort this call with `code`, logged and kept in `refused`."""
        self.refused.append((code.name, message))
        log.warning("coordinator refused a call from %s: %s: %s", context.peer(), code.name, message)
        context.abort(code, message)
        raise AssertionError("grpc's abort raises")  # pragma: no cover

    def _identity(self, context, claimed: str, must_be_registered: bool = True) -> str:
        cert = caller(context)
        if cert is not None and cert != claimed:
            self.refuse(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"request names peer {claimed!r} but the client certificate is {cert!r}",
            )
        if not claimed:
            self.refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "request names no peer")
        if self.expected is not None and claimed not in self.expected:
            self.refuse(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"peer {claimed!r} is not one of the {len(self.expected)} peers this run expects",
            )
        if must_be_registered and claimed not in self.peers:
            self.refuse(context, grpc.StatusCode.NOT_FOUND, f"unknown peer {claimed!r}: register first")
        self.last_call = time.monotonic()
        return claimed

    def Register(self, request, context):
        peer = self._identity(context, request.peer, must_be_registered=False)
        if not request.address:
            self.refuse(context, grpc.StatusCode.INVALID_ARGUMENT, f"peer {peer!r} registered without an address")
        host, _, port = request.address.rpartition(":")
        if len(request.address) > MAX_ADDRESS_CHARS or not host or not port.isdigit() or not 0 < int(port) < 65536:
            self.refuse(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"peer {peer!r} registered the address {request.address[:80]!r}, not host:port "
                f"(at most {MAX_ADDRESS_CHARS} characters)",
            )
        with self._cond:
            if self.participants is not None and peer not in self.participants:
                self.refuse(
                    context,
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"the run has started with {len(self.participants)} peers; {peer!r} is not one",
                )
            changed = self.peers.get(peer) != request.address
            self.peers[peer] = request.address
            self.heartbeats[peer] = time.time()
            if changed:
                self._save()
            self._cond.notify_all()
        return pb.RegisterReply(rounds=self.rounds, round_deadline=self.round_deadline, auto_rounds=self.auto)

    def Heartbeat(self, request, context):
        peer = self._identity(context, request.peer)
        with self._cond:
            self.heartbeats[peer] = time.time()
        return pb.HeartbeatReply(ok=True)

    def ListPeers(self, request, context):
        cert = caller(context)
        if cert is not None and self.expected is not None and cert not in self.expected:
            self.refuse(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"peer {cert!r} is not one of the {len(self.expected)} peers this run expects",
            )
        with self._cond:
            ids = self.participants if self.participants is not None else sorted(self.peers)
            return pb.ListPeersReply(peers=[pb.PeerInfo(id=i, address=self.peers[i]) for i in ids])

    def _release_ready(self, key, barrier: Barrier) -> bool:
        if key[1] == pb.STAGE_READY and key[0] == 0:
            if len(self.peers) >= self.min_peers and set(self.peers) <= set(barrier.arrived):
                self.participants = sorted(barrier.arrived)
                return True
            return False
        now = time.time()
        alive = {
            p for p in (self.participants or self.peers) if now - self.heartbeats.get(p, 0.0) < self.heartbeat_timeout
        }
        return alive <= set(barrier.arrived)

    def WaitRound(self, request, context):
        peer = self._identity(context, request.peer)
        if request.stage not in STAGES:
            self.refuse(context, grpc.StatusCode.INVALID_ARGUMENT, f"unknown stage {request.stage}")
        if not self._in_run(request.round):
            self.refuse(context, grpc.StatusCode.OUT_OF_RANGE, f"round {request.round} {self._outside}")
        key = (int(request.round), int(request.stage))
        fanout = int(request.fanout) if request.stage == pb.STAGE_PUBLISHED else 0
        profile = self._profile(context, peer, request) if fanout > 0 else None
        if self.participants is None and key != (0, pb.STAGE_READY):
            # every peer waits at (0, ready) first: a peer further on means the run started with another
            # coordinator, or with this one before a restart that lost its memory (no --state-dir)
            self.lost = (
                f"{peer} waits at round {key[0]} ({STAGES[key[1]]}) but this coordinator has no record of the "
                "run's start: it was restarted without --state-dir, so who takes part, the released barriers and "
                "the metrics are lost; start the run again (`ckd server --state-dir DIR` survives a restart)"
            )
            with self._cond:
                self.told.add(peer)
                self._lost_at = self._lost_at or time.monotonic()
            self.refuse(context, grpc.StatusCode.FAILED_PRECONDITION, self.lost)
        with self._cond:
            barrier = self.barriers.setdefault(key, Barrier(first=time.time()))
            self.heartbeats[peer] = time.time()
            if barrier.released is not None:
                if peer not in barrier.arrived and peer not in barrier.late:
                    barrier.late.append(peer)
            elif peer not in barrier.arrived:
                barrier.arrived.append(peer)
            if profile is not None:
                barrier.profiles[peer] = profile
            self._cond.notify_all()
        fault("barrier")
        with self._cond:
            while barrier.released is None:
                if self._release_ready(key, barrier):
                    barrier.released = time.time()
                elif key != (0, pb.STAGE_READY) and time.time() - barrier.first >= self.round_deadline:
                    barrier.released, barrier.timed_out = time.time(), True
                elif not context.is_active():
                    context.abort(grpc.StatusCode.CANCELLED, "caller went away")
                else:
                    self._cond.wait(timeout=0.5)
                    continue
                if key[1] == pb.STAGE_DONE:
                    self._decide(key[0], barrier)
                self._save()  # before any waiter hears of the release
                self._cond.notify_all()
                if barrier.stopped:
                    self.finished.set()
            arrived = sorted(set(barrier.arrived) | {peer})
            reply = pb.WaitRoundReply(
                arrived=arrived, timed_out=barrier.timed_out, stopped=barrier.stopped, makeup=barrier.makeup
            )
            if fanout > 0:
                reply.planned = True
                reply.students.extend(self._students(key[0], fanout, barrier, arrived).get(peer, []))
            return reply

    def _profile(self, context, peer: str, request) -> dict:
        """The profile a peer sent with its arrival at STAGE_PUBLISHED, checked (refused if malformed)."""
        why = ""
        try:
            if len(request.profile_json) > MAX_PROFILE_CHARS:
                raise InvalidPayload(f"over {MAX_PROFILE_CHARS} characters")
            raw = json.loads(request.profile_json or "{}")
            if not isinstance(raw, dict) or profile_of(raw) is None:
                raise InvalidPayload('not an object with "classes" and "profile"')
            return {"classes": raw["classes"], "profile": raw["profile"]}
        except (ValueError, InvalidPayload) as exc:  # json's errors are ValueErrors
            why = " ".join(str(exc).split())[:200]
        self.refuse(context, grpc.StatusCode.INVALID_ARGUMENT, f"peer {peer!r} sent a malformed profile: {why}")

    def _students(self, round: int, fanout: int, barrier: Barrier, peers: list[str]) -> dict[str, list[str]]:
        """Teacher -> students under the fan-out plan over `peers`' profiles (call with the lock
        held): the plan every peer would compute from the headers of the models just published."""
        key = (round, fanout, tuple(peers))
        if key not in self._plans:
            self._plans = {k: v for k, v in self._plans.items() if k[0] >= round - 1}
            profiles = {p: profile_of(barrier.profiles[p]) if p in barrier.profiles else None for p in peers}
            self._plans[key] = by_teacher(plan(profiles, fanout))
        return self._plans[key]

    def _in_run(self, round: int) -> bool:
        """A round of the rounds asked (0..rounds), or a make-up round the coordinator decided on."""
        return 0 <= round <= self.rounds or bool(self.makeup_students(round))

    @property
    def _outside(self) -> str:
        return f"outside 0..{self.rounds} and not a make-up round"

    def makeup_students(self, round: int) -> list[str]:
        """The students of make-up round `round` ([] for a round of the rounds asked)."""
        before = self.barriers.get((round - 1, pb.STAGE_DONE))
        return list(before.makeup) if before is not None else []

    def owed(self, round: int) -> dict[str, int]:
        """Peer -> rounds of teaching it is owed after `round`: rounds asked in which it was skipped
        as a student (not at the `published` barrier when it released), less the make-up rounds it
        was taught in."""
        out = dict.fromkeys(self.participants or self.peers, 0)
        for r in range(1, round + 1):
            published = self.barriers.get((r, pb.STAGE_PUBLISHED))
            if published is None or published.released is None:
                continue
            students = self.makeup_students(r)
            for p in out:
                if students:
                    out[p] -= int(p in students and p in published.arrived)
                else:
                    out[p] += int(p not in published.arrived)
        return {p: n for p, n in out.items() if n > 0}

    def _decide(self, round: int, barrier: Barrier) -> None:
        """At `round`'s STAGE_DONE barrier: go on, stop (barrier.stopped says why), or go on with a
        make-up round for the peers at this barrier that are owed one (barrier.makeup)."""
        makeups = 0
        while self.makeup_students(round - makeups):
            makeups += 1
        if makeups:  # a make-up round: the rounds asked ended before it, for the reason held then
            before = self.barriers[(round - 1, pb.STAGE_DONE)]
            reason = before.held
        else:
            reason = self._stop_after(round) or ""
        if not reason:
            return
        owed = self.owed(round) if makeups < self.makeup_rounds else {}
        students = sorted(p for p in owed if p in barrier.arrived)
        if students:
            barrier.makeup, barrier.held = students, reason
            log.info("round %d: make-up round %d for %s, skipped as students before", round, round + 1, students)
            return
        barrier.stopped = reason
        if makeups:
            barrier.stopped += f", then {makeups} make-up round{'s' if makeups > 1 else ''} for peers skipped before"

    def _stop_after(self, round: int) -> str | None:
        """Whether the run stops after `round` (peer.round.stop_after), from the one flag each peer
        reported for it: whether its validation slice showed an improvement (GateReport.improved)."""
        improved = {}
        for p in self.participants or self.peers:
            record = self.metrics.get(p, {}).get(round, {}).get("record")
            gate = record.get("gate") if isinstance(record, dict) else None
            improved[p] = isinstance(gate, dict) and gate.get("improved") is True
        return stop_after(round, improved, self.asked, self.max_rounds)

    def ReportMetrics(self, request, context):
        peer = self._identity(context, request.peer)
        if len(request.json) > MAX_METRICS_BYTES:
            self.refuse(
                context, grpc.StatusCode.RESOURCE_EXHAUSTED, f"metrics of {len(request.json)} bytes over the cap"
            )
        if not self._in_run(request.round):
            self.refuse(context, grpc.StatusCode.OUT_OF_RANGE, f"metrics for round {request.round} {self._outside}")
        try:
            data = json.loads(request.json)
        except (ValueError, RecursionError) as exc:
            self.refuse(context, grpc.StatusCode.INVALID_ARGUMENT, f"metrics are not JSON: {exc}")
        if not isinstance(data, dict):
            self.refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "metrics must be a JSON object")
        with self._cond:
            self.metrics.setdefault(peer, {})[int(request.round)] = data
            self._save()
        return pb.MetricsReply()

    def Leave(self, request, context):
        peer = self._identity(context, request.peer)
        with self._cond:
            self.left.add(peer)
            self.heartbeats[peer] = time.time()
        return pb.LeaveReply()

    def missing_reports(self) -> list[str]:
        """Peers of the run still heard from (within `heartbeat_timeout`) that have not reported every
        round yet or not left (Leave: they heard at the last barrier that the run ended), so the
        coordinator serves on for them: a peer slower than the last barrier's deadline reports and
        comes there after the run went on without it, and one whose last WaitRound reply was lost
        on a dying connection asks again ([] while the run goes on)."""
        last = self.last_round()
        if last is None:
            return []
        now = time.time()
        with self._cond:
            return sorted(
                p
                for p in (self.participants or self.peers)
                if (not set(range(last + 1)) <= set(self.metrics.get(p, {})) or p not in self.left)
                and now - self.heartbeats.get(p, 0.0) < self.heartbeat_timeout
            )

    def given_up(self) -> str | None:
        """Why the run cannot go on here, once every registered peer was told so (or `heartbeat_timeout`
        seconds after the first was: the others may never call again); None while it can, or until then."""
        with self._cond:
            if self.lost is None:
                return None
            if set(self.peers) <= self.told or time.monotonic() - self._lost_at > self.heartbeat_timeout:
                return self.lost
            return None

    # -- what the run measured -----------------------------------------------------------------
    def released(self, round: int, stage: int) -> float | None:
        b = self.barriers.get((round, stage))
        return b.released if b else None

    def skipped(self) -> list[dict]:
        """Barriers that released on their deadline: round, stage and the peers that had not arrived."""
        out = []
        everyone = set(self.participants or self.peers)
        for (r, stage), b in sorted(self.barriers.items()):
            if b.timed_out:
                out.append(
                    {"round": r, "stage": STAGES.get(stage, str(stage)), "skipped": sorted(everyone - set(b.arrived))}
                )
        return out

    def round_seconds(self) -> list[float | None]:
        """Wall seconds of each round r >= 1: from the release of its publish barrier (every model
        of the round out) to the next round's, or to the last barrier for the last round."""
        out: list[float | None] = []
        last = self.last_round() or self.rounds  # --rounds auto may stop before the cap
        for r in range(1, last + 1):
            start = self.released(r, pb.STAGE_PUBLISHED)
            end = self.released(r + 1, pb.STAGE_PUBLISHED) if r < last else self.released(r, pb.STAGE_DONE)
            out.append(None if start is None or end is None else round(end - start, 3))
        return out

    def last_round(self) -> int | None:
        """The round after which the run stopped (None while it goes on)."""
        done = [r for (r, stage), b in self.barriers.items() if stage == pb.STAGE_DONE and b.stopped]
        last = self.barriers.get((self.rounds, pb.STAGE_DONE))
        if not done and not self.auto and last is not None and last.released is not None and not last.makeup:
            return self.rounds  # a state written before barriers said why they stopped
        return min(done, default=None)

    def stopped(self) -> str:
        """Why the run stopped ("" while it goes on)."""
        last = self.last_round()
        if last is None:
            return ""
        return self.barriers[(last, pb.STAGE_DONE)].stopped or stop_after(last, {}, self.asked, self.max_rounds) or ""

    def results(self, state_dirs: dict[str, Path] | None = None) -> tuple[Experiment, dict]:
        """The finished run as results.json tells it: the Experiment rebuilt from the peers' reports
        (server.results.experiment_from_reports) and the entries only a gRPC run has (wire counts,
        skipped barriers, round wall seconds). `state_dirs`: the peers' state directories where this
        machine can read them (`ckd launch`), for the counterfactual figure's private sources."""
        from server.results import experiment_from_reports  # plotting and torch stay out of the coordinator

        exp, extra = experiment_from_reports(
            self.metrics,
            self.last_round() or 0,
            self.wall_seconds(),
            self.skipped(),
            state_dirs,
            asked=self.asked,
            max_rounds=self.max_rounds,
            stopped=self.stopped(),
        )
        extra["round_wall_seconds"] = self.round_seconds()
        return exp, extra

    def wall_seconds(self) -> float | None:
        start = self.released(0, pb.STAGE_READY)
        last = self.last_round()
        end = None if last is None else self.released(last, pb.STAGE_DONE)
        return None if start is None or end is None else end - start


def serve_coordinator(coordinator: Coordinator, address: str, limits=None):
    """Start the coordinator's gRPC server (with health); returns (server, port)."""
    from peer.grpc.service import add_tolerant_service, serve
    from peer.grpc.wire import Limits

    workers = 2 * coordinator.min_peers + 16
    service = pb.DESCRIPTOR.services_by_name["CoordinatorService"]
    server, port, health = serve(
        [
            (
                lambda servicer, server: add_tolerant_service(
                    server, service, servicer, servicer.refuse, servicer.security
                ),
                coordinator,
            )
        ],
        coordinator.security,
        address,
        limits or Limits(),
        workers,
    )
    health.set(service.full_name, health_pb2.HealthCheckResponse.SERVING)  # what a peer checks before it starts
    return server, port
