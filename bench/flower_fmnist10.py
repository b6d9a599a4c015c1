"""fmnist-10 through Flower simulation (10 SuperNodes on Ray), optionally beside the in-process run.

    python bench/flower_fmnist10.py --compare     # -> bench/results/flower_fmnist10.json

Starts its own simulation SuperLink on a free loopback port (state in a temporary FLWR_HOME),
runs `flwr run .` with the app's run config, and stops everything it started. With --compare,
the in-process engine runs the same config first, back to back on the same machine.

wall_seconds is measured as in fmnist10.json: local training, teaching and retraining (with
evaluation), here by the ServerApp from its first train.local to the last reply. Ray's start-up
and the `flwr run` command around it are in command_seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from fmnist10 import machine, per_peer  # noqa: E402

from peer.data.fashion import load_fashion_mnist  # noqa: E402
from peer.flower.client_app import experiment_config  # noqa: E402
from peer.inprocess import run_experiment  # noqa: E402
from server.results import summarise, write_json  # noqa: E402
from tests.flower_local import flower  # noqa: E402

KNOBS = ("peers", "rounds", "epochs", "retrain-epochs", "train-per-peer", "test-limit", "learners", "seed")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", action="store_true", help="run the in-process engine first, same config")
    parser.add_argument("--peers", type=int, default=10, help="peers = simulated SuperNodes")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--retrain-epochs", type=int, default=2)
    parser.add_argument("--train-per-peer", type=int, default=0, help="0: all (fmnist-10)")
    parser.add_argument("--test-limit", type=int, default=0, help="0: all 10,000 (fmnist-10)")
    parser.add_argument("--learners", default="cnn")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cpus",
        type=int,
        default=os.cpu_count() or 1,
        help="CPUs Ray may use (init-args-num-cpus); with --compare, the in-process run's workers too",
    )
    parser.add_argument("--cpus-per-client", type=int, default=1, help="client-resources-num-cpus")
    parser.add_argument("--gpus-per-client", type=float, default=0.0, help="client-resources-num-gpus")
    parser.add_argument("--timeout", type=float, default=None, help="most seconds for the Flower run")
    parser.add_argument("--load", default="", help="what else ran on the machine meanwhile (recorded)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "flower_fmnist10.json")
    args = parser.parse_args()

    run_config = {k: getattr(args, k.replace("-", "_")) for k in KNOBS}
    cfg = experiment_config(run_config, args.peers)
    argv = sys.argv[1:]
    shown = [a for i, a in enumerate(argv) if not a.startswith("--out") and not (i and argv[i - 1] == "--out")]
    command = shlex.join(["python", "bench/flower_fmnist10.py", *shown])
    local: dict | None = None  # the in-process run's summary, with --compare
    result: dict = {"command": command, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    if args.compare:
        from peer.process import configure_process

        # as the SuperNodes run: torch threads per peer as per client, as many peers at once as Ray's CPUs
        # take clients (the same numbers whatever the workers, not whatever the threads)
        configure_process(args.cpus_per_client)
        workers = max(1, args.cpus // args.cpus_per_client)
        print(
            f"in-process run ({args.peers} peers, {args.rounds} rounds, {workers} at once, "
            f"{args.cpus_per_client} threads each)...",
            flush=True,
        )
        exp = run_experiment(cfg, quiet=not sys.stderr.isatty(), data=load_fashion_mnist(cfg.data_dir), workers=workers)
        local = summarise(exp)
        result["in_process"] = {
            k: local[k] for k in ("median_accuracy_before", "median_accuracy_after", "wall_seconds", "timings")
        }
        result["in_process"] |= {"threads": args.cpus_per_client, "workers": workers}
        print(
            f"in-process: median {local['median_accuracy_before']:.4f} -> {local['median_accuracy_after']:.4f}, "
            f"{local['wall_seconds']:.0f} s",
            flush=True,
        )

    federation = (
        f"num-supernodes={args.peers} client-resources-num-cpus={args.cpus_per_client} "
        f"client-resources-num-gpus={args.gpus_per_client} init-args-num-cpus={args.cpus}"
    )
    print(f"Flower simulation ({federation})...", flush=True)
    with tempfile.TemporaryDirectory(prefix="ckd-flower-bench-") as tmp:
        out = Path(tmp) / "out"
        with flower(Path(tmp), simulation=True) as fl:
            start = time.perf_counter()
            res = fl.run(
                {**run_config, "out": str(out), "threads": args.cpus_per_client},
                federation,
                timeout=args.timeout,
                capture=False,
            )
            command_seconds = time.perf_counter() - start
        if res.returncode != 0 or not (out / "results.json").exists():
            print(f"flower_fmnist10: `flwr run` failed (exit {res.returncode}); nothing written", file=sys.stderr)
            return 1
        s = json.loads((out / "results.json").read_text())
    if s.get("status") == "failed":
        print(f"flower_fmnist10: the Flower run failed: {s['error']}", file=sys.stderr)
        return 1
    result.update(
        {
            "machine": {**machine(), "torch_threads_per_client": args.cpus_per_client, "concurrent_load": args.load},
            "federation_config": federation,
            "median_accuracy_before": s["median_accuracy_before"],
            "median_accuracy_after": s["median_accuracy_after"],
            "missing_class_accuracy_after": s["missing_class_accuracy_after"],
            "wall_seconds": s["wall_seconds"],
            "command_seconds": round(command_seconds, 2),
            "timings": s["timings"],
            "counterfactuals": s["counterfactuals"],
            "experiment": s["experiment"],
        }
    )
    if local is not None:
        ip = result["in_process"]
        result["vs_in_process"] = {
            "accuracy_points": round(100 * (s["median_accuracy_after"] - ip["median_accuracy_after"]), 2),
            "per_peer_equal": per_peer(local) == per_peer(s),
            "wall_ratio": round(s["wall_seconds"] / ip["wall_seconds"], 3),
        }
    result["peers"] = s["peers"]
    result["config"] = s["config"]
    write_json(args.out, result)
    print(
        f"Flower: median {s['median_accuracy_before']:.4f} -> {s['median_accuracy_after']:.4f}, "
        f"{s['wall_seconds']:.0f} s (command {command_seconds:.0f} s)"
        + (f"; vs in-process {result['vs_in_process']}" if "vs_in_process" in result else "")
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
