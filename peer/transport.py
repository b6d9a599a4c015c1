"""How peers reach each other: one small interface, an in-process implementation here.

A transport moves ModelBlobs and ExampleBatches and nothing else. The gRPC transport implements
the same interface, so the engine never knows which one it drives.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from peer.blob import ExampleBatch, ModelBlob


class Transport(ABC):
    """Pull a peer's published model; push examples to a peer."""

    @abstractmethod
    def get_model(self, peer_id: str, round: int) -> ModelBlob:
        """The model `peer_id` published for `round`."""

    @abstractmethod
    def push_examples(self, peer_id: str, batch: ExampleBatch) -> bool:
        """Deliver a batch; True if stored, False if that batch id was already stored."""


class InProcessTransport(Transport):
    """All peers in this process: calls go straight to the Peer objects."""

    def __init__(self, peers: dict) -> None:
        self.peers = peers

    def _peer(self, peer_id: str):
        if peer_id not in self.peers:
            raise KeyError(f"unknown peer {peer_id!r}")
        return self.peers[peer_id]

    def get_model(self, peer_id: str, round: int) -> ModelBlob:
        return self._peer(peer_id).snapshot(round)

    def push_examples(self, peer_id: str, batch: ExampleBatch) -> bool:
        return self._peer(peer_id).absorb(batch)
