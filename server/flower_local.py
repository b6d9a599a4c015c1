"""Flower on one machine: a SuperLink (simulation or deployment), SuperNodes and `flwr run`.

For tests and benchmarks, and to try the deployment engine before spreading it over machines.
Everything binds to free loopback ports, keeps its state under a given directory (FLWR_HOME),
never installs dependencies at run time, and is stopped (its whole process group) on exit.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flower_env(home: Path) -> dict:
    env = dict(os.environ)
    env.update({
        "FLWR_HOME": str(home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        # the app and Ray workers import this checkout's peer/ and server/
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])]),
    })
    return env


def _stop(proc: subprocess.Popen) -> None:
    """Stop a process we started and everything it started (its own process group)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    else:  # the leader is gone; its children may not be
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _wait_healthy(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"flower-superlink exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).is_success:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"flower-superlink not healthy on port {port} within {timeout} s")


class Flower:
    """A SuperLink on a free port, the CLI's connection to it, and its SuperNodes."""

    def __init__(self, tmp: Path, simulation: bool):
        self.tmp = Path(tmp)
        self.home = tmp / "flwr-home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.env = flower_env(self.home)
        self.port = free_port()
        self.simulation = simulation
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "loopback"\n\n[superlink.loopback]\naddress = "127.0.0.1:{self.port}"\ninsecure = true\n')

    def _spawn(self, args: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
        out = open(log, "w")
        proc = subprocess.Popen(args, env=env or self.env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=self.tmp)
        out.close()
        self.procs.append(proc)
        self.logs.append(log)
        return proc

    def start_superlink(self) -> None:
        args = [str(BIN / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(self.port),
                "--disable-runtime-dependency-installation", "--database", str(self.tmp / "superlink.db")]
        if self.simulation:
            args.append("--simulation")
        log = self.tmp / "superlink.log"
        proc = self._spawn(args, log)
        _wait_healthy(self.port, proc, log)

    def start_supernode(self, partition: int, partitions: int, **node_config: str) -> None:
        home = self.tmp / f"supernode-{partition}"
        home.mkdir(exist_ok=True)
        env = {**self.env, "FLWR_HOME": str(home)}
        config = " ".join([f"partition-id={partition}", f"num-partitions={partitions}",
                           *(f"{k}='{v}'" for k, v in node_config.items())])
        self._spawn([str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{self.port}",
                     "--port", str(free_port()), "--node-config", config],
                    self.tmp / f"supernode-{partition}.log", env)

    def run(self, run_config: dict, federation_config: str | None = None,
            timeout: float | None = 240, capture: bool = True) -> subprocess.CompletedProcess:
        """`flwr run . loopback --stream` from the repository root."""
        def fmt(v):
            return f'"{v}"' if isinstance(v, str) else str(v)
        args = [str(BIN / "flwr"), "run", ".", "loopback", "--stream",
                "--run-config", " ".join(f"{k}={fmt(v)}" for k, v in run_config.items())]
        if federation_config:
            args += ["--federation-config", federation_config]
        return subprocess.run(args, env=self.env, cwd=ROOT, capture_output=capture, text=True, timeout=timeout)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            _stop(proc)
        self.procs.clear()

    def log_text(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in self.logs if p.exists())


@contextmanager
def flower(tmp: Path, simulation: bool) -> Iterator[Flower]:
    fl = Flower(tmp, simulation)
    try:
        fl.start_superlink()
        yield fl
    finally:
        fl.stop()
