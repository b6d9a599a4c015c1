"""No unbounded wait: a call to a peer process that stopped (SIGSTOP) ends at the round's teaching
deadline and succeeds once it runs again; `ckd server` gives up when no peer calls it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from peer.grpc.tls import Security, make_certs
from peer.grpc.transport import GrpcTransport
from peer.round import PeerUnreachable
from tests import hostile_server
from tests.fuzz_cases import LIMITS, RECEIVER, SENDER

pytestmark = pytest.mark.grpc

ROOT = Path(__file__).resolve().parent.parent


def test_a_call_to_a_stopped_peer_ends_at_the_deadline_and_works_once_it_runs(tmp_path):
    import json

    certs = tmp_path / "certs"
    make_certs(certs, ["coordinator", RECEIVER, SENDER])
    with open(tmp_path / "server.log", "w") as err:
        proc = hostile_server.start(certs, tmp_path / "state", err, {**os.environ, "OMP_NUM_THREADS": "1"})
    transport = GrpcTransport(SENDER, {}, Security.from_dir(SENDER, certs, False), LIMITS, timeout=300)
    try:
        ports = json.loads(proc.stdout.readline())
        transport.set_addresses({RECEIVER: f"127.0.0.1:{ports['peer']}"})
        # round 7 was never published: a running peer says so at once (its models exceed the test's caps)
        with pytest.raises(PeerUnreachable, match="NOT_FOUND"):
            transport.get_model(RECEIVER, 7)
        os.kill(proc.pid, signal.SIGSTOP)  # slow beyond any deadline: the process does not run at all
        transport.deadline = time.monotonic() + 3
        t0 = time.monotonic()
        with pytest.raises(PeerUnreachable, match="DEADLINE_EXCEEDED"):
            transport.get_model(RECEIVER, 7)
        assert time.monotonic() - t0 < 15  # the deadline, not the 300 s timeout
        os.kill(proc.pid, signal.SIGCONT)
        transport.deadline = time.monotonic() + 30
        with pytest.raises(PeerUnreachable, match="NOT_FOUND"):
            transport.get_model(RECEIVER, 7)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        transport.close()
        proc.stdin.close()
        proc.wait(timeout=30)


def test_server_gives_up_when_no_peer_calls(tmp_path):
    out = tmp_path / "out"
    t0 = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", "server", "--insecure", "--listen", "127.0.0.1:0"]
        + ["--idle-timeout", "2", "--out", str(out)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and "no peer called the coordinator for 2 s" in err[0], err
    assert time.monotonic() - t0 < 60 and not out.exists()
