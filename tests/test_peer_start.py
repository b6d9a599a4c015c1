"""A peer started with a wrong coordinator address, certificate or data path exits at start with
one line on stderr and exit code 2, writing nothing, instead of hanging in round 1. Each case is
a real `ckd peer` process (all started at once, they cost one start-up together)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from peer.grpc.tls import Security, make_certs
from server.coordinator import Coordinator, serve_coordinator
from tests.own_sites import SITES, env, write_sites

SITE = SITES[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CASES = {
    # name: (argv changes, what the one line says)
    "nothing listens at the coordinator address": (
        {"--coordinator": "127.0.0.1:{free}"},
        "coordinator 127.0.0.1:{free} did not answer within 3 s",
    ),
    "coordinator address without a port": (
        {"--coordinator": "coordinator.example"},
        "--coordinator 'coordinator.example' is not HOST:PORT",
    ),
    "coordinator of another CA": (
        {"--coordinator": "127.0.0.1:{other}"},
        "coordinator 127.0.0.1:{other} did not answer within 3 s",
    ),
    "certificate directory missing": ({"--certs": "{tmp}/no-such-dir"}, "missing certificate file(s)"),
    "certificate for another peer": ({"--id": "site-b"}, "is a certificate for 'site-a', not 'site-b'"),
    "data file missing": ({"--data": "{tmp}/no-such.csv"}, "--data {tmp}/no-such.csv does not exist"),
    "label column missing": ({"--label": "nope"}, "has no label column 'nope'"),
    "class map names a class the file lacks": (
        {"--class-map": "X=malignant"},
        "--class-map names class(es) 'X', which --data",
    ),
}


@pytest.fixture(scope="module")
def started(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, float, dict]]:
    tmp = tmp_path_factory.mktemp("start")
    data = write_sites(tmp / "data")[SITE.id]
    make_certs(tmp / "certs", ["coordinator", SITE.id])
    (tmp / "certs" / "site-b.pem").write_bytes((tmp / "certs" / "site-a.pem").read_bytes())  # a copy, wrongly named
    (tmp / "certs" / "site-b.key").write_bytes((tmp / "certs" / "site-a.key").read_bytes())
    make_certs(tmp / "other", ["coordinator"])  # a coordinator whose CA is not this peer's
    other = Coordinator(Security.from_dir("coordinator", tmp / "other", False), 1, 3)
    server, other_port = serve_coordinator(other, "127.0.0.1:0")
    fmt = {"free": _free_port(), "other": other_port, "tmp": tmp}
    base = {
        "--id": SITE.id,
        "--data": str(data),
        "--label": SITE.label,
        "--coordinator": "127.0.0.1:1",
        "--certs": str(tmp / "certs"),
        "--connect-timeout": "3",
        "--learners": "mlp",
    }
    procs = {}
    try:
        for name, (changes, _) in CASES.items():
            argv = {**base, **{k: v.format(**fmt) for k, v in changes.items()}}
            cmd = [
                sys.executable,
                "-m",
                "peer.cli",
                "peer",
                *(x for kv in argv.items() for x in kv),
                "--state-dir",
                str(tmp / name.replace(" ", "-") / "state"),
            ]
            procs[name] = (
                subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
                time.monotonic(),
            )
        done = {}
        for name, (p, t) in procs.items():
            out, err = p.communicate(timeout=300)
            done[name] = (subprocess.CompletedProcess(p.args, p.returncode, out, err), time.monotonic() - t, fmt)
        return done
    finally:
        for p, _ in procs.values():
            if p.poll() is None:
                p.kill()
        server.stop(grace=0)


@pytest.mark.grpc
@pytest.mark.parametrize("case", list(CASES))
def test_a_peer_set_up_wrong_exits_at_start_with_one_line(case, started):
    done, seconds, fmt = started[case]
    expected = CASES[case][1].format(**fmt)
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert len(err) == 1 and err[0].startswith("ckd: error: ") and expected in err[0], err
    assert "serving on" not in done.stdout  # it never started serving, let alone round 0
    assert not (fmt["tmp"] / case.replace(" ", "-") / "state").exists()


@pytest.mark.grpc
def test_a_coordinator_that_answers_late_is_waited_for(tmp_path):
    """The connect timeout is a bound, not a race: a coordinator started a moment after the peer
    is found (peers and coordinator may come up in any order)."""
    from peer.grpc.node import wait_for_coordinator

    make_certs(tmp_path, ["coordinator", "site-a"])
    port = _free_port()
    coordinator = Coordinator(Security.from_dir("coordinator", tmp_path, False), 1, 3)
    servers = []

    def start_later():
        time.sleep(1.5)
        servers.append(serve_coordinator(coordinator, f"127.0.0.1:{port}")[0])

    threading.Thread(target=start_later, daemon=True).start()
    t = time.monotonic()
    wait_for_coordinator(Security.from_dir("site-a", tmp_path, False), f"127.0.0.1:{port}", timeout=20)
    assert 1.0 < time.monotonic() - t < 20
    for s in servers:
        s.stop(grace=0)


def test_insecure_peer_pointed_at_something_else_is_told_so(tmp_path):
    """Over plaintext, a gRPC server that is not a coordinator (a peer) is named as such at once."""
    from grpc_health.v1 import health, health_pb2_grpc

    from peer.errors import UsageError
    from peer.grpc.node import wait_for_coordinator
    from peer.grpc.service import serve
    from peer.grpc.wire import Limits

    server, port, _ = serve(
        [(lambda servicer, s: health_pb2_grpc.add_HealthServicer_to_server(servicer, s), health.HealthServicer())],
        Security("x"),
        "127.0.0.1:0",
        Limits(),
    )
    try:
        with pytest.raises(UsageError, match="answers but is not a ckd coordinator"):
            wait_for_coordinator(Security("site-a"), f"127.0.0.1:{port}", timeout=5)
    finally:
        server.stop(grace=0)


def test_tls_files_that_are_not_what_they_claim_are_refused(tmp_path):
    from peer.errors import UsageError

    make_certs(tmp_path / "a", ["site-a"])
    make_certs(tmp_path / "b", ["site-a"])
    (tmp_path / "a" / "site-a.key").write_bytes((tmp_path / "b" / "site-a.key").read_bytes())
    with pytest.raises(UsageError, match="is not the key of"):
        Security.from_dir("site-a", tmp_path / "a", False)
    (tmp_path / "a" / "site-a.pem").write_bytes((tmp_path / "b" / "site-a.pem").read_bytes())
    with pytest.raises(UsageError, match="was not signed by the CA"):
        Security.from_dir("site-a", tmp_path / "a", False)
    (tmp_path / "a" / "ca.pem").write_text("not a certificate\n")
    with pytest.raises(UsageError, match=r"ca.pem is not a PEM certificate"):
        Security.from_dir("site-a", tmp_path / "a", False)
    assert Path(tmp_path / "b" / "site-a.pem").exists()
