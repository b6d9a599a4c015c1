"""The gRPC runtime: one peer process, its PeerService, and the rounds of peer.round between barriers.

register -> wait for everyone -> round 0 (train_step) -> for each round r: publish model r ->
wait until all published -> teach_students (pull each model, push batches) -> wait until all
taught -> train_step(r) -> report the PeerRound. How peers meet is a `Membership`: the
coordinator's WaitRound, or without a coordinator, polling the other peers' Status up to the
round deadline. The algorithm itself is all in peer.round and peer.core.
"""

from __future__ import annotations

import io
import json
import logging
import resource
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from peer.config import ExperimentConfig, config_dict
from peer.core.blob import ModelBlob
from peer.core.fanout import PROFILE_KEY
from peer.core.sqlstore import SqliteExampleStore
from peer.durable import append_line, atomic_write
from peer.errors import UsageError
from peer.experiment import (
    build_part_peer,
    build_whole_peer,
    limit_test,
    load_data,
    load_own_part,
    own_part,
    test_inputs,
)
from peer.faults import fault
from peer.grpc.service import Meter, PeerServicer, grpc_options, serve_peer
from peer.grpc.tls import Security
from peer.grpc.transport import TRANSIENT, GrpcTransport, backoff
from peer.grpc.wire import Limits
from peer.learners.neural import TorchLearner
from peer.round import PeerRound, teach_students, train_step
from protos.ckd.v1 import coordinator_pb2 as cpb
from protos.ckd.v1 import coordinator_pb2_grpc

COORDINATOR_SERVICE = "ckd.v1.CoordinatorService"  # its health-check name
ACKED = "acked.jsonl"  # in the state directory: every batch a student acknowledged, one JSON line each
log = logging.getLogger("ckd.node")


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def resident_mb(rollup: str = "/proc/self/smaps_rollup") -> dict[str, float]:
    """This process's resident memory now, in MiB, split by what backs it: anonymous (its heap,
    tensors, data: what each further peer process adds) and file (mapped libraries and files, whose
    pages the page cache holds once for every process that maps them, torch's CUDA libraries among
    them even with no GPU); and pss, its proportional share (each page divided by the number of
    processes mapping it: what the machine spends on this process, where peers share a machine).
    Empty where the kernel has no smaps_rollup (not Linux, or before 4.14)."""
    try:
        text = Path(rollup).read_text()
    except OSError:
        return {}
    kb = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss", "Anonymous") and rest.split():
            kb[key] = int(rest.split()[0])
    if "Rss" not in kb or "Anonymous" not in kb:
        return {}
    return {
        "rss_mb": round(kb["Rss"] / 1024, 1),
        "anonymous_mb": round(kb["Anonymous"] / 1024, 1),
        "file_mb": round((kb["Rss"] - kb["Anonymous"]) / 1024, 1),
        **({"pss_mb": round(kb["Pss"] / 1024, 1)} if "Pss" in kb else {}),
    }


@dataclass
class NodeConfig:
    experiment: ExperimentConfig
    part: int | None  # part of a shared split; None: the whole of --data is this peer's own
    state_dir: Path
    peer_id: str = ""
    listen: str = "127.0.0.1:0"
    advertise: str = ""  # host:port others use (default: the listen address, actual port)
    coordinator: str = ""  # host:port of `ckd server`
    peers: dict[str, str] = field(default_factory=dict)  # static list: id -> host:port (no coordinator)
    learner: str = ""  # this peer's learner kind (default: from --learners)
    round_deadline: float = 600.0


def save_checkpoint(directory: Path, round: int, blob: ModelBlob) -> Path:
    """The model after `round` as spec JSON plus an npz of its arrays (never pickled), each file
    replaced atomically, the npz last: a round whose npz exists has both files whole."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"round-{round}.npz"
    arrays = io.BytesIO()
    np.savez(arrays, allow_pickle=False, **blob.arrays)
    atomic_write(directory / f"round-{round}.json", blob.spec_json())
    atomic_write(path, arrays.getvalue(), point="checkpoint")
    return path


def load_checkpoint(directory: Path, round: int) -> ModelBlob:
    spec = json.loads((directory / f"round-{round}.json").read_text())
    with np.load(directory / f"round-{round}.npz", allow_pickle=False) as data:
        blob = ModelBlob(spec, {k: data[k] for k in data.files})
    blob.validate()
    return blob


def check_address(address: str, flag: str, any_port: bool = False) -> str:
    """HOST:PORT with a port in 1..65535 (0 too with `any_port`), or a one-line error naming the flag."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not (0 if any_port else 1) <= int(port) < 65536:
        raise UsageError(f"{flag} {address!r} is not HOST:PORT")
    return address


