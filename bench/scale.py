"""How a round grows with the number of peers: 2 to 32 peer processes over gRPC on loopback, every
peer teaching every other (fanout 0) against each student taught by its K most useful teachers.

    python bench/scale.py                          # -> bench/results/scale.json
    python bench/scale.py --peers 2 4 --fanouts 0  # a subset

Processes, not a simulation: per-peer memory (peak RSS) is only real in a process of its own, and
`ckd launch` is how peers run (a coordinator and one `ckd peer` process each, mutual TLS). Each
peer holds a small Dirichlet (beta 0.5) part of Fashion-MNIST's training set (--train-per-peer
images), so that 32 processes fit the machine; all share its cores, one torch thread each, so a
round's wall time here also measures how the peers' work adds up on this machine.

Per configuration, run --repeats times (3): round_seconds, the median of the runs' round 1
wall times (from the coordinator's barriers: every model published to every peer retrained and
reported; each run's in round_seconds_runs), and of the median run: bytes (everything the peers
sent on the wire), pairs taught, peak_rss_mb (the largest peer process in any run;
torch_import_rss_mb, a bare process that imported torch, is the share of it no peer code
causes), end_anonymous_mb_max and end_file_mb_median (each peer's resident memory at its last
report split into anonymous memory, its own, and file-backed pages of the libraries it maps,
which the page cache holds once for every peer process), median accuracy before and after the
round; torch, the version and build the peers ran. Peers run under the interpreter that runs
this script: a CUDA build of torch maps CUDA's libraries and runs their initialisers with no GPU
present, a CPU-only build (what the Docker image installs) does not:

    .venv-cpu/bin/python bench/scale.py --repeats 1 --out bench/results/scale_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from fmnist10 import machine  # noqa: E402
from grpc_fmnist10 import launch  # noqa: E402

from peer.config import ExperimentConfig  # noqa: E402
from server.results import write_json  # noqa: E402

CONFIG_KEYS = ("split", "beta", "rounds", "epochs", "retrain_epochs", "train_per_peer", "test_limit", "max_per_student")


def torch_import_rss_mb() -> float:
    """Resident memory of a bare Python process once it has imported torch (this machine's wheel):
    what every peer process holds before ckd does anything, the floor under peak_rss_mb."""
    code = "import torch; print(open('/proc/self/status').read().split('VmRSS:')[1].split()[0])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return round(int(out.stdout.strip()) / 1024, 1)


def _resident(resident: list[dict]) -> dict:
    """Of the peer processes' resident memory at their last report: the largest anonymous part (each
    process's own), the median file-backed part (libraries, one copy in the page cache for all), the
    largest resident and the largest proportional share (shared pages divided among the processes
    mapping them: what one more peer on the machine costs it)."""
    anon = sorted(r["anonymous_mb"] for r in resident if r)
    files = sorted(r["file_mb"] for r in resident if r)
    if not anon:
        return {}
    pss = sorted(r["pss_mb"] for r in resident if r and "pss_mb" in r)
    return {
        "end_anonymous_mb_max": anon[-1],
        "end_file_mb_median": files[len(files) // 2],
        "end_rss_mb_max": max(r["rss_mb"] for r in resident if r),
        **({"end_pss_mb_max": pss[-1]} if pss else {}),
    }


def torch_build() -> dict:
    """The torch these processes run: its version and whether it is a CUDA build (whose import maps
    CUDA's libraries and runs their initialisers, GPU or not) or a CPU-only one."""
    code = "import json, torch; print(json.dumps([torch.__version__, torch.version.cuda]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    version, cuda = json.loads(out.stdout)
    return {"version": version, "build": f"CUDA {cuda}" if cuda else "CPU only"}


def repeated(cfg: ExperimentConfig, threads: int, repeats: int) -> dict:
    """`one_run` `repeats` times: the run whose round time is the median, with every run's round
    time (`round_seconds_runs`). Round times of many processes on 2 cores vary from run to run by
    more than the growth being measured; memory and bytes hardly do."""
    runs = sorted((one_run(cfg, threads) for _ in range(repeats)), key=lambda r: r["round_seconds"])
    middle = dict(runs[(len(runs) - 1) // 2])
    middle["round_seconds_runs"] = [r["round_seconds"] for r in runs]
    middle["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    return middle


def one_run(cfg: ExperimentConfig, threads: int) -> dict:
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="ckd-scale-") as tmp:
        summary, seconds = launch(cfg, Path(tmp) / "out", threads)
    wire = summary["wire"]
    return {
        "peers": cfg.peers,
        "fanout": cfg.fanout,
        "pairs": len(summary["pairs"]),
        "round_seconds": summary["round_wall_seconds"][0],
        "wall_seconds": summary["wall_seconds"],
        "process_seconds": round(seconds, 1),
        "bytes": sum(wire["bytes_sent"]),
        "bytes_by_peer_max": max(wire["bytes_sent"]),
        "peak_rss_mb": max(wire["peak_rss_mb"]),
        "peak_rss_mb_median": sorted(wire["peak_rss_mb"])[len(wire["peak_rss_mb"]) // 2],
        **_resident(wire.get("resident_mb", [])),
        "median_accuracy_before": summary["median_accuracy_before"],
        "median_accuracy_after": summary["median_accuracy_after"],
        "examples_sent": summary["counterfactuals"]["sent_with_augmentation"],
        "load_average_before": round(load_before, 2),
        "load_average_after": round(os.getloadavg()[0], 2),
        "config": {k: v for k, v in asdict(cfg).items() if k in CONFIG_KEYS},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", type=int, nargs="+", default=[2, 4, 8, 16, 32])
    parser.add_argument("--fanouts", type=int, nargs="+", default=[0, 3], help="0: all pairs")
    parser.add_argument("--train-per-peer", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per peer process")
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs of each configuration: round_seconds is their median"
    )
    parser.add_argument("--load", default="", help="what else ran on the machine meanwhile (recorded)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "scale.json")
    args = parser.parse_args()
    base = ExperimentConfig(
        split="dirichlet",
        beta=0.5,
        rounds=1,
        epochs=2,
        retrain_epochs=1,
        train_per_peer=args.train_per_peer,
        test_limit=2000,
        max_per_student=50,
    )
    command = "python " + " ".join(shlex.quote(a) for a in ["bench/scale.py", *sys.argv[1:]])
    runs = []
    floor = torch_import_rss_mb()
    build = torch_build()
    for peers in args.peers:
        for fanout in args.fanouts:
            if fanout and fanout >= peers - 1:
                continue  # every other peer anyway: the all-pairs run
            cfg = replace(base, peers=peers, fanout=fanout)
            start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            run = repeated(cfg, args.threads, max(1, args.repeats))
            run |= {"date": start, "command": command, "machine": {**machine(), "concurrent_load": args.load}}
            run["torch_import_rss_mb"] = floor
            run["torch"] = build
            print(
                json.dumps({k: run[k] for k in ("peers", "fanout", "pairs", "round_seconds", "bytes", "peak_rss_mb")})
            )
            runs.append(run)
            write_json(args.out, runs)  # what is measured so far survives an interrupted run
    return 0


if __name__ == "__main__":
    sys.exit(main())
