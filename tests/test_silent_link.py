"""A connection that goes silent (a link cut: packets lost, sockets still open) does not hold a call
until its deadline: keepalive probes close it, the call fails UNAVAILABLE and is retried on a new
connection. The silence is made by a TCP relay on loopback that stops passing bytes on the
connections it holds while new ones pass (the link is back, the old connection is still stuck in
TCP's retransmission backoff)."""

from __future__ import annotations

import socket
import threading
import time

import grpc
import numpy as np
import pytest

from peer.core.blob import ExampleBatch
from peer.core.peer import Peer
from peer.core.sqlstore import SqliteExampleStore
from peer.grpc import transport as transport_module
from peer.grpc.service import (
    KEEPALIVE_MS,
    KEEPALIVE_TIMEOUT_MS,
    MAX_RECONNECT_BACKOFF_MS,
    PeerServicer,
    grpc_options,
    serve_peer,
)
from peer.grpc.tls import Security, make_certs
from peer.grpc.transport import GrpcTransport, PeerUnreachable
from peer.grpc.wire import Limits
from peer.learners import TrainConfig, make_learner

CLASSES = ("c0", "c1", "c2", "c3")


class Relay:
    """Passes TCP bytes between loopback clients and `upstream`; `silence()` drops every byte of
    the connections open now, both ways, and leaves their sockets open."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections: list[tuple[socket.socket, socket.socket, threading.Event]] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            silent = threading.Event()
            self.connections.append((client, server, silent))
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(src, dst, silent), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket, silent: threading.Event) -> None:
        try:
            while data := src.recv(65536):
                if not silent.is_set():
                    dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            s.close()

    def silence(self) -> None:
        for _, _, silent in self.connections:
            silent.set()

    def close(self) -> None:
        self.listener.close()
        for client, server, _ in self.connections:
            client.close()
            server.close()


@pytest.fixture
def relayed(tmp_path):
    """peer-0 serving a model of round 1 with mTLS, and peer-1's transport to it through a Relay."""
    make_certs(tmp_path / "certs", ["peer-0", "peer-1"])
    rng = np.random.default_rng(0)
    learner = make_learner("mlp", (8, 8), CLASSES, TrainConfig(epochs=1, seed=0))
    store = SqliteExampleStore(tmp_path / "examples.sqlite")
    peer = Peer("peer-0", rng.random((20, 8, 8), dtype=np.float32), np.arange(20) % 4, CLASSES, learner, store=store)
    servicer = PeerServicer(peer, Security.from_dir("peer-0", tmp_path / "certs", False), Limits())
    servicer.publish(1, learner.to_blob())
    server, port = serve_peer(servicer, "127.0.0.1:0", workers=4)
    relay = Relay(port)
    client = GrpcTransport(
        "peer-1", {"peer-0": f"127.0.0.1:{relay.port}"}, Security.from_dir("peer-1", tmp_path / "certs", False)
    )
    yield client, relay, servicer
    client.close()
    relay.close()
    server.stop(grace=0).wait()
    store.close()


@pytest.mark.grpc
def test_calls_on_a_connection_gone_silent_are_retried_on_a_new_one(relayed):
    client, relay, servicer = relayed
    client.get_model("peer-0", 1)  # a connection open and working
    # keepalive notices the silence within KEEPALIVE + TIMEOUT, the retry connects afresh
    bound = (KEEPALIVE_MS + KEEPALIVE_TIMEOUT_MS + MAX_RECONNECT_BACKOFF_MS) / 1000 + 5
    client.deadline = time.monotonic() + 120  # the round's teaching lasts far longer than the bound
    batch = ExampleBatch(
        sender="peer-1",
        receiver="peer-0",
        round=1,
        seq=0,
        x=np.zeros((3, 8, 8), np.uint8),
        y=np.arange(3, dtype=np.int64),
        classes=CLASSES,
        distance=np.ones(3, np.float32),
    )
    calls = [lambda: client.get_model("peer-0", 1), lambda: client.push_examples("peer-0", batch)]
    for k, call in enumerate(calls):
        relay.silence()
        t0 = time.monotonic()
        got = call()
        took = time.monotonic() - t0
        assert took < bound, f"call {k} took {took:.1f} s on a silent connection (bound {bound:.0f} s)"
        assert len(relay.connections) == k + 2  # the retry came over a new connection
    assert got is True and servicer.peer.store.batch_count() == 1  # the push stored once


def test_channel_options_probe_silent_connections_and_servers_admit_the_probes():
    client = dict(grpc_options(Limits()))
    server = dict(grpc_options(Limits(), server=True))
    for options in (client, server):
        assert options["grpc.keepalive_time_ms"] == KEEPALIVE_MS
        assert options["grpc.keepalive_timeout_ms"] == options["grpc.http2.ping_timeout_ms"] == KEEPALIVE_TIMEOUT_MS
        assert options["grpc.keepalive_permit_without_calls"] == 1
        assert options["grpc.http2.max_pings_without_data"] == 0
    # a server answers pings more frequent than this with GOAWAY (too_many_pings): the client's are rarer
    assert server["grpc.http2.min_ping_interval_without_data_ms"] < client["grpc.keepalive_time_ms"]
    # a channel whose peer is back tries to connect again within seconds, not gRPC's default 2 minutes
    assert client["grpc.max_reconnect_backoff_ms"] == MAX_RECONNECT_BACKOFF_MS <= 10_000
    assert "grpc.max_reconnect_backoff_ms" not in server


class _Failed(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return "failed"


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED])
def test_an_attempt_that_ran_out_of_time_or_found_no_peer_is_retried_while_the_round_lasts(code, monkeypatch):
    monkeypatch.setattr(transport_module.time, "sleep", lambda s: None)
    client = GrpcTransport("peer-1", {}, Security("peer-1"), retries=3)
    calls = []

    def fails_twice():
        calls.append(client._timeout())
        if len(calls) < 3:
            raise _Failed(code)
        return "done"

    client.deadline = time.monotonic() + 60
    assert client._call("GetModel from peer-0 round 1", fails_twice) == "done" and len(calls) == 3
    # at the round's deadline nothing is tried again
    attempts = []

    def always_fails():
        attempts.append(client._timeout())
        raise _Failed(code)

    client.deadline = time.monotonic() + 0.05
    with pytest.raises(PeerUnreachable, match=code.name):
        client._call("GetModel from peer-0 round 1", always_fails)
    assert len(attempts) == 1


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT]
)
def test_a_refusal_is_not_retried(code):
    client = GrpcTransport("peer-1", {}, Security("peer-1"), retries=3)
    client.deadline = time.monotonic() + 60
    calls = []

    def refused():
        calls.append(1)
        raise _Failed(code)

    with pytest.raises(PeerUnreachable, match=code.name):
        client._call("PushExamples to peer-0 batch 1", refused)
    assert len(calls) == 1
