"""fmnist-10 benchmark: CKD against local-only, pooled and FedAvg baselines on the same split.

    python bench/fmnist10.py            # 10 CNN peers -> bench/results/fmnist10.json
    python bench/fmnist10.py --hetero   # 4 CNN, 3 MLP, 3 forest -> bench/results/fmnist10_hetero.json

wall_seconds is the CKD run alone (local training, teaching, retraining), baselines excluded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from baselines import fedavg, local_only, pooled  # noqa: E402

from peer.config import DEFAULT_PRIVACY, PRIVACY_PRESETS, ExperimentConfig, options
from peer.data.fashion import load_fashion_mnist  # noqa: E402
from peer.inprocess import run_experiment  # noqa: E402
from server.results import summarise, write_figures, write_json  # noqa: E402

HETERO = "cnn*4,mlp*3,forest*3"


def machine() -> dict:
    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else ""
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def per_peer(summary: dict) -> dict[str, dict]:
    """Per peer id, what two runs of one experiment must agree on to be the same run: accuracies
    before and after (overall and on the classes it lacks) and the examples it received."""
    keys = (
        "accuracy_before",
        "accuracy_after",
        "missing_class_accuracy_before",
        "missing_class_accuracy_after",
        "received",
    )
    return {p["id"]: {k: p.get(k) for k in keys} for p in summary["peers"]}


def by_learner(summary: dict) -> dict:
    """Per learner kind: missing-class accuracy before and after, and what it taught and received."""
    out = {}
    for kind in sorted({p["learner"] for p in summary["peers"]}):
        peers = [p for p in summary["peers"] if p["learner"] == kind]
        ids = {p["id"] for p in peers}
        out[kind] = {
            "peers": sorted(ids),
            "median_accuracy_before": float(np.median([p["accuracy_before"] for p in peers])),
            "median_accuracy_after": float(np.median([p["accuracy_after"] for p in peers])),
            "missing_class_accuracy_before": [p["missing_class_accuracy_before"] for p in peers],
            "missing_class_accuracy_after": [p["missing_class_accuracy_after"] for p in peers],
            "counterfactuals_taught": sum(r["counterfactuals"] for r in summary["pairs"] if r["teacher"] in ids),
            "examples_received": sum(p["received"] for p in peers),
        }
    return out


def measure_local_only(cfg: ExperimentConfig, train, test, summary: dict) -> tuple[dict, float]:
    """The local-only baseline for as many rounds as ckd ran: its JSON fields and its seconds."""
    t = time.perf_counter()
    local = local_only(cfg, train, test, rounds=summary["rounds"]["run"])
    print(f"local only: median {np.median(local):.4f}", flush=True)
    fields = {"local_only": float(np.median(local)), "local_only_per_peer": [round(a, 4) for a in local]}
    return fields, time.perf_counter() - t


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hetero", action="store_true", help=f"heterogeneous learners {HETERO}")
    parser.add_argument("--no-baselines", action="store_true", help="skip the baselines")
    parser.add_argument(
        "--baselines-from",
        type=Path,
        default=None,
        help="with --no-baselines: copy the baselines (local-only, pooled, FedAvg; they do not depend on "
        "ckd's settings) from this earlier result, naming the run that measured them",
    )
    parser.add_argument(
        "--local-only",
        action="store_true",
        help="with --baselines-from: measure the local-only baseline again (each peer alone for as many "
        "epochs as it trains in ckd, so it moves with --epochs and --retrain-epochs; pooled and FedAvg do not)",
    )
    parser.add_argument(
        "--privacy",
        default=DEFAULT_PRIVACY,
        choices=sorted(PRIVACY_PRESETS),
        help="release preset (default: ckd's default); another than the default writes fmnist10[_hetero]_PRESET.json",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--workers", type=int, default=1, help="peers (and FedAvg's clients) worked on at once, threads of this process"
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/...)")
    parser.add_argument(
        "--load",
        default="nothing else",
        help="what else ran on the machine during the measurement (recorded in the JSON)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="OPTION=VALUE",
        help="an option on top of the preset, e.g. --set cf_start_k=2 (needs --out)",
    )
    args = parser.parse_args()
    from peer.process import configure_process

    configure_process(args.threads)
    if args.set and not args.out:
        parser.error("--set needs --out: the result is not the preset's")
    knobs = dict(PRIVACY_PRESETS[args.privacy])
    for item in args.set:
        key, _, value = item.partition("=")
        declared = {f.name: f for f in options()}
        if key not in declared:
            parser.error(f"--set {item}: no option {key!r}")
        parse = declared[key].metadata.get("parse") or type(declared[key].default)
        knobs[key] = parse(value)
    cfg = ExperimentConfig(learners=HETERO if args.hetero else "cnn", privacy=args.privacy, **knobs)
    name = ("fmnist10_hetero" if args.hetero else "fmnist10") + (
        "" if args.privacy == DEFAULT_PRIVACY else f"_{args.privacy}"
    )
    out = args.out or ROOT / "bench" / "results" / f"{name}.json"
    train, test = load_fashion_mnist(cfg.data_dir)

    print(f"CKD run ({cfg.learners}, {cfg.rounds} rounds)...", flush=True)
    exp = run_experiment(cfg, quiet=not sys.stderr.isatty(), data=(train, test), workers=args.workers)
    summary = summarise(exp)
    result = {
        "command": "python bench/fmnist10.py " + shlex.join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {**machine(), "concurrent_load": args.load},
        "median_accuracy_before": summary["median_accuracy_before"],
        "median_accuracy_after": summary["median_accuracy_after"],
        "missing_class_accuracy_before": summary["missing_class_accuracy_before"],
        "missing_class_accuracy_after": summary["missing_class_accuracy_after"],
        "counterfactuals_per_second": summary["counterfactuals"]["per_second"],
        "wall_seconds": summary["wall_seconds"],
        "timings": summary["timings"],
        "counterfactuals": summary["counterfactuals"],
        "leakage": summary["leakage"],
        "by_learner": by_learner(summary),
        "gate": summary.get("gate"),
        "rounds": summary["rounds"],
    }
    print(
        f"CKD: median {result['median_accuracy_before']:.4f} -> {result['median_accuracy_after']:.4f}, "
        f"missing class min {min(result['missing_class_accuracy_after']):.4f}, "
        f"{result['counterfactuals_per_second']} cf/s, {result['wall_seconds']:.0f} s",
        flush=True,
    )
    if not args.no_baselines:
        local, local_seconds = measure_local_only(cfg, train, test, summary)
        timings = {"local_only": local_seconds}
        t = time.perf_counter()
        pool, pool_per_class = pooled(cfg, train, test)
        timings["pooled"] = time.perf_counter() - t
        print(f"pooled: {pool:.4f}", flush=True)
        t = time.perf_counter()
        fed = fedavg(cfg, train, test, workers=args.workers)[-1]
        timings["fedavg"] = time.perf_counter() - t
        print(f"fedavg: {fed:.4f}", flush=True)
        result["baselines"] = {
            **local,
            "pooled": pool,
            "pooled_per_class": dict(zip(test.classes, pool_per_class)),
            "fedavg": fed,
            "what": "local_only: each peer alone for as many epochs as in CKD (median); pooled: one CNN on "
            "all parts, 5 epochs; fedavg: CNN, 10 rounds of 1 local epoch, weights averaged by size",
            "seconds": {k: round(v, 1) for k, v in timings.items()},
        }
    elif args.baselines_from:
        # local-only, pooled and FedAvg do not depend on what ckd releases: taken from an earlier run
        earlier = json.loads(Path(args.baselines_from).read_text())
        result["baselines"] = {  # named by the run that measured them, however often copied since
            **earlier["baselines"],
            "measured_by": earlier["baselines"].get("measured_by", earlier.get("command")),
            "measured_on": earlier["baselines"].get("measured_on", earlier.get("date")),
        }
        if args.local_only:
            local, local_seconds = measure_local_only(cfg, train, test, summary)
            result["baselines"] |= {
                **local,
                "local_only_measured_by": result["command"],
                "seconds": {**earlier["baselines"].get("seconds", {}), "local_only": round(local_seconds, 1)},
            }
    result["peers"] = summary["peers"]
    result["config"] = summary["config"]
    write_json(out, result)
    figures = out.parent / name
    figures.mkdir(exist_ok=True)
    write_figures(exp, summary, figures)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