def wait_for_coordinator(security: Security, address: str, timeout: float, limits: Limits = Limits()) -> None:
    """Return once the coordinator at `address` answers its health check (over this peer's mTLS),
    or raise a one-line UsageError after `timeout` seconds naming the last reason it did not."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    check_address(address, "--coordinator")
    channel = security.channel(address, "coordinator", grpc_options(limits))
    stub = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest(service=COORDINATOR_SERVICE)
    end = time.monotonic() + timeout
    why = "no answer"
    try:
        while True:
            left = end - time.monotonic()
            if left <= 0:
                break
            try:
                reply = stub.Check(request, timeout=min(left, 5.0))
            except grpc.RpcError as exc:
                code = exc.code()
                why = f"{code.name}: {exc.details()}"
                if code == grpc.StatusCode.NOT_FOUND:
                    raise UsageError(
                        f"--coordinator {address} answers but is not a ckd coordinator (no {COORDINATOR_SERVICE})"
                    ) from None
                if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    break
                time.sleep(min(0.5, max(end - time.monotonic(), 0.0)))
                continue
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
            why = f"health {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"
            time.sleep(0.5)
    finally:
        channel.close()
    why = " ".join(why.split())
    raise UsageError(
        f"coordinator {address} did not answer within {timeout:g} s ({why}); check --coordinator, "
        "that `ckd server` runs there, and --certs"
    )


@dataclass(frozen=True)
class Passed:
    """What a barrier said once it let this peer through."""

    arrived: list[str]  # the peers that reached it in time (the others are skipped)
    stopped: str = ""  # at a STAGE_DONE barrier: why the run stops there ("" goes on)
    makeup: list[str] = field(default_factory=list)  # ... or the students of the make-up round that follows
    students: list[str] | None = None  # at STAGE_PUBLISHED: those this peer teaches under the coordinator's plan


class Membership:
    """Who takes part in a stage of a round: wait until every peer reached it (the coordinator's
    WaitRound, or Status polling) and say who did; the others are skipped."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def wait(self, round: int, stage: cpb.Stage, fanout: int = 0) -> Passed:
        """Until the peers reached `stage` of `round`. With `fanout` K > 0 at STAGE_PUBLISHED and a
        coordinator, this peer's published profile goes with its arrival and the coordinator's
        fan-out plan comes back (`students`; None without one, or without a coordinator)."""
        node = self.node
        if node.coord is not None:
            request = cpb.WaitRoundRequest(peer=node.id, round=round, stage=stage)
            if fanout > 0 and stage == cpb.STAGE_PUBLISHED:
                spec = node.peer.snapshot(round).spec
                request.fanout = fanout
                request.profile_json = json.dumps({"classes": spec["classes"], "profile": spec[PROFILE_KEY]})
            node.meter.record("control", request)
            reply = node.coordinator_call(
                "WaitRound", lambda t: node.coord.WaitRound(request, timeout=t), node.cfg.round_deadline * 2 + 3600
            )
            return Passed(
                list(reply.arrived),
                reply.stopped,
                list(reply.makeup),
                list(reply.students) if reply.planned else None,
            )
        # static peer list: poll the others' Status until they got there or the deadline passed
        deadline = time.time() + (node.cfg.round_deadline if stage != cpb.STAGE_READY else 3600)
        pending = set(node.addresses) - {node.id}
        arrived = {node.id}
        while pending and time.time() < deadline:
            for pid in sorted(pending):
                try:
                    st = node.transport.status(pid)
                except grpc.RpcError:
                    continue
                if (
                    stage == cpb.STAGE_READY
                    or stage == cpb.STAGE_DONE
                    or (stage == cpb.STAGE_PUBLISHED and st.published_round >= round)
                    or (stage == cpb.STAGE_TAUGHT and st.taught_round >= round)
                ):
                    pending.discard(pid)
                    arrived.add(pid)
            if pending:
                time.sleep(0.2)
        return Passed(sorted(arrived))


