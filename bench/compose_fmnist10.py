"""fmnist-10 through docker-compose, against `ckd launch` with the same seeds and settings.

    python bench/compose_fmnist10.py               # full fmnist-10: compose, then ckd launch
    python bench/compose_fmnist10.py --own-data    # also peers on their own files (small run)

1. Builds the image and runs docker-compose.yml (with docker/compose.hostnet.yml: every container
   on 127.0.0.1 of the host) through docker/compose-test.sh, which starts and stops an engine of
   its own where none runs (root). The run's size comes from the environment compose passes to
   every peer (CKD_ROUNDS, CKD_EPOCHS, ...), set here from the experiment's defaults.
2. Runs `ckd launch` (a coordinator and 10 peer processes on loopback, mutual TLS) with the same
   options and the same torch threads per peer.
3. With --own-data: each peer's part of a small fmnist-10 run written to a directory of its own
   (train.npz, and test.npz with the rows the run tests on), run by docker/compose.owndata.yml;
   its per-peer results must equal the same small run on parts (`--part K`), also through compose.

Writes bench/results/compose_fmnist10.json: both medians, the difference (target: within 0.5
point), per-peer accuracies, wall times, image build time and size.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from fmnist10 import machine, per_peer  # noqa: E402
from grpc_fmnist10 import launch  # noqa: E402

from peer.config import ExperimentConfig  # noqa: E402
from peer.data.fashion import load_fashion_mnist  # noqa: E402
from peer.experiment import limit_test, partition  # noqa: E402
from server.results import write_json  # noqa: E402

SCRIPT = ROOT / "docker" / "compose-test.sh"
# the experiment's options that docker-compose.yml hands to every peer through the environment
COMPOSE_ENV = {
    "rounds": "CKD_ROUNDS",
    "learners": "CKD_LEARNERS",
    "epochs": "CKD_EPOCHS",
    "retrain_epochs": "CKD_RETRAIN_EPOCHS",
    "train_per_peer": "CKD_TRAIN_PER_PEER",
    "test_limit": "CKD_TEST_LIMIT",
    "max_per_student": "CKD_MAX_PER_STUDENT",
    "privacy": "CKD_PRIVACY",
}
# a small run for the own-files comparison (as `make compose-test`)
SMALL = {
    "rounds": 1,
    "epochs": 3,
    "retrain_epochs": 1,
    "train_per_peer": 1000,
    "test_limit": 1000,
    "max_per_student": 20,
}


def compose(step: str, cfg: ExperimentConfig, results: Path, threads: int, deadline: float, **env: str) -> str:
    """docker/compose-test.sh STEP with the run's settings; returns what it said on stderr."""
    settings = {var: str(getattr(cfg, name)) for name, var in COMPOSE_ENV.items()}
    full = {
        **os.environ,
        **settings,
        "CKD_THREADS": str(threads),
        "CKD_ROUND_DEADLINE": str(deadline),
        "CKD_RESULTS": str(results),
        "CKD_MIN_ACCURACY": "0.3",
        **env,
    }
    done = subprocess.run(["bash", str(SCRIPT), step], env=full, capture_output=True, text=True)
    sys.stderr.write(done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"compose_fmnist10: docker/compose-test.sh {step} failed (exit {done.returncode})")
    return done.stderr


def one_results(directory: Path) -> dict:
    found = sorted(directory.glob("*/results.json"))
    if len(found) != 1:
        raise SystemExit(f"compose_fmnist10: expected one results.json under {directory}, found {found}")
    return json.loads(found[0].read_text())


def brief(summary: dict) -> dict:
    return {
        "median_accuracy_before": summary["median_accuracy_before"],
        "median_accuracy_after": summary["median_accuracy_after"],
        "missing_class_accuracy_after": summary.get("missing_class_accuracy_after"),
        "wall_seconds": summary["wall_seconds"],
        "counterfactuals": summary["counterfactuals"],
        "leakage": summary.get("leakage"),
        "peers": per_peer(summary),
    }


