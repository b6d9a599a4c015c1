"""Peer nodes run as `ckd launch` runs them, but as threads of the test's process."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

from peer.config import ExperimentConfig
from peer.grpc.node import Node, NodeConfig
from peer.grpc.tls import Security, make_certs
from server.coordinator import Coordinator, serve_coordinator


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


def run_with_coordinator(
    cfg: ExperimentConfig,
    data,
    tmp_path: Path,
    peer_cfg: ExperimentConfig | None = None,
    timeout: float = 300,
    **coordinator_options,
) -> tuple[list[Node], Coordinator, list[str]]:
    """A coordinator for `cfg` (its rounds and peers) and one node per peer on loopback, each with
    its own certificate and state directory tmp_path/peer-k, the nodes told `peer_cfg` (default
    `cfg`); runs them to the end (run_in_threads). Returns the nodes, the coordinator and what the
    nodes raised."""
    certs = tmp_path / "certs"
    ids = [f"peer-{k}" for k in range(cfg.peers)]
    make_certs(certs, ["coordinator", *ids])
    coord = Coordinator(
        Security.from_dir("coordinator", certs, False), cfg.rounds, cfg.peers, 120, **coordinator_options
    )
    server, port = serve_coordinator(coord, "127.0.0.1:0")
    nodes = [
        Node(
            NodeConfig(peer_cfg or cfg, k, tmp_path / pid, coordinator=f"127.0.0.1:{port}", round_deadline=120),
            Security.from_dir(pid, certs, False),
            data=data,
        )
        for k, pid in enumerate(ids)
    ]
    try:
        errors = run_in_threads(nodes, timeout)
    finally:
        server.stop(grace=0)
    return nodes, coord, errors
