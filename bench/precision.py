"""Bytes and accuracy of the published model's precision, over gRPC.

    python bench/precision.py        # -> bench/results/precision.json (minutes on 2 cores)

The same small fmnist-10-like run three times through `ckd launch` (4 peers, 1,000 images each,
2 rounds, the paper's release so that every round teaches), once per `--blob-precision`
(float32, float16, int8), everything else equal. For each: bytes every peer sent on the wire,
payload bytes, examples sent, and each peer's accuracy, against the float32 run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from fmnist10 import machine  # noqa: E402
from grpc_fmnist10 import launch  # noqa: E402

from peer.config import PRIVACY_PRESETS, ExperimentConfig  # noqa: E402
from peer.core.precision import PRECISIONS  # noqa: E402
from server.results import write_json  # noqa: E402

CONFIG = ExperimentConfig(
    peers=4,
    rounds=2,
    train_per_peer=1000,
    test_limit=2000,
    epochs=2,
    retrain_epochs=1,
    privacy="paper",
    **PRIVACY_PRESETS["paper"],
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per peer process")
    parser.add_argument("--load", default="nothing else", help="what else ran on the machine (recorded)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "precision.json")
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for precision in PRECISIONS:
            cfg = replace(CONFIG, blob_precision=precision)
            res, wall = launch(cfg, Path(tmp) / precision, args.threads)
            wire = res["wire"]
            runs.append(
                {
                    "blob_precision": precision,
                    "bytes_sent": sum(wire["bytes_sent"]),
                    "payload_bytes": wire["payload_bytes"],
                    "examples_sent": sum(p["sent"] for p in res["pairs"]),
                    "median_accuracy_before": res["median_accuracy_before"],
                    "median_accuracy_after": res["median_accuracy_after"],
                    "accuracy_after": {p["id"]: p["accuracy_after"] for p in res["peers"]},
                    "wall_seconds": round(wall, 1),
                }
            )
            print(
                f"{precision}: {runs[-1]['bytes_sent']} bytes sent, median {res['median_accuracy_after']:.4f}",
                flush=True,
            )
    base = runs[0]
    for r in runs:
        r["bytes_vs_float32"] = round(r["bytes_sent"] / base["bytes_sent"], 4)
        r["median_accuracy_change"] = round(r["median_accuracy_after"] - base["median_accuracy_after"], 4)
        r["largest_peer_accuracy_change"] = max(
            abs(r["accuracy_after"][k] - base["accuracy_after"][k]) for k in base["accuracy_after"]
        )
    write_json(
        args.out,
        {
            "experiment": "published model precision over gRPC (ckd launch), small fmnist-10-like run",
            "command": "python bench/precision.py " + " ".join(sys.argv[1:]),
            "config": {k: v for k, v in vars(CONFIG).items() if v not in (None, "")},
            "runs": runs,
            "machine": {**machine(), "concurrent_load": args.load},
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
