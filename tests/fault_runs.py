"""Runs of real `ckd server` and `ckd peer` processes on loopback with faults injected, and the
audit of what they left behind; used by tests/test_faults.py and bench/faults.py.

A fault is a CKD_FAULT_AT value (peer/faults.py) given to one start of one process: the process
kills itself with SIGKILL at that point (or stops with SIGSTOP: the supervisor continues it once
`resume_when(run)` holds). A killed process is started again at once on the same state directory and
the same arguments, with the next fault of its list if any. The coordinator keeps its state in a
directory and listens on the same port again; peers listen on a new port and register it.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from peer.config import ExperimentConfig

ROOT = Path(__file__).resolve().parent.parent

# small enough for 2 cores, big enough that every teacher sends counterfactuals to every student
# (tests/test_grpc_run.py's run: the in-process engine gives the same accuracies)
CFG = ExperimentConfig(
    peers=3, rounds=1, train_per_peer=300, epochs=3, retrain_epochs=1, test_limit=1000, max_per_student=60, seed=0
)


def experiment_argv(cfg: ExperimentConfig) -> list[str]:
    """Every option of `cfg` as flags of `ckd peer` (the number of peers apart)."""
    argv = []
    for k, v in asdict(cfg).items():
        if v is not None and k != "peers":
            argv += ["--" + k.replace("_", "-"), str(v)]
    return argv


def launch(cfg: ExperimentConfig, root: Path, timeout: float) -> subprocess.CompletedProcess:
    """`ckd launch` of `cfg` undisturbed, results under root/out and peers' state under root/state."""
    argv = ["launch", "--out", str(root / "out"), "--state-dir", str(root / "state"), "--quiet"]
    argv += ["--peers", str(cfg.peers), *experiment_argv(cfg)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *argv], env=env, capture_output=True, text=True, timeout=timeout
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Proc:
    name: str
    argv: list[str]
    faults: list[str]  # CKD_FAULT_AT of each start, in order; starts beyond the list get none
    starts: int = 0
    popen: subprocess.Popen | None = None
    log: Path | None = None
    stopped_at: float | None = None


@dataclass
class Outcome:
    """What a run did: the faults that fired, its results.json, and where its state is."""

    root: Path
    peers: list[str]
    results: dict
    kills: list[str] = field(default_factory=list)  # "NAME: POINT" of every SIGKILL seen
    # per kill, the half-written files the killed process left in its state directory: path -> bytes
    leftovers: list[dict[str, int]] = field(default_factory=list)
    stops: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def state(self, peer: str) -> Path:
        return self.root / "state" / peer

    def final_accuracies(self) -> dict[str, float]:
        return {p["id"]: p["accuracy_by_round"][-1] for p in self.results["peers"]}

    def median(self) -> float:
        return float(statistics.median(self.final_accuracies().values()))


