"""GrpcTransport: the Transport interface over gRPC, so the round engine drives remote peers as is."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc

from peer.core.blob import ExampleBatch, InvalidPayload, ModelBlob
from peer.grpc.service import Meter, after_first, grpc_options
from peer.grpc.tls import Security
from peer.grpc.wire import Limits, decode_blob, decode_blob_header, encode_batch
from peer.round import PeerUnreachable, Transport, UnknownPeer
from protos.ckd.v1 import peer_pb2, peer_pb2_grpc

log = logging.getLogger("ckd.transport")


# Calls failing with these are tried again while the round's teaching lasts: the peer or the link
# was down (UNAVAILABLE, also when a keepalive probe found the connection dead), or one attempt ran
# out of its time (DEADLINE_EXCEEDED). Both calls are safe to repeat: a pull reads, and a push
# carries its batch id, which the receiver stores once.
TRANSIENT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def backoff(attempt: int, base: float = 0.2, cap: float = 5.0) -> float:
    """Seconds before retry `attempt` (0, 1, ...): exponential up to `cap`, with jitter so that
    peers retrying together do not stay in step."""
    return min(cap, base * 2**attempt) * random.uniform(0.5, 1.0)


class GrpcTransport(Transport):
    """Pulls models from and pushes batches to peers at known addresses.

    Every call has a deadline: `timeout` seconds, and never past `deadline` (time.monotonic()
    seconds, when set: the round's teaching ends there). A call that finds the peer unavailable,
    or whose attempt ran out of time before `deadline`, is retried up to `retries` times with
    exponential backoff; a push is retried with the same batch id, which the receiver stores once,
    so a retry never duplicates examples. A connection that goes silent is closed by keepalive
    probes (peer.grpc.service.grpc_options), so a call on it fails and is retried rather than
    waiting out its deadline. `on_ack(student, batch, ack)` hears of every acknowledged push.
    """

    def __init__(
        self,
        me: str,
        addresses: dict[str, str],
        security: Security,
        limits: Limits = Limits(),
        meter: Meter | None = None,
        timeout: float = 300.0,
        retries: int = 3,
        on_ack: Callable[[str, ExampleBatch, peer_pb2.Ack], None] | None = None,
    ) -> None:
        self.me = me
        self.addresses = dict(addresses)
        self.security = security
        self.limits = limits
        self.meter = meter or Meter()
        self.timeout = timeout
        self.retries = retries
        self.on_ack = on_ack
        self.deadline: float | None = None
        self._stubs: dict[str, peer_pb2_grpc.PeerServiceStub] = {}
        self._channels: list[grpc.Channel] = []
        self._lock = threading.Lock()

    def _stub(self, peer_id: str) -> peer_pb2_grpc.PeerServiceStub:
        with self._lock:
            if peer_id not in self._stubs:
                if peer_id not in self.addresses:
                    raise UnknownPeer(f"unknown peer {peer_id!r}; known: {', '.join(sorted(self.addresses))}")
                channel = self.security.channel(self.addresses[peer_id], peer_id, grpc_options(self.limits))
                self._channels.append(channel)
                self._stubs[peer_id] = peer_pb2_grpc.PeerServiceStub(channel)
            return self._stubs[peer_id]

    def set_addresses(self, addresses: dict[str, str]) -> None:
        """New addresses (a peer restarted elsewhere): channels to moved peers are reopened."""
        with self._lock:
            for pid, addr in addresses.items():
                if self.addresses.get(pid) != addr:
                    self._stubs.pop(pid, None)
            self.addresses = dict(addresses)

    def _timeout(self) -> float:
        """Seconds the next call may take: `timeout`, cut at `deadline` (at least 1 s)."""
        if self.deadline is None:
            return self.timeout
        return max(1.0, min(self.timeout, self.deadline - time.monotonic()))

    def _call(self, what: str, fn):
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except grpc.RpcError as exc:
                transient = exc.code() in TRANSIENT
                pause = backoff(attempt)
                late = self.deadline is not None and time.monotonic() + pause >= self.deadline
                failed = f"{what}: {exc.code().name}: {' '.join(str(exc.details()).split())}"
                if not transient or attempt == self.retries or late:
                    raise PeerUnreachable(failed) from None
                # an operator sees a peer or a link that is down as it happens, not only a round's errors
                log.warning("%s: %s; retry %d of %d in %.1f s", self.me, failed, attempt + 1, self.retries, pause)
                time.sleep(pause)

    def _pull(self, peer_id: str, round: int, header_only: bool, decode: Callable[..., tuple[Any, str, int]]) -> Any:
        """GetModel from `peer_id` for `round`, decoded by `decode`; a reply naming another peer or
        round is refused."""
        stub = self._stub(peer_id)
        request = peer_pb2.GetModelRequest(requester=self.me, round=round, header_only=header_only)

        def pull() -> Any:
            self.meter.record("control", request)
            stream = after_first(stub.GetModel(request, timeout=self._timeout()), "pull")
            got, publisher, r = decode(stream, self.limits)
            if publisher != peer_id or r != round:
                raise InvalidPayload(f"asked {peer_id!r} for round {round}, got {publisher!r} round {r}")
            return got

        what = "GetModel header" if header_only else "GetModel"
        return self._call(f"{what} from {peer_id} round {round}", pull)

    def get_model(self, peer_id: str, round: int) -> ModelBlob:
        return self._pull(peer_id, round, False, decode_blob)

    def get_spec(self, peer_id: str, round: int) -> dict[str, Any]:
        return self._pull(peer_id, round, True, decode_blob_header)

    def push_examples(self, peer_id: str, batch: ExampleBatch) -> bool:
        stub = self._stub(peer_id)
        ack = self._call(
            f"PushExamples to {peer_id} batch {batch.id}",
            lambda: stub.PushExamples(
                after_first(self.meter.wrap("examples", encode_batch(batch)), "push", settle=0.5),
                timeout=self._timeout(),
            ),
        )
        self.meter.add_payload("examples", batch.nbytes())
        if self.on_ack is not None:
            self.on_ack(peer_id, batch, ack)
        return not ack.duplicate

    def status(self, peer_id: str, timeout: float = 5.0) -> peer_pb2.StatusReply:
        request = peer_pb2.StatusRequest()
        self.meter.record("control", request)
        return self._stub(peer_id).Status(request, timeout=timeout)

    def close(self) -> None:
        for channel in self._channels:
            channel.close()
        self._channels.clear()
        self._stubs.clear()
