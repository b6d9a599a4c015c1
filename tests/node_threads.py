"""Peer nodes run as `ckd launch` runs them, but as threads of the test's process."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from peer.grpc.node import Node


def run_in_threads(nodes: Sequence[Node], timeout: float = 300) -> list[str]:
    """Run every node in a thread of its own until all are done (or `timeout` seconds each), then
    stop them all; returns what the nodes raised, one line each."""
    errors: list[str] = []

    def run(n: Node) -> None:
        try:
            n.run()
        except Exception as exc:  # noqa: BLE001  (returned to the test)
            errors.append(f"{n.id}: {exc!r}")

    threads = [threading.Thread(target=run, args=(n,)) for n in nodes]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=timeout)
    finally:
        for n in nodes:
            n.stop()
    return errors
