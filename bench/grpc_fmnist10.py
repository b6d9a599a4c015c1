"""fmnist-10 over gRPC: `ckd launch --peers 10` (a coordinator and 10 peer processes, mutual TLS).

    python bench/grpc_fmnist10.py             # -> bench/results/grpc_fmnist10.json (+ figures)
    python bench/grpc_fmnist10.py --compare   # also the in-process run, back to back, same config

Same config as bench/fmnist10.py. wall_seconds is measured as there: local training, teaching and
retraining (from the coordinator's start barrier to its last), not process start-up or data
loading. bytes_sent is what each peer sent on the wire (serialized gRPC messages); payload_bytes
the model arrays pulled plus the example arrays pushed, all peers.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from fmnist10 import machine, per_peer  # noqa: E402

from peer.config import ExperimentConfig
from peer.inprocess import run_experiment  # noqa: E402
from server.results import summarise, write_json  # noqa: E402

SMALL = ("peers", "rounds", "epochs", "retrain_epochs", "train_per_peer", "test_limit", "max_per_student")


def launch(cfg: ExperimentConfig, out: Path, threads: int, extra: tuple[str, ...] = ()) -> tuple[dict, float]:
    """`ckd launch` with `cfg` (and `extra` launch flags): its results.json and the seconds it took."""
    cmd = [sys.executable, "-m", "server.cli", "launch", "--out", str(out), "--threads", str(threads), "--quiet"]
    cmd += extra
    for k, v in asdict(cfg).items():
        if v is not None:
            cmd += ["--" + k.replace("_", "-"), str(v)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    return json.loads((out / "results.json").read_text()), time.perf_counter() - t


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", action="store_true", help="also run in-process, back to back")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per peer process")
    parser.add_argument(
        "--inprocess-workers", type=int, default=2, help="peers at once in the in-process run (--threads each)"
    )
    parser.add_argument("--load", default="", help="what else ran on the machine meanwhile (recorded)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "grpc_fmnist10.json")
    for name in SMALL:  # to check the script on a small config; the benchmark uses the defaults
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=None)
    args = parser.parse_args()
    cfg = ExperimentConfig()
    small = {k: getattr(args, k) for k in SMALL if getattr(args, k) is not None}
    cfg = replace(cfg, **small)

    figures = args.out.with_suffix("")
    print(f"ckd launch --peers {cfg.peers} ...", flush=True)
    summary, process_seconds = launch(cfg, figures, args.threads)
    wire = summary["wire"]
    result = {
        "command": shlex.join(["python", "bench/grpc_fmnist10.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {**machine(), "torch_threads_per_peer": args.threads, "concurrent_load": args.load},
        "transport": "grpc, mutual TLS, one process per peer on loopback",
        "median_accuracy_before": summary["median_accuracy_before"],
        "median_accuracy_after": summary["median_accuracy_after"],
        "missing_class_accuracy_after": summary["missing_class_accuracy_after"],
        "wall_seconds": summary["wall_seconds"],
        "process_seconds": round(process_seconds, 2),
        "timings": summary["timings"],
        "bytes_sent": wire["bytes_sent"],
        "payload_bytes": wire["payload_bytes"],
        "bytes_over_payload": wire["overhead"],
        "counterfactuals": summary["counterfactuals"],
        "config": summary["config"],
    }
    print(
        f"gRPC: median {result['median_accuracy_before']:.4f} -> {result['median_accuracy_after']:.4f}, "
        f"{result['wall_seconds']:.0f} s, {sum(result['bytes_sent'])} bytes for {result['payload_bytes']} "
        f"of payload ({result['bytes_over_payload']}x)",
        flush=True,
    )
    if args.compare:
        from peer.process import configure_process

        # the peers' torch threads: the same numbers whatever the workers, not whatever the threads
        configure_process(args.threads)
        print("in-process run ...", flush=True)
        local = summarise(run_experiment(cfg, quiet=True, workers=args.inprocess_workers))
        result["in_process"] = {
            "median_accuracy_after": local["median_accuracy_after"],
            "wall_seconds": local["wall_seconds"],
            "torch_threads": args.threads,
            "workers": args.inprocess_workers,
            "per_peer_equal": per_peer(local) == per_peer(summary),
            "accuracy_difference_points": round(
                100 * (result["median_accuracy_after"] - local["median_accuracy_after"]), 2
            ),
            "wall_ratio": round(result["wall_seconds"] / local["wall_seconds"], 3),
        }
        print(
            f"in-process: median {local['median_accuracy_after']:.4f}, {local['wall_seconds']:.0f} s; "
            f"gRPC / in-process wall {result['in_process']['wall_ratio']}",
            flush=True,
        )
    write_json(args.out, result)
    print(f"wrote {args.out} and figures in {figures}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
