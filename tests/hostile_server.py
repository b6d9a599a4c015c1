"""A peer (peer-0) and a coordinator in one process of their own, for hostile clients to attack.

`python -m tests.hostile_server CERTS STATE` serves both over mutual TLS on loopback
(port 0), prints one JSON line {"peer": PORT, "coordinator": PORT}, then answers each line on stdin:
"stats" prints what is stored, what was refused and the process's peak RSS as one JSON line; end
of input stops it. Refusals are logged to stderr as every ckd process logs them.
"""

from __future__ import annotations

import json
import logging
import resource
import subprocess
import sys
from pathlib import Path

from peer.grpc.service import PeerServicer, serve_peer
from peer.grpc.tls import Security
from server.coordinator import Coordinator, serve_coordinator
from tests.fuzz_cases import LIMITS, RECEIVER, SENDER, target_peer

EXPECTED = {RECEIVER, SENDER, "peer-2", "peer-3"}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def start(certs: Path, state: Path, stderr, env: dict[str, str]) -> subprocess.Popen:
    """This module as a process of its own (text pipes on stdin and stdout, `stderr` a file), run
    from the repository root with `env` plus the root on PYTHONPATH."""
    root = Path(__file__).resolve().parent.parent
    return subprocess.Popen(
        [sys.executable, "-m", "tests.hostile_server", str(certs), str(state)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env={**env, "PYTHONPATH": str(root)},
        cwd=root,
    )


def main(argv: list[str]) -> int:
    certs, state = Path(argv[0]), Path(argv[1])
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    state.mkdir(parents=True, exist_ok=True)
    peer, learner = target_peer(state / "examples.sqlite")
    servicer = PeerServicer(peer, Security.from_dir(RECEIVER, certs, False), LIMITS, known=EXPECTED | {"mallory"})
    servicer.publish(1, learner.to_blob())
    server, port = serve_peer(servicer, "127.0.0.1:0", workers=4)
    coordinator = Coordinator(
        Security.from_dir("coordinator", certs, False), rounds=2, min_peers=2, round_deadline=0.5, expected=EXPECTED
    )
    cserver, cport = serve_coordinator(coordinator, "127.0.0.1:0", LIMITS)
    print(json.dumps({"peer": port, "coordinator": cport}), flush=True)
    for line in sys.stdin:
        if line.strip() == "stats":
            print(
                json.dumps(
                    {
                        "batches_stored": peer.store.batch_count(),
                        "examples_stored": len(peer.store),
                        "peer_refused": len(servicer.refused),
                        "coordinator_refused": len(coordinator.refused),
                        "coordinator_peers": sorted(coordinator.peers),
                        "coordinator_metrics": sum(len(v) for v in coordinator.metrics.values()),
                        "barriers": len(coordinator.barriers),
                        "peak_rss_mb": round(peak_rss_mb(), 1),
                    }
                ),
                flush=True,
            )
    server.stop(grace=0).wait()
    cserver.stop(grace=0).wait()
    peer.store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
