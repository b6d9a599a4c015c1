"""LoopbackGrpc: in-process peers behind real PeerServices on loopback, for tests of the engine over gRPC."""

from __future__ import annotations

from peer.grpc.service import Meter, PeerServicer, serve_peer
from peer.grpc.tls import Security
from peer.grpc.transport import GrpcTransport
from peer.grpc.wire import Limits


class LoopbackGrpc(GrpcTransport):
    """In-process peers, each behind its own PeerService on a loopback port, reached over gRPC.

    Lets the round engine run unchanged over real gRPC (one process, plaintext: the engine pushes
    on every teacher's behalf, so there is no per-peer client certificate to check).
    """

    def __init__(self, peers, limits: Limits = Limits()) -> None:
        security = Security("engine")
        self.servicers, self.servers, addresses = {}, [], {}
        for p in peers:
            servicer = PeerServicer(p, security, limits, Meter())
            server, port = serve_peer(servicer, "127.0.0.1:0", workers=4)
            self.servicers[p.id], addresses[p.id] = servicer, f"127.0.0.1:{port}"
            self.servers.append(server)
        super().__init__("engine", addresses, security, limits)

    def close(self) -> None:
        super().close()
        for server in self.servers:
            server.stop(grace=1).wait()