class FaultRun:
    """One coordinator and `peers` peer processes, mutual TLS on loopback; `faults` maps a process
    name (coordinator, peer-K) to the CKD_FAULT_AT of its successive starts. `coordinator_state`
    False: the coordinator keeps no state directory (a restart forgets the run)."""

    def __init__(
        self,
        root: Path,
        cfg: ExperimentConfig = CFG,
        faults: dict[str, list[str]] | None = None,
        round_deadline: float = 120.0,
        heartbeat_timeout: float = 120.0,
        resume_when: Callable[[FaultRun], bool] | None = None,
        coordinator_state: bool = True,
        makeup_rounds: int = 1,
    ) -> None:
        from peer.grpc.tls import make_certs

        self.root = Path(root)
        peers, rounds = cfg.peers, cfg.rounds
        self.ids = [f"peer-{k}" for k in range(peers)]
        self.resume_when = resume_when or (lambda run: True)
        self.port = free_port()
        certs = self.root / "certs"
        make_certs(certs, ["coordinator", *self.ids])
        faults = faults or {}
        common = ["--certs", str(certs)]
        self.procs = [
            Proc(
                "coordinator",
                [
                    *("-m", "server.cli", "server", "--listen", f"127.0.0.1:{self.port}"),
                    *("--rounds", str(rounds), "--min-peers", str(peers), "--round-deadline", str(round_deadline)),
                    *("--expect-peers", ",".join(self.ids), "--idle-timeout", "300"),
                    *("--heartbeat-timeout", str(heartbeat_timeout), "--makeup-rounds", str(makeup_rounds)),
                    *("--out", str(self.root / "out")),
                    *(("--state-dir", str(self.root / "state" / "coordinator")) if coordinator_state else ()),
                    *common,
                ],
                list(faults.get("coordinator", [])),
            )
        ]
        for k, pid in enumerate(self.ids):
            argv = [
                *("-m", "peer.cli", "peer", "--part", str(k), "--peers", str(peers)),
                *("--coordinator", f"127.0.0.1:{self.port}", "--listen", "127.0.0.1:0"),
                *("--state-dir", str(self.root / "state" / pid), "--threads", "1", "--connect-timeout", "60"),
                *common,
                *experiment_argv(cfg),
            ]
            self.procs.append(Proc(pid, argv, list(faults.get(pid, []))))

    def _start(self, proc: Proc) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CKD_") or k == "CKD_DATA_DIR"}
        env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", GRPC_VERBOSITY="ERROR")
        fault = proc.faults[proc.starts] if proc.starts < len(proc.faults) else ""
        if fault:
            env["CKD_FAULT_AT"] = fault
        proc.log = self.root / "logs" / f"{proc.name}.{proc.starts}.log"
        proc.log.parent.mkdir(parents=True, exist_ok=True)
        with open(proc.log, "w") as log:
            proc.popen = subprocess.Popen(
                [sys.executable, *proc.argv], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT
            )
        proc.starts += 1

    def run(self, timeout: float = 600.0) -> Outcome:
        """Start everything, restart what is killed, continue what stopped; returns when the
        coordinator wrote results.json and exited. An unexpected exit fails with its log's tail."""
        t0 = time.monotonic()
        kills: list[str] = []
        leftovers: list[dict[str, int]] = []
        stops: list[str] = []
        for proc in self.procs:
            self._start(proc)
        try:
            while True:
                if time.monotonic() - t0 > timeout:
                    raise TimeoutError(f"run not done after {timeout:g} s; logs in {self.root / 'logs'}")
                for proc in self.procs:
                    assert proc.popen is not None and proc.log is not None
                    code = proc.popen.poll()
                    if code is None:
                        if proc.stopped_at is None and _stopped(proc.popen.pid):
                            proc.stopped_at = time.monotonic()
                            stops.append(f"{proc.name}: {_fault_line(proc.log)}")
                        elif proc.stopped_at is not None and self.resume_when(self):
                            os.kill(proc.popen.pid, signal.SIGCONT)
                            proc.stopped_at = None
                        continue
                    if code == -signal.SIGKILL:
                        kills.append(f"{proc.name}: {_fault_line(proc.log)}")
                        state = self.root / "state" / proc.name
                        leftovers.append({str(f.relative_to(state)): f.stat().st_size for f in state.rglob(".*.tmp")})
                        self._start(proc)
                    elif code != 0:
                        tail = "\n".join(proc.log.read_text().splitlines()[-15:])
                        raise RuntimeError(f"{proc.name} exited with {code}:\n{tail}")
                coordinator = self.procs[0].popen
                assert coordinator is not None
                if coordinator.poll() == 0 and all(p.popen is not None and p.popen.poll() == 0 for p in self.procs):
                    break
                time.sleep(0.1)
        finally:
            for proc in self.procs:
                if proc.popen is not None and proc.popen.poll() is None:
                    proc.popen.send_signal(signal.SIGCONT)
                    proc.popen.kill()
                    proc.popen.wait(timeout=30)
        results = json.loads((self.root / "out" / "results.json").read_text())
        return Outcome(self.root, self.ids, results, kills, leftovers, stops, time.monotonic() - t0)

    def coordinator_state(self) -> dict:
        """The coordinator's state file as it is now ({} while there is none)."""
        path = self.root / "state" / "coordinator" / "coordinator.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def released(self, round: int, stage: int) -> dict | None:
        """The barrier (round, stage) as the coordinator recorded it once released, else None."""
        for r, s, barrier in self.coordinator_state().get("barriers", []):
            if (r, s) == (round, stage):
                return barrier
        return None


