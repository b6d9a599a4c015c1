"""PeerService: a peer's models and example inbox on the network.

GetModel streams a published model; PushExamples takes one example batch, validates it, stores it
durably and only then acknowledges. Every refusal carries a status code and a message naming the
problem; nothing is stored and the server keeps serving.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from peer.core.blob import InvalidPayload, ModelBlob
from peer.core.peer import Peer
from peer.faults import fault
from peer.grpc.tls import Security, caller
from peer.grpc.wire import Limits, Malformed, PayloadTooLarge, decode_batch, encode_blob, tolerant
from protos.ckd.v1 import peer_pb2, peer_pb2_grpc

GRPC_FRAME = 5  # gRPC's per-message prefix: compressed flag and length
log = logging.getLogger("ckd.grpc")


@dataclass
class Meter:
    """Bytes this process sent on the wire (serialized messages) and the payload they carried.

    `taps` see every message sent, for audits.
    """

    sent: int = 0
    payload: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    payload_by_kind: dict[str, int] = field(default_factory=dict)
    taps: list[Callable[[str, object], None]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, kind: str, msg) -> None:
        size = msg.ByteSize() + GRPC_FRAME
        with self._lock:
            self.sent += size
            self.by_kind[kind] = self.by_kind.get(kind, 0) + size
        for tap in self.taps:
            tap(kind, msg)

    def add_payload(self, kind: str, nbytes: int) -> None:
        with self._lock:
            self.payload += nbytes
            self.payload_by_kind[kind] = self.payload_by_kind.get(kind, 0) + nbytes

    def wrap(self, kind: str, messages):
        for msg in messages:
            self.record(kind, msg)
            yield msg


def after_first(messages, point: str, settle: float = 0.0):
    """`messages` as they come, with the fault point `point` once the first went and before the
    second is asked for (halfway through a stream: its header, not its data)."""
    it = iter(messages)
    for msg in it:
        yield msg
        fault(point, settle)
        yield from it


# A connection that went silent (a link cut, a host gone without closing its sockets) is probed
# after KEEPALIVE_MS without a byte from the other side and closed when the probe is not answered
# within KEEPALIVE_TIMEOUT_MS: the calls on it end UNAVAILABLE and are retried on a new connection.
# Without this a call whose packets were lost in a cut waits out its whole deadline after the link
# is back: TCP's retransmission backoff on either end may leave the old connection silent for tens
# of seconds more, while a new connection works at once.
KEEPALIVE_MS = 5_000
KEEPALIVE_TIMEOUT_MS = 10_000
# gRPC's default reconnect backoff grows to 120 s: a peer back after a cut would stay refused
# (TRANSIENT_FAILURE) that long. Capped, a channel tries again at least every MAX_RECONNECT_BACKOFF_MS.
INITIAL_RECONNECT_BACKOFF_MS = 1_000
MAX_RECONNECT_BACKOFF_MS = 5_000


def grpc_options(limits: Limits, server: bool = False) -> list[tuple[str, int]]:
    """Channel options of every ckd channel (`server`: of a ckd server): message caps, keepalive
    probes of silent connections, and for channels a capped reconnect backoff."""
    cap = limits.max_message_bytes + 1024
    options = [
        ("grpc.max_receive_message_length", cap),
        ("grpc.max_send_message_length", cap),
        ("grpc.keepalive_time_ms", KEEPALIVE_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        # gRPC waits for any ping's answer this long (default 1 minute), a keepalive probe's too
        ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        # probe idle connections too: a call made after a cut then finds a fresh connection
        ("grpc.keepalive_permit_without_calls", 1),
        # probes go on however long no data flows (a WaitRound long poll, an idle channel)
        ("grpc.http2.max_pings_without_data", 0),
    ]
    if server:
        # the other side's probes are welcome: by default a server answers a client that pings more
        # often than every 5 minutes without data with GOAWAY (too_many_pings), ending its calls
        return options + [("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_MS // 2)]
    return options + [
        ("grpc.initial_reconnect_backoff_ms", INITIAL_RECONNECT_BACKOFF_MS),
        ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
    ]


class PeerServicer(peer_pb2_grpc.PeerServiceServicer):
    """Serves one Peer. `known` (if set) lists the peers allowed to pull and push."""

    def __init__(
        self,
        peer: Peer,
        security: Security,
        limits: Limits = Limits(),
        meter: Meter | None = None,
        known: set[str] | None = None,
    ) -> None:
        self.peer = peer
        self.security = security
        self.limits = limits
        self.meter = meter or Meter()
        self.known = known
        self.published: dict[int, ModelBlob] = {}
        self.taught_round = -1
        self.refused: list[tuple[str, str]] = []  # (status code name, message), newest last
        self._lock = threading.Lock()

    # -- state set by the peer's round loop ----------------------------------------------------
    def publish(self, round: int, blob: ModelBlob) -> None:
        with self._lock:
            self.published = {r: b for r, b in self.published.items() if r >= round - 1}
            self.published[round] = blob

    def _refuse(self, context: grpc.ServicerContext, code: grpc.StatusCode, message: str):
        self.refused.append((code.name, message))
        log.warning("%s refused a call from %s: %s: %s", self.peer.id, context.peer(), code.name, message)
        context.abort(code, message)

    def _who(self, context: grpc.ServicerContext, claimed: str | None = None) -> str:
        """The caller: its certificate's name (mTLS) or, over plaintext, what it claims."""
        cert = caller(context)
        who = cert if cert is not None else claimed
        if cert is not None and claimed is not None and claimed != cert:
            self._refuse(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"message claims sender {claimed!r} but the client certificate is {cert!r}",
            )
        if self.known is not None and who not in self.known:
            self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, f"unknown peer {who!r}")
        return who or ""

    # -- RPCs ----------------------------------------------------------------------------------
    def GetModel(self, request, context):
        self._who(context, request.requester or None)
        # published by the round loop, or by the in-process engine's Peer.snapshot (never made here)
        blob = self.published.get(request.round) or self.peer._published.get(request.round)
        if blob is None:
            self._refuse(
                context,
                grpc.StatusCode.NOT_FOUND,
                f"{self.peer.id} has not published a model for round {request.round}",
            )
            return
        if request.header_only:  # the spec and its profile, for peers choosing whom to teach
            yield from self.meter.wrap("control", itertools.islice(encode_blob(blob, self.peer.id, request.round), 1))
            return
        self.meter.add_payload("model", sum(a.nbytes for a in blob.arrays.values()))
        yield from self.meter.wrap("model", encode_blob(blob, self.peer.id, request.round))

    def PushExamples(self, request_iterator, context):
        if caller(context) is not None:  # an unknown certificate is refused before its stream is read
            self._who(context)
        try:
            batch = decode_batch(after_first(request_iterator, "receive"), self.limits)
        except PayloadTooLarge as exc:
            self._refuse(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except InvalidPayload as exc:
            self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        self._who(context, batch.sender)
        if batch.receiver != self.peer.id:
            self._refuse(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"batch {batch.id} is addressed to {batch.receiver!r}, this is {self.peer.id!r}",
            )
        try:
            stored = self.peer.absorb(batch)
        except InvalidPayload as exc:
            self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        fault("ack")  # committed, not yet acknowledged
        reply = peer_pb2.Ack(stored=True, duplicate=not stored, examples=len(batch))
        self.meter.record("control", reply)
        return reply

    def Status(self, request, context):
        store = self.peer.store
        reply = peer_pb2.StatusReply(
            peer=self.peer.id,
            published_round=max(self.published, default=-1),
            taught_round=self.taught_round,
            batches_stored=store.batch_count() if hasattr(store, "batch_count") else len(store.batches()),
            examples_stored=len(store),
        )
        self.meter.record("control", reply)
        return reply


def serve(
    servicers: list[tuple[Callable, object]], security: Security, address: str, limits: Limits, workers: int = 16
) -> tuple[grpc.Server, int, health.HealthServicer]:
    """A started gRPC server with these servicers and grpc.health.v1; returns (server, port, health)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=grpc_options(limits, server=True))
    for add, servicer in servicers:
        add(servicer, server)
    checker = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    port = security.add_port(server, address)
    server.start()
    checker.set("", health_pb2.HealthCheckResponse.SERVING)
    return server, port, checker


_HANDLERS = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def add_tolerant_service(
    server: grpc.Server, service, servicer, refuse: Callable | None = None, security: Security | None = None
) -> None:
    """Register `servicer` for every method of `service` (a protobuf ServiceDescriptor), parsing
    requests itself: gRPC's own parsing answers bytes that do not parse with INTERNAL, here they
    get INVALID_ARGUMENT naming the message. `refuse(context, code, message)` aborts the call
    (default: context.abort). A streaming method receives Malformed items and refuses them itself.
    With `security`, every call whose client certificate it refuses (revoked) is refused first,
    PERMISSION_DENIED.
    """
    from google.protobuf.message_factory import GetMessageClass

    refuse = refuse or (lambda context, code, message: context.abort(code, message))

    def admitted(context) -> None:
        problem = security.refusal(context) if security is not None else None
        if problem is not None:
            refuse(context, grpc.StatusCode.PERMISSION_DENIED, problem)

    def checked(method, streaming: bool):
        def call(request, context):
            admitted(context)
            if not streaming and isinstance(request, Malformed):
                refuse(context, grpc.StatusCode.INVALID_ARGUMENT, request.problem("request"))
            return method(request, context)

        def stream(request, context):
            admitted(context)
            if not streaming and isinstance(request, Malformed):
                refuse(context, grpc.StatusCode.INVALID_ARGUMENT, request.problem("request"))
            yield from method(request, context)

        return call, stream

    handlers = {}
    for m in service.methods:
        call, stream = checked(getattr(servicer, m.name), m.client_streaming)
        handlers[m.name] = _HANDLERS[m.client_streaming, m.server_streaming](
            stream if m.server_streaming else call,
            request_deserializer=tolerant(GetMessageClass(m.input_type)),
            response_serializer=GetMessageClass(m.output_type).SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))


def add_peer_service(servicer: PeerServicer, server: grpc.Server) -> None:
    add_tolerant_service(
        server, peer_pb2.DESCRIPTOR.services_by_name["PeerService"], servicer, servicer._refuse, servicer.security
    )


def serve_peer(servicer: PeerServicer, address: str, workers: int = 16) -> tuple[grpc.Server, int]:
    server, port, checker = serve([(add_peer_service, servicer)], servicer.security, address, servicer.limits, workers)
    checker.set("ckd.v1.PeerService", health_pb2.HealthCheckResponse.SERVING)
    return server, port