class Node:
    def __init__(self, cfg: NodeConfig, security: Security, limits: Limits = Limits(), data=None) -> None:
        exp = cfg.experiment
        if cfg.part is None:
            if not exp.data:
                raise UsageError("a peer on its own data needs --data (or --part K of a shared split)")
            if not cfg.peer_id:
                raise UsageError("a peer on its own data needs --id NAME (the name in its certificate)")
        elif not 0 <= cfg.part < exp.peers:
            raise UsageError(f"--part {cfg.part} outside 0..{exp.peers - 1} (the split has {exp.peers} parts)")
        self.cfg = cfg
        self.security = security
        self.limits = limits
        self.meter = Meter()
        if cfg.part is None:
            train, test = data or load_data(exp)
            test = limit_test(exp, test)
        elif data is None:
            train, test = load_own_part(exp, cfg.part)  # this part's rows alone
        else:
            train, test = own_part(exp, cfg.part, data[0]), limit_test(exp, data[1])
        if cfg.part is None:
            kinds = sorted(set(exp.learner_list()))
            if not cfg.learner and len(kinds) > 1:
                raise UsageError(f"--learners names several kinds ({', '.join(kinds)}); give this peer's --learner")
            kind = cfg.learner or kinds[0]
            self.peer = build_whole_peer(exp, cfg.peer_id, kind, train)
        else:
            kind = cfg.learner or exp.learner_list()[cfg.part]
            self.peer = build_part_peer(exp, cfg.part, kind, train)
        self.test_x, self.test_y = test_inputs(self.peer, test), test.y
        if cfg.peer_id:
            self.peer.id = cfg.peer_id
        self.id = self.peer.id
        if security.name != self.id and not security.insecure:
            raise UsageError(f"certificate is for {security.name!r} but this peer is {self.id!r}")
        self.kind = kind
        self.classes = train.classes
        self.missing = self.peer.missing_classes()
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        self.examples = SqliteExampleStore(cfg.state_dir / "examples.sqlite")
        self.peer.store = self.examples
        self.servicer = PeerServicer(self.peer, security, limits, self.meter)
        self.server, self.port = serve_peer(self.servicer, cfg.listen, workers=16)
        host = cfg.listen.rsplit(":", 1)[0]
        self.address = cfg.advertise or f"{host}:{self.port}"
        self.coord = None
        self.addresses = dict(cfg.peers)
        self.rounds = exp.round_limit()  # the most rounds; with auto the coordinator says when to stop
        self.auto = exp.auto_rounds
        self.stopped = ""  # why the run stopped, as the coordinator's last barrier said
        self.makeup: list[str] = []  # the students of the next round, when the coordinator made it a make-up round
        if cfg.coordinator:
            channel = security.channel(cfg.coordinator, "coordinator", grpc_options(limits))
            self.coord = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
        self.transport = GrpcTransport(self.id, self.addresses, security, limits, self.meter, on_ack=self._acked)
        self.membership = Membership(self)
        self.metrics: dict[int, dict] = {}
        self.gallery: list = []
        self._stopped = threading.Event()

    def patience(self) -> float:
        """Seconds a coordinator call keeps retrying while the coordinator is unavailable."""
        return max(60.0, self.cfg.round_deadline)

    def coordinator_call(self, what: str, call, timeout: float, patience: float | None = None):
        """`call(timeout)`, a coordinator RPC, retried with backoff while the coordinator is down or
        restarting, for up to `patience` seconds (default `patience()`) from the first failure; every coordinator RPC is
        idempotent (a second arrival at a barrier or a second report changes nothing). A coordinator
        that lost this peer (restarted without its state) is registered with again. Gives up with a
        one-line UsageError."""
        assert self.coord is not None, "a coordinator call needs a coordinator"
        give_up: float | None = None
        attempt = 0
        while True:
            try:
                return call(timeout)
            except grpc.RpcError as exc:
                code = exc.code()
                now = time.monotonic()
                if give_up is None:
                    give_up = now + (self.patience() if patience is None else patience)
                if code == grpc.StatusCode.NOT_FOUND and what != "Register" and now < give_up:
                    self._register()  # a coordinator that lost its state forgot us
                    continue
                failed = (
                    f"coordinator {self.cfg.coordinator}: {what} from {self.id} failed: "
                    f"{code.name}: {' '.join(str(exc.details()).split())}"
                )
                # TRANSIENT (as between peers): the coordinator may be restarting, or one attempt timed out
                if code not in TRANSIENT or now >= give_up:
                    raise UsageError(failed) from None
                pause = min(backoff(attempt, 0.5, 5.0), max(give_up - now, 0.0))
                log.warning("%s; retry %d in %.1f s (for up to %.0f s more)", failed, attempt + 1, pause, give_up - now)
                time.sleep(pause)
                attempt += 1

    def _register(self) -> None:
        assert self.coord is not None, "registers only with a coordinator"
        coord = self.coord
        request = cpb.RegisterRequest(peer=self.id, address=self.address)
        self.meter.record("control", request)
        reply = self.coordinator_call("Register", lambda t: coord.Register(request, timeout=t), 10)
        self.rounds = int(reply.rounds)
        self.auto = bool(reply.auto_rounds)
        if self.auto and self.cfg.experiment.validation_share <= 0:
            raise UsageError(
                f"coordinator {self.cfg.coordinator} runs --rounds auto, which stops when no peer improved on its "
                "validation slice; give this peer --validation-share > 0"
            )
        self.cfg.round_deadline = reply.round_deadline

    def _acked(self, student: str, batch, ack) -> None:
        """A student acknowledged `batch`: one line in the state directory's acked.jsonl."""
        line = {"student": student, "sender": batch.sender, "round": batch.round, "seq": batch.seq}
        line.update(examples=len(batch), duplicate=ack.duplicate)
        append_line(self.cfg.state_dir / ACKED, json.dumps(line))

    def _heartbeat(self, every: float = 5.0) -> None:
        """Tell the coordinator this peer is alive, also while it trains (a daemon thread)."""
        assert self.coord is not None, "heartbeats go to a coordinator"
        while not self._stopped.wait(every):
            request = cpb.HeartbeatRequest(peer=self.id)
            self.meter.record("control", request)
            try:
                self.coord.Heartbeat(request, timeout=10)
            except grpc.RpcError as exc:  # the next one may pass; the coordinator waits `heartbeat_timeout`
                log.warning("%s: heartbeat to %s failed: %s", self.id, self.cfg.coordinator, exc.code().name)

    def _peer_list(self) -> None:
        coord = self.coord
        if coord is not None:
            request = cpb.ListPeersRequest()
            self.meter.record("control", request)
            reply = self.coordinator_call("ListPeers", lambda t: coord.ListPeers(request, timeout=t), 30)
            self.addresses = {p.id: p.address for p in reply.peers}
        self.transport.set_addresses(self.addresses)
        self.servicer.known = set(self.addresses)

    def _report(self, round: int, data: dict) -> None:
        self.metrics[round] = data
        atomic_write(self.cfg.state_dir / "metrics.json", json.dumps(self.metrics), point="metrics")
        coord = self.coord
        if coord is not None:
            request = cpb.MetricsRequest(peer=self.id, round=round, json=json.dumps(data))
            self.meter.record("control", request)
            self.coordinator_call("ReportMetrics", lambda t: coord.ReportMetrics(request, timeout=t), 60)

    def _train(self, epochs: int, round: int) -> PeerRound:
        record = train_step(self.peer, round, epochs, self.test_x, self.test_y)
        save_checkpoint(self.cfg.state_dir / "checkpoints", round, self.peer.learner.to_blob())
        return record

    def resume(self) -> int:
        """Pick up from the state directory: the model after the last round reported, its metrics.

        Returns that round (-1 for a fresh start). Received examples are already in the SQLite
        store, the validation gate's judgements of later rounds are dropped (those rounds are
        trained again), and training randomness depends on (seed, round) only, so the peer goes on
        as if it had never stopped.
        """
        from peer.learners import learner_from_blob

        path = self.cfg.state_dir / "metrics.json"
        metrics = {int(r): m for r, m in json.loads(path.read_text()).items()} if path.exists() else {}
        ckpt = self.cfg.state_dir / "checkpoints"
        done = [r for r in sorted(metrics) if (ckpt / f"round-{r}.npz").exists()]
        if not done or done != list(range(len(done))):
            self.examples.forget_judgements(after=-1)
            return -1
        last = done[-1]
        self.examples.forget_judgements(after=last)
        restored = learner_from_blob(load_checkpoint(ckpt, last), self.peer.learner.train_config.device)
        current = self.peer.learner
        if isinstance(current, TorchLearner) and isinstance(restored, TorchLearner):
            # torch: same module, device and train config, saved weights
            current.module.load_state_dict(restored.module.state_dict())
        else:
            restored.train_config = current.train_config
            self.peer.learner = restored
        self.peer._own_proba = None
        self.metrics = {r: metrics[r] for r in done}
        return last

    def run(self) -> dict:
        """The whole run for this peer (resumed from its state directory); returns metrics by round."""
        exp = self.cfg.experiment
        done = self.resume()
        if self.coord is not None:
            self._register()
            threading.Thread(target=self._heartbeat, daemon=True, name=f"{self.id}-heartbeat").start()
        elif self.auto:
            raise UsageError(
                "--rounds auto needs a coordinator (--coordinator): it decides from every peer's report "
                "whether another round follows; with a static peer list give a number of rounds"
            )
        else:
            self.addresses.setdefault(self.id, self.address)
            self.transport.addresses = dict(self.addresses)
        everyone = self.membership.wait(0, cpb.STAGE_READY).arrived
        self._peer_list()
        config = config_dict(exp)
        if self.cfg.part is None:  # its own data: the coordinator hears how it did, not what its files hold
            config.update(data=None, test_data=None, data_dir=None, label=None, class_map=None, classes=None)
        about: dict = {
            "peer": self.id,
            "learner": self.kind,
            "missing": self.missing,
            "classes": list(self.classes),
            "config": config,
            "part": self.cfg.part,
        }
        if self.cfg.part is None:
            about["own_data"] = True
        if done < 0:
            self._report(0, {"about": about, "record": self._train(exp.epochs, 0).to_dict()})
        last = self.rounds
        if self.auto:  # rounds already done: the coordinator's barriers say whether the run went on
            for r in range(1, max(done, 0) + 1):
                self._hear_end(r)
                if self.stopped or self.makeup:
                    last = r
                    break
        for r in range(max(done, 0) + 1, last + 1):
            taught, arrived = self._teach(r)
            taught.skipped = sorted(set(everyone) - set(arrived))
            if r == 1:
                self.gallery = [(rep.student, g) for rep in taught.teach for g in rep.gallery[:1]]
                self._save_gallery()
            record = self._train(exp.retrain_epochs, r).merge(taught)
            data: dict = {"record": record.to_dict(), "stored_examples": len(self.peer.store)}
            if r == self.rounds or self.auto:  # with auto any round may be the last
                data["wire"] = self.wire()
            self._report(r, data)
            if self.auto:
                self._hear_end(r)  # the coordinator decides whether round r + 1 follows
                if self.stopped or self.makeup:
                    last = r
                    break
        if self.rounds == 0 and done < 0:
            self.metrics[0]["wire"] = self.wire()
            self._report(0, self.metrics[0])
        self._hear_end(last)
        while self.makeup and not self.stopped:  # make-up rounds, as the coordinator's last barrier said
            last += 1
            if last > done:
                self._makeup_round(last, list(self.makeup))
            self._hear_end(last)
        self._leave()
        return self.metrics

    def _hear_end(self, round: int) -> None:
        """Wait at round's STAGE_DONE barrier and keep what the coordinator said follows it."""
        passed = self.membership.wait(round, cpb.STAGE_DONE)
        self.stopped, self.makeup = passed.stopped, passed.makeup

    def _leave(self) -> None:
        """Tell the coordinator this peer heard the run's end (it serves on until every peer did, so
        a lost reply at the last barrier is asked again, not met by a coordinator gone). Best effort:
        the peer's run is complete either way, so 5 s of retries, then a warning."""
        coord = self.coord
        if coord is None:
            return
        fault("leave")
        request = cpb.LeaveRequest(peer=self.id)
        self.meter.record("control", request)
        try:
            self.coordinator_call("Leave", lambda t: coord.Leave(request, timeout=t), 10, patience=5.0)
        except UsageError as exc:
            log.warning("%s: %s", self.id, exc)

    def _teach(self, r: int, students: list[str] | None = None) -> tuple[PeerRound, list[str]]:
        """Publish model r, wait until the round's models are out, teach every peer that arrived in
        time (of `students` only, when given), wait until all taught. Returns the teaching record
        and the peers that arrived."""
        self.servicer.publish(r, self.peer.snapshot(r))
        fanout = self.cfg.experiment.fanout
        # a regular round: the coordinator plans who teaches whom; a make-up round plans among its students
        passed = self.membership.wait(r, cpb.STAGE_PUBLISHED, fanout if students is None else 0)
        arrived = passed.arrived
        if self.coord is not None:
            self._peer_list()  # a peer that restarted may listen elsewhere now
        chosen = arrived if students is None else [s for s in arrived if s in students]
        if passed.students is not None:
            chosen, fanout = [s for s in chosen if s in passed.students], 0
        # a peer that was down may be back, maybe at a new address: retry until half the deadline
        self.transport.deadline = time.monotonic() + self.cfg.round_deadline / 2
        taught = teach_students(
            self.peer,
            r,
            chosen,
            self.transport,
            deadline=self.transport.deadline,
            refresh=self._peer_list if self.coord is not None else None,
            fanout=fanout,
        )
        self.transport.deadline = None
        self.servicer.taught_round = r
        self.membership.wait(r, cpb.STAGE_TAUGHT)
        return taught, arrived

    def _makeup_round(self, r: int, students: list[str]) -> None:
        """A make-up round: every peer publishes and teaches, only `students` (peers skipped as
        students in an earlier round) are taught and retrain; the others keep their models and
        report the round with their evaluation unchanged."""
        taught, arrived = self._teach(r, students)
        taught.skipped = sorted(set(students) - set(arrived))
        if self.id in students:
            record = self._train(self.cfg.experiment.retrain_epochs, r)
        else:
            record = self._keep(r)
        record.merge(taught)
        self._report(r, {"record": record.to_dict(), "stored_examples": len(self.peer.store), "wire": self.wire()})

    def _keep(self, round: int) -> PeerRound:
        """This peer's record of a round it was not taught in: its model and evaluation as before."""
        before = PeerRound.from_dict(self.metrics[round - 1]["record"])
        record = PeerRound(self.id, round, train_size=before.train_size, evaluation=before.evaluation)
        save_checkpoint(self.cfg.state_dir / "checkpoints", round, self.peer.learner.to_blob())
        return record

    def wire(self) -> dict:
        return {
            "bytes_sent": self.meter.sent,
            "payload_bytes": self.meter.payload,
            "by_kind": dict(self.meter.by_kind),
            "payload_by_kind": dict(self.meter.payload_by_kind),
            "refused": len(self.servicer.refused),
            "peak_rss_mb": peak_rss_mb(),
            "resident_mb": resident_mb(),
        }

    def _save_gallery(self) -> None:
        """Private sources beside the counterfactuals sent, for this peer's operator only; never sent."""
        if not self.gallery:
            return
        np.savez(
            self.cfg.state_dir / "gallery.npz",
            students=np.array([s for s, _ in self.gallery]),
            sources=np.stack([g[0] for _, g in self.gallery]),
            counterfactuals=np.stack([g[1] for _, g in self.gallery]),
            labels=np.array([g[2] for _, g in self.gallery]),
        )

    def stop(self) -> None:
        self._stopped.set()
        self.transport.close()
        self.server.stop(grace=2).wait()
        self.examples.close()