def _stopped(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] == "T"


def _fault_line(log: Path) -> str:
    lines = [line for line in log.read_text().splitlines() if line.startswith("fault: ")]
    return lines[-1][len("fault: ") :] if lines else "killed, no fault point logged"


# -- the audit ---------------------------------------------------------------------------------------
@dataclass
class Audit:
    acknowledged: int  # distinct (student, batch id) some teacher saw acknowledged
    stored: int  # batches in the students' stores
    duplicates: int  # a batch id stored twice, or the same examples stored under two ids
    lost: int  # acknowledged but not stored
    unacknowledged: int  # stored but never seen acknowledged by its teacher
    problems: list[str]  # anything read back that is not whole

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def audit(outcome: Outcome) -> Audit:
    """Every batch a teacher saw acknowledged (its acked.jsonl) against the students' SQLite stores,
    and every file a restarted process reads back (metrics, checkpoints, the store, the
    coordinator's state) read back whole."""
    from peer.core.sqlstore import SqliteExampleStore
    from peer.grpc.node import load_checkpoint

    result = audit_stores({pid: outcome.state(pid) for pid in outcome.peers})
    for pid in outcome.peers:
        path = outcome.state(pid) / "examples.sqlite"
        store = SqliteExampleStore(path)
        try:
            for batch in store.batches():  # Fashion-MNIST images, its 10 classes
                batch.validate((28, 28), batch.classes)
        except Exception as exc:  # noqa: BLE001  (counted as a problem)
            result.problems.append(f"{path}: {type(exc).__name__}: {exc}")
        finally:
            store.close()
        state = outcome.state(pid)
        try:
            metrics = json.loads((state / "metrics.json").read_text())
            for r in metrics:
                load_checkpoint(state / "checkpoints", int(r))
        except Exception as exc:  # noqa: BLE001
            result.problems.append(f"{state}: {type(exc).__name__}: {exc}")
    coord = outcome.root / "state" / "coordinator" / "coordinator.json"
    try:
        json.loads(coord.read_text())
    except Exception as exc:  # noqa: BLE001
        result.problems.append(f"{coord}: {type(exc).__name__}: {exc}")
    return result


def audit_stores(states: dict[str, Path]) -> Audit:
    """Every batch a teacher saw acknowledged (the acked.jsonl in its state directory) against the
    students' SQLite stores (examples.sqlite in theirs); `states` maps peer id -> state directory."""
    from peer.durable import read_lines
    from peer.grpc.node import ACKED

    acked: set[tuple[str, str, int, int]] = set()
    for pid, state in states.items():
        for line in read_lines(state / ACKED):
            a = json.loads(line)
            assert a["sender"] == pid, (pid, a)
            acked.add((a["student"], a["sender"], int(a["round"]), int(a["seq"])))
    stored: list[tuple[str, str, int, int]] = []
    contents: dict[str, list[str]] = {}
    problems: list[str] = []
    for pid, state in states.items():
        path = state / "examples.sqlite"
        db = sqlite3.connect(path)
        try:
            check = db.execute("PRAGMA integrity_check").fetchone()[0]
            if check != "ok":
                problems.append(f"{path}: {check}")
            rows = db.execute("SELECT sender, round, seq, x, y FROM batches").fetchall()
        finally:
            db.close()
        for sender, r, seq, x, y in rows:
            stored.append((pid, sender, int(r), int(seq)))
            contents.setdefault(pid, []).append(hashlib.sha256(bytes(x) + b"|" + bytes(y)).hexdigest())
    ids = set(stored)
    same_content = sum(len(v) - len(set(v)) for v in contents.values())
    return Audit(
        acknowledged=len(acked),
        stored=len(stored),
        duplicates=len(stored) - len(ids) + same_content,
        lost=len(acked - ids),
        unacknowledged=len(ids - acked),
        problems=problems,
    )