def config_differences(a: dict, b: dict) -> dict:
    return {k: [a.get(k), b.get(k)] for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def write_own_files(cfg: ExperimentConfig, directory: Path) -> None:
    """peer-K/train.npz: part K of the run's split (every class named); peer-K/test.npz: the test rows."""
    train, test = load_fashion_mnist()
    classes = np.array(train.classes)
    rows = limit_test(cfg, test)
    shutil.rmtree(directory, ignore_errors=True)
    for k, part in enumerate(partition(cfg, train)):
        mine = train.subset(part)
        site = directory / f"peer-{k}"
        site.mkdir(parents=True)
        np.savez(site / "train.npz", x=mine.x, y=mine.y, classes=classes)
        np.savez(site / "test.npz", x=rows.x, y=rows.y, classes=classes)
    # the containers run as an unprivileged user: the files must be readable by others
    for path in [directory, *directory.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


def own_data(cfg: ExperimentConfig, work: Path, threads: int, deadline: float) -> dict:
    small = replace(cfg, **SMALL)
    t = time.monotonic()
    compose("up", small, work / "parts", threads, deadline)
    parts = one_results(work / "parts")
    parts_seconds = time.monotonic() - t
    write_own_files(small, work / "own")
    t = time.monotonic()
    compose(
        "up",
        small,
        work / "own-results",
        threads,
        deadline,
        CKD_COMPOSE_FILES=str(ROOT / "docker" / "compose.owndata.yml"),
        CKD_OWN_DATA=str(work / "own"),
        CKD_OWN_FILE="train.npz",
        CKD_OWN_TEST_DATA="/data/own/test.npz",
    )
    own = one_results(work / "own-results")
    own_seconds = time.monotonic() - t
    a, b = per_peer(parts), per_peer(own)
    return {
        "config": {k: getattr(small, k) for k in (*SMALL, "learners", "privacy")},
        "parts": {**brief(parts), "compose_seconds": round(parts_seconds, 1)},
        "own_files": {**brief(own), "experiment": own.get("experiment"), "compose_seconds": round(own_seconds, 1)},
        "per_peer_equal": a == b,
        "peers_differing": sorted(pid for pid in a if a[pid] != b.get(pid)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per peer, in both runs")
    parser.add_argument("--round-deadline", type=float, default=3600.0, help="seconds a barrier waits, both runs")
    parser.add_argument("--own-data", action="store_true", help="also the own-files run against parts")
    parser.add_argument("--only-own-data", action="store_true", help="only the own-files run (merged into --out)")
    parser.add_argument("--launch-from", type=Path, help="a `ckd launch` results.json to compare with, not re-run")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "compose-bench")
    parser.add_argument("--load", default="", help="what else ran on the machine meanwhile (recorded)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "compose_fmnist10.json")
    args = parser.parse_args()
    cfg = ExperimentConfig()
    argv = " ".join(a if " " not in a else repr(a) for a in sys.argv[1:])
    command = f"python bench/compose_fmnist10.py {argv}".strip()
    date = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    result: dict = json.loads(args.out.read_text()) if args.only_own_data and args.out.exists() else {}
    if not args.only_own_data:  # the full run's; an own-data section keeps its own command below
        result.update(
            {
                "command": command,
                "date": date,
                "machine": {**machine(), "torch_threads_per_peer": args.threads},
                "load": args.load or "nothing else",
            }
        )
    said = compose("build", cfg, args.work / "unused", args.threads, args.round_deadline)
    built = re.search(r"built (\S+) in (\d+) s, (\d+) MB", said)
    if built:
        result["image"] = {"tag": built.group(1), "build_seconds": int(built.group(2)), "size_mb": int(built.group(3))}

    if not args.only_own_data:
        t = time.monotonic()
        compose("up", cfg, args.work / "full", args.threads, args.round_deadline)
        composed = one_results(args.work / "full")
        result["compose"] = {**brief(composed), "compose_seconds": round(time.monotonic() - t, 1)}
        print(
            f"compose: median {composed['median_accuracy_before']} -> {composed['median_accuracy_after']}", flush=True
        )
        if args.launch_from:
            launched = json.loads(args.launch_from.read_text())
        else:
            launched, _ = launch(
                cfg, args.work / "launch", args.threads, ("--round-deadline", str(args.round_deadline))
            )
        result["launch"] = brief(launched)
        diff = 100 * (composed["median_accuracy_after"] - launched["median_accuracy_after"])
        result["median_difference_points"] = round(diff, 2)
        result["within_half_a_point"] = abs(diff) <= 0.5
        result["per_peer_equal"] = per_peer(composed) == per_peer(launched)
        ignore = ("data", "data_dir", "test_data")
        result["config_differences"] = config_differences(
            {k: v for k, v in composed["config"].items() if k not in ignore},
            {k: v for k, v in launched["config"].items() if k not in ignore},
        )
        result["config"] = launched["config"]
        print(
            f"launch: median {launched['median_accuracy_after']}; compose - launch {diff:+.2f} points; "
            f"per-peer equal {result['per_peer_equal']}",
            flush=True,
        )
    if args.own_data or args.only_own_data:
        result["own_data"] = {
            "command": command,
            "date": date,
            "load": args.load or "nothing else",
            **own_data(cfg, args.work / "own-data", args.threads, args.round_deadline),
        }
        result.setdefault("command", command)
        result.setdefault("date", date)
        result.setdefault("load", args.load or "nothing else")
        print(f"own files equal parts, peer for peer: {result['own_data']['per_peer_equal']}", flush=True)
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
