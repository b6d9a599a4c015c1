"""What a forest teacher's search teaches on the digits table: its leaf boxes against the gradient-free search.

    python bench/forest_search.py                      # runs the grid -> bench/results/forest_search.json
    python bench/forest_search.py --runs /tmp/fs       # keep each run's tabular JSON there
    python bench/forest_search.py --summarise /tmp/fs  # only summarise runs already in /tmp/fs

Each run is `bench/tabular.py` (digits, peers mlp / forest / linear, peer-1 the forest) with
`--set cf_forest_search=SEARCH --set seed=SEED` under a release preset, for every seed, search
and preset asked for. The search changes only what the forest teaches, so the two searches differ
in the other peers' accuracy after teaching, in what the forest sent and in its search time.
Seeds move training, start points and augmentation, not the split (fixed, as in tabular.py).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from server.results import write_json  # noqa: E402

SEARCHES = ("leaf-box", "sampling")
FOREST = "peer-1"


def run_name(privacy: str, search: str, seed: int) -> str:
    return f"{privacy}_{search}_s{seed}.json"


def summarise(runs: Path, privacies: list[str], seeds: list[int]) -> dict:
    out: dict = {}
    for privacy in privacies:
        by_search: dict = {}
        for search in SEARCHES:
            rows = []
            for seed in seeds:
                path = runs / run_name(privacy, search, seed)
                if not path.exists():
                    raise SystemExit(f"{path}: missing (run without --summarise first)")
                d = json.loads(path.read_text())
                taught = [r for r in d["pairs"] if r["teacher"] == FOREST]
                rows.append(
                    {
                        "seed": seed,
                        "accuracy_after": {p["learner"]: p["accuracy_after"] for p in d["peers"]},
                        "forest_sent": sum(r["sent"] for r in taught),
                        "forest_counterfactuals": sum(r["counterfactuals"] for r in taught),
                        "forest_search_seconds": round(sum(r["counterfactual_seconds"] for r in taught), 2),
                        "wall_seconds": d["wall_seconds"],
                    }
                )
            learners = list(rows[0]["accuracy_after"])
            by_search[search] = {
                "mean_accuracy_after": {
                    k: round(statistics.mean(r["accuracy_after"][k] for r in rows), 4) for k in learners
                },
                "mean_forest_sent": round(statistics.mean(r["forest_sent"] for r in rows), 1),
                "runs": rows,
            }
        out[privacy] = by_search
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--privacy", default="paper,guarded", help="release presets, comma-separated")
    parser.add_argument("--runs", type=Path, default=None, help="directory for each run's JSON (default: a temp dir)")
    parser.add_argument("--summarise", type=Path, default=None, help="summarise the runs in this directory only")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "forest_search.json")
    parser.add_argument(
        "--load", default="nothing else", help="what else ran on the machine during the measurement (recorded)"
    )
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    privacies = [p.strip() for p in args.privacy.split(",") if p.strip()]
    runs = args.summarise or args.runs or Path(f"/tmp/ckd-forest-search-{int(time.time())}")
    if not args.summarise:
        runs.mkdir(parents=True, exist_ok=True)
        for privacy in privacies:
            for seed in seeds:
                for search in SEARCHES:
                    cmd = [sys.executable, str(ROOT / "bench" / "tabular.py"), "--privacy", privacy]
                    cmd += ["--set", f"cf_forest_search={search}", "--set", f"seed={seed}"]
                    cmd += ["--out", str(runs / run_name(privacy, search, seed)), "--load", args.load]
                    print(shlex.join(cmd[1:]), flush=True)
                    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    result = {
        "command": "python bench/forest_search.py " + shlex.join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "each_run": "python bench/tabular.py --privacy PRESET --set cf_forest_search=SEARCH --set seed=SEED "
        "--out RUN.json",
        "concurrent_load": args.load,
        "by_privacy": summarise(runs, privacies, seeds),
    }
    write_json(args.out, result)
    for privacy, by_search in result["by_privacy"].items():
        for search, s in by_search.items():
            print(privacy, search, s["mean_accuracy_after"], "forest sent", s["mean_forest_sent"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
