"""Flower on one machine: a SuperLink (simulation or deployment), SuperNodes and `flwr run`.

For tests and benchmarks, and to try the deployment engine before spreading it over machines.
Everything binds to free loopback ports, keeps its state under a given directory (FLWR_HOME),
never installs dependencies at run time, and is stopped (its whole process group) on exit.
With tls=True the SuperLink serves HTTPS with a certificate from `ckd certs` (a new CA in
tmp/certs), and the SuperNodes and `flwr run` verify it against that CA, as README's recipe
for separate machines does. With node_auth=True as well, the SuperLink admits only SuperNodes
whose public key was registered with `flwr supernode register` (Flower's CLI-managed SuperNode
authentication): make a key pair per SuperNode with supernode_key, register its public half with
Flower.register, and start the SuperNode with the private half (start_supernode(key=...)).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from peer.grpc.tls import make_certs

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flower_env(home: Path) -> dict:
    env = dict(os.environ)
    env.update(
        {
            "FLWR_HOME": str(home),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            # the app and Ray workers import this checkout's peer/ and server/
            "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])]),
        }
    )
    return env


def supernode_key(path: Path, ssh_keygen: bool = False) -> Path:
    """An EC P-384 key pair for one SuperNode, in OpenSSH format: the private key at PATH, the
    public key at PATH.pub (returned). With ssh_keygen, made by README's command
    `ssh-keygen -t ecdsa -b 384 -N "" -f PATH` (OpenSSH must be installed); else the same with
    the `cryptography` package."""
    pub = path.with_name(path.name + ".pub")
    if ssh_keygen:
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-f", str(path)],
            check=True,
            capture_output=True,
            timeout=30,
        )
        return pub
    key = ec.generate_private_key(ec.SECP384R1())
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    )
    path.chmod(0o600)
    pub.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n"
    )
    return pub


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


def _wait_healthy(port: int, proc: subprocess.Popen, log: Path, ca: Path | None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    url = f"{'https' if ca else 'http'}://127.0.0.1:{port}/health"
    verify = ssl.create_default_context(cafile=str(ca)) if ca else True
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"flower-superlink exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url, timeout=1, verify=verify).is_success:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"flower-superlink not healthy on port {port} within {timeout} s")


class Flower:
    """A SuperLink on a free port, the CLI's connection to it, and its SuperNodes."""

    def __init__(self, tmp: Path, simulation: bool, tls: bool = False, node_auth: bool = False):
        if node_auth and not tls:
            raise ValueError("Flower authenticates SuperNodes over TLS only")
        self.tmp = Path(tmp)
        self.home = tmp / "flwr-home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.env = flower_env(self.home)
        self.port = free_port()
        self.simulation = simulation
        self.procs: list[subprocess.Popen] = []
        self.node_auth = node_auth
        self.supernodes: dict[int | str, subprocess.Popen] = {}
        self.logs: list[Path] = []
        self.certs = self.tmp / "certs" if tls else None
        if self.certs:
            make_certs(self.certs, ["superlink"], hosts=["127.0.0.1", "localhost"])
            security = f'root-certificates = "{self.certs / "ca.pem"}"'
        else:
            security = "insecure = true"
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "loopback"\n\n'
            f'[superlink.loopback]\naddress = "127.0.0.1:{self.port}"\n{security}\n'
        )

    @property
    def ca(self) -> Path | None:
        return self.certs / "ca.pem" if self.certs else None

    def _spawn(self, args: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
        out = open(log, "w")
        proc = subprocess.Popen(
            args, env=env or self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.tmp
        )
        out.close()
        self.procs.append(proc)
        self.logs.append(log)
        return proc

    def start_superlink(self) -> None:
        tls = (
            [
                "--ssl-ca-certfile",
                str(self.ca),
                "--ssl-certfile",
                str(self.certs / "superlink.pem"),
                "--ssl-keyfile",
                str(self.certs / "superlink.key"),
            ]
            if self.certs
            else ["--insecure"]
        )
        args = [
            str(BIN / "flower-superlink"),
            *tls,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--disable-runtime-dependency-installation",
            "--database",
            str(self.tmp / "superlink.db"),
        ]
        if self.simulation:
            args.append("--simulation")
        if self.node_auth:
            args.append("--enable-supernode-auth")
        log = self.tmp / "superlink.log"
        proc = self._spawn(args, log)
        _wait_healthy(self.port, proc, log, self.ca)

    def start_supernode(
        self, partition: int, partitions: int, key: Path | None = None, name: str | None = None, **node_config: str
    ) -> subprocess.Popen:
        """A SuperNode holding part `partition` of a shared split (`node_config` adds keys, e.g. data-dir),
        authenticating with the private `key` if given; it is supernodes[name] (default: the partition)."""
        config: dict[str, int | str] = {"partition-id": partition, "num-partitions": partitions, **node_config}
        return self.start_node(name or partition, config, key)

    def start_node(
        self, name: int | str, node_config: dict[str, int | str], key: Path | None = None
    ) -> subprocess.Popen:
        """A SuperNode with this node config (strings quoted), its state and log named after `name`."""
        home = self.tmp / f"supernode-{name}"
        home.mkdir(exist_ok=True)
        env = {**self.env, "FLWR_HOME": str(home)}
        config = " ".join(f"{k}='{v}'" if isinstance(v, str) else f"{k}={v}" for k, v in node_config.items())
        tls = ["--root-certificates", str(self.ca)] if self.ca else ["--insecure"]
        args = [
            str(BIN / "flower-supernode"),
            *tls,
            "--superlink",
            f"127.0.0.1:{self.port}",
            "--port",
            str(free_port()),
            "--node-config",
            config,
        ]
        if key is not None:
            args += ["--auth-supernode-private-key", str(key)]
        proc = self._spawn(args, self.supernode_log(name), env)
        self.supernodes[name] = proc
        return proc

    def supernode_log(self, name: str | int) -> Path:
        return self.tmp / f"supernode-{name}.log"

    def cli(self, *args: str, timeout: float = 60) -> dict:
        """`flwr ARGS... loopback --format json` against this SuperLink: its JSON answer."""
        res = subprocess.run(
            [str(BIN / "flwr"), *args, "loopback", "--format", "json"],
            env=self.env,
            cwd=self.tmp,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        try:
            return json.loads(res.stdout[res.stdout.index("{") :])
        except ValueError:
            problem = f"flwr {' '.join(args)} exited with {res.returncode}: {res.stdout}{res.stderr}"
            raise RuntimeError(problem) from None

    def register(self, public_key: Path) -> int:
        """`flwr supernode register PUBLIC_KEY`: the node id the SuperLink gives that key."""
        answer = self.cli("supernode", "register", str(public_key))
        assert answer.get("success"), answer
        return int(answer["node-id"])

    def unregister(self, node_id: int) -> None:
        """`flwr supernode unregister NODE_ID`."""
        answer = self.cli("supernode", "unregister", str(node_id))
        assert answer.get("success"), answer

    def nodes(self) -> list[dict]:
        """`flwr supernode list`: every SuperNode the SuperLink knows, with its status."""
        answer = self.cli("supernode", "list")
        assert answer.get("success"), answer
        return answer["nodes"]

    def _run_args(self, run_config: dict, federation_config: str | None) -> list[str]:
        """`flwr run . loopback --stream` with this run config."""

        def fmt(v):
            return f'"{v}"' if isinstance(v, str) else str(v)

        args = [
            str(BIN / "flwr"),
            "run",
            ".",
            "loopback",
            "--stream",
            "--run-config",
            " ".join(f"{k}={fmt(v)}" for k, v in run_config.items()),
        ]
        if federation_config:
            args += ["--federation-config", federation_config]
        return args

    def run(
        self, run_config: dict, federation_config: str | None = None, timeout: float | None = 240, capture: bool = True
    ) -> subprocess.CompletedProcess:
        """`flwr run` from the repository root, to its end."""
        return subprocess.run(
            self._run_args(run_config, federation_config),
            env=self.env,
            cwd=ROOT,
            capture_output=capture,
            text=True,
            timeout=timeout,
        )

    def start_run(self, run_config: dict, federation_config: str | None = None) -> subprocess.Popen:
        """`flwr run` in the background, its log (stdout and stderr) on the returned process's stdout."""
        proc = subprocess.Popen(
            self._run_args(run_config, federation_config),
            env=self.env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.supernodes.values():  # a stopped (SIGSTOP) ClientApp would ignore SIGTERM
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
        for proc in reversed(self.procs):
            _stop(proc)
        self.procs.clear()

    def log_text(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in self.logs if p.exists())


@contextmanager
def flower(tmp: Path, simulation: bool, tls: bool = False, node_auth: bool = False) -> Iterator[Flower]:
    fl = Flower(tmp, simulation, tls, node_auth)
    try:
        fl.start_superlink()
        yield fl
    finally:
        fl.stop()
