"""Faults injected for real: peer and coordinator processes killed (SIGKILL) or stopped (SIGSTOP).

    python bench/faults.py                 # -> bench/results/faults.json
    python bench/faults.py --only streams  # one scenario (and the undisturbed run)

Each scenario is a whole run of `ckd server` and 4 `ckd peer` processes (mutual TLS on loopback,
small parts of Fashion-MNIST, 2 rounds) through tests/fault_runs.py: every process given a fault
(CKD_FAULT_AT, peer/faults.py) kills or stops itself there, a killed one is started again at once
on its state directory, a stopped one continued once the round went on without it. Then every
batch a teacher saw acknowledged (its acked.jsonl) is looked for in its student's SQLite store:
`lost` were acknowledged and not stored, `duplicates` stored twice (by id or by content). Each
scenario's final median accuracy stands beside the undisturbed run's on the same seeds. The
undisturbed run is repeated with seeds 1..N (--noise-seeds): how far the median moves with no
fault. The scenarios in --paired (the slow peer's, whose accuracy a fault moves) are repeated
with the same seeds, and their difference is read seed by seed: its mean and standard deviation.
`fuzz_cases` and `crashes` are bench/results/fuzz.json's (python bench/fuzz.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from fmnist10 import machine as cpu_machine  # noqa: E402  (bench/ is this script's folder on sys.path)

from peer.config import ExperimentConfig  # noqa: E402
from protos.ckd.v1 import coordinator_pb2 as cpb  # noqa: E402
from tests.fault_runs import CFG, FaultRun, audit  # noqa: E402

# 1,500 images a peer: models near 79%, whose median a seed moves by about a point (at the tests'
# 300, near 57%, a seed alone moved it by up to 10 points, hiding a fault's cost)
CONFIG = replace(CFG, peers=4, rounds=2, train_per_peer=1500, max_per_student=200, test_limit=2000)
SLOW_DEADLINE = 30.0  # the round deadline of the slow-peer scenario (seconds)

# name -> (what happens, CKD_FAULT_AT of each process's successive starts)
SCENARIOS: dict[str, tuple[str, dict[str, list[str]]]] = {
    "undisturbed": ("no fault", {}),
    "streams": (
        "peer-0 killed halfway through its first push (header sent, data not), peer-1 halfway through "
        "receiving its first batch, peer-2 halfway through pulling its first model, peer-3 halfway "
        "through its fourth push (round 2)",
        {"peer-0": ["push:1"], "peer-1": ["receive:1"], "peer-2": ["pull:1"], "peer-3": ["push:4"]},
    ),
    "durability": (
        "peer-0 killed with its first batch inserted and not committed, peer-1 with it committed and "
        "not acknowledged; peer-2 killed while training round 1, then halfway through writing its "
        "round-1 checkpoint, then halfway through writing metrics.json",
        {"peer-0": ["store:1"], "peer-1": ["ack:1"], "peer-2": ["train:17", "checkpoint:1", "metrics:1"]},
    ),
    "coordinator": (
        "the coordinator killed with peers at the round-1 barrier (the 6th arrival), then halfway "
        "through writing its state; started again on its state directory and port each time",
        {"coordinator": ["barrier:6", "coordinator-state:4"]},
    ),
    "slow peer": (
        f"peer-2 stopped (SIGSTOP) before it publishes round 1, continued once the round-1 barrier went "
        f"on without it (round deadline {SLOW_DEADLINE:g} s): skipped for round 1, back for round 2, "
        "taught once more in a make-up round 3 (--makeup-rounds 1, the default)",
        {"peer-2": ["metrics:1:stop"]},
    ),
    "slow peer, no make-up round": (
        "the same with --makeup-rounds 0: peer-2 ends with one round of teaching where the others have two",
        {"peer-2": ["metrics:1:stop"]},
    ),
}
# scenarios run with a setting that is not the default, to show what the default buys: their
# difference is reported apart from the worst difference under the defaults
ABLATIONS = {"slow peer, no make-up round"}
# coordinator options of a scenario (FaultRun's keyword arguments)
OPTIONS: dict[str, dict] = {"slow peer, no make-up round": {"makeup_rounds": 0}}


def machine(load: str) -> dict:
    avg = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        **cpu_machine(),
        "load_average_at_start": [round(v, 1) for v in avg] if avg else None,
        "concurrent_load": load,
    }


def run_scenario(
    name: str, faults: dict[str, list[str]], root: Path, seed: int = CONFIG.seed, config: ExperimentConfig = CONFIG
) -> dict:
    slow = any(f.endswith(":stop") for fs in faults.values() for f in fs)
    run = FaultRun(
        root,
        replace(config, seed=seed),
        faults=faults,
        round_deadline=SLOW_DEADLINE if slow else 120.0,
        resume_when=(lambda r: r.released(1, cpb.STAGE_PUBLISHED) is not None) if slow else None,
        **OPTIONS.get(name, {}),
    )
    outcome = run.run(timeout=900)
    a = audit(outcome)
    finals = outcome.final_accuracies()
    return {
        "faults_injected": len(outcome.kills) + len(outcome.stops),
        "kills": outcome.kills,
        "stops": outcome.stops,
        "batches_acknowledged": a.acknowledged,
        "batches_stored": a.stored,
        "duplicates": a.duplicates,
        "lost": a.lost,
        "stored_unacknowledged": a.unacknowledged,
        "read_back_problems": a.problems,
        "median_accuracy_after": round(statistics.median(finals.values()), 4),
        "final_accuracy": finals,
        "rounds_run": outcome.results.get("rounds", {}).get("run"),
        "stopped": outcome.results.get("rounds", {}).get("stopped"),
        "skipped": outcome.results.get("skipped", []),
        "status": outcome.results.get("status"),
        "seconds": round(outcome.seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="comma-separated scenario names (the undisturbed run always)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "faults.json"))
    parser.add_argument(
        "--load", default="nothing else", help="what else ran on the machine during the measurement (recorded)"
    )
    parser.add_argument(
        "--noise-seeds",
        type=int,
        default=4,
        help="also run the undisturbed scenario with training and search seeds 1..N (the same split): how far "
        "the median moves with no fault at all, the yardstick for each scenario's difference (0: none)",
    )
    parser.add_argument(
        "--paired",
        default="slow peer",
        help="comma-separated scenarios also run with each of those seeds, so that their difference from the "
        "undisturbed run is read seed by seed (paired) rather than against one seed ('' for none)",
    )
    parser.add_argument(
        "--train-per-peer",
        type=int,
        default=CONFIG.train_per_peer,
        help="private training images per peer (more: stronger models whose median moves less by chance)",
    )
    parser.add_argument(
        "--max-per-student", type=int, default=CONFIG.max_per_student, help="instances taught per student and round"
    )
    parser.add_argument("--test-limit", type=int, default=CONFIG.test_limit, help="test images each peer is scored on")
    args = parser.parse_args(argv)
    config = replace(
        CONFIG, train_per_peer=args.train_per_peer, max_per_student=args.max_per_student, test_limit=args.test_limit
    )
    names = ["undisturbed", *[n.strip() for n in args.only.split(",") if n.strip() and n.strip() != "undisturbed"]]
    if not args.only:
        names = list(SCENARIOS)
    asked = [n.strip() for n in args.paired.split(",") if n.strip()]
    paired = [n for n in asked if n in names]
    unknown = [n for n in names + asked if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r}; choose from {', '.join(SCENARIOS)}")
    command = "python bench/faults.py" + "".join(f" {a}" for a in map(shlex.quote, sys.argv[1:]))
    started = time.time()
    at_start = machine(args.load)
    scenarios: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="ckd-faults-") as tmp:
        for k, name in enumerate(names):
            print(f"{name}...", flush=True)
            result = run_scenario(name, SCENARIOS[name][1], Path(tmp) / f"s{k}", config=config)
            scenarios[name] = {"what": SCENARIOS[name][0], "ablation": name in ABLATIONS, **result}
            print(
                f"  {json.dumps({k: result[k] for k in ('faults_injected', 'lost', 'duplicates')})} "
                f"median {result['median_accuracy_after']} in {result['seconds']} s",
                flush=True,
            )
        noise: dict[str, float] = {str(config.seed): scenarios["undisturbed"]["median_accuracy_after"]}
        for seed in range(1, args.noise_seeds + 1):
            print(f"undisturbed, seed {seed}...", flush=True)
            run = run_scenario("undisturbed", {}, Path(tmp) / f"seed{seed}", seed=seed, config=config)
            noise[str(seed)] = run["median_accuracy_after"]
            print(f"  median {run['median_accuracy_after']} in {run['seconds']} s", flush=True)
            for name in paired:
                print(f"{name}, seed {seed}...", flush=True)
                run = run_scenario(
                    name, SCENARIOS[name][1], Path(tmp) / f"seed{seed}-{names.index(name)}", seed=seed, config=config
                )
                by_seed = scenarios[name].setdefault("median_by_seed", {str(config.seed): None})
                by_seed[str(seed)] = run["median_accuracy_after"]
                lost = scenarios[name].setdefault("other_seeds_lost_duplicated", [0, 0])
                lost[0], lost[1] = lost[0] + run["lost"], lost[1] + run["duplicates"]
                print(f"  median {run['median_accuracy_after']} in {run['seconds']} s", flush=True)
    base = scenarios["undisturbed"]["median_accuracy_after"]
    for s in scenarios.values():
        s["undisturbed_median_accuracy_after"] = base
        s["median_difference_points"] = round(100 * (s["median_accuracy_after"] - base), 2)
        if "median_by_seed" in s:  # seed by seed against the undisturbed run with the same seed
            s["median_by_seed"][str(config.seed)] = s["median_accuracy_after"]
            diffs = {k: round(100 * (v - noise[k]), 2) for k, v in s["median_by_seed"].items()}
            s["paired_difference_points_by_seed"] = diffs
            s["paired_difference_mean_points"] = round(statistics.mean(diffs.values()), 2)
            s["paired_difference_sd_points"] = round(statistics.stdev(diffs.values()), 2) if len(diffs) > 1 else 0.0
    fuzz_path = ROOT / "bench" / "results" / "fuzz.json"
    fuzz = json.loads(fuzz_path.read_text()) if fuzz_path.exists() else {}
    faulted = [s for n, s in scenarios.items() if n != "undisturbed"]
    result = {
        "scenarios": len(faulted),
        "faults_injected": sum(s["faults_injected"] for s in faulted),
        "batches_acknowledged": sum(s["batches_acknowledged"] for s in scenarios.values()),
        "batches_stored": sum(s["batches_stored"] for s in scenarios.values()),
        "duplicates": sum(s["duplicates"] for s in scenarios.values()),
        "lost": sum(s["lost"] for s in scenarios.values()),
        # the paired scenarios' runs with the other seeds: lost and duplicated batches there too
        "other_seeds_lost_duplicated": [
            sum(s.get("other_seeds_lost_duplicated", [0, 0])[i] for s in scenarios.values()) for i in (0, 1)
        ],
        "read_back_problems": sum(len(s["read_back_problems"]) for s in scenarios.values()),
        # under the defaults; the ablations' (a setting that is not the default) apart
        "worst_median_difference_points": max(
            (abs(s["median_difference_points"]) for s in faulted if not s["ablation"]), default=None
        ),
        "worst_median_difference_points_ablations": max(
            (abs(s["median_difference_points"]) for s in faulted if s["ablation"]), default=None
        ),
        # no fault, other seeds: the median's own spread, against which a scenario's difference is read
        "undisturbed_median_by_seed": noise,
        "undisturbed_seed_spread_points": round(100 * (max(noise.values()) - min(noise.values())), 2),
        "undisturbed_seed_sd_points": round(100 * statistics.pstdev(noise.values()), 2),
        "fuzz_cases": fuzz.get("fuzz_cases"),
        "crashes": fuzz.get("crashes"),
        "fuzz_source": "bench/results/fuzz.json (python bench/fuzz.py)",
        "by_scenario": scenarios,
        "config": {
            "peers": config.peers,
            "rounds": config.rounds,
            "train_per_peer": config.train_per_peer,
            "epochs": config.epochs,
            "retrain_epochs": config.retrain_epochs,
            "max_per_student": config.max_per_student,
            "test_limit": config.test_limit,
            "seed": config.seed,
            "noise_seeds": list(range(1, args.noise_seeds + 1)),
            "paired": paired,
            "threads_per_process": 1,
        },
        "wall_seconds": round(time.time() - started, 1),
        "command": command,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "machine": at_start,
        "notes": "each scenario: ckd server and 4 ckd peer processes on loopback with mutual TLS; killed "
        "processes restarted at once on their state directories; accuracies are the peers' final test "
        f"accuracy on {config.test_limit} test images.",
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("scenarios", "faults_injected", "lost", "duplicates", "wall_seconds")}))
    ok = result["lost"] == 0 and result["duplicates"] == 0 and result["read_back_problems"] == 0
    ok = ok and result["other_seeds_lost_duplicated"] == [0, 0]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
