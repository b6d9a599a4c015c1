"""Columns a teacher lacks: drawn from the student's column model, or the student's median.

    python bench/column_fill.py      # -> bench/results/column_fill.json (a few minutes on 2 cores)

Runs bench/tabular.py on both tables (digits, wine) with `--column-fill conditional` and
`--column-fill median`, everything else equal, and reports per learner kind the accuracy before and
after and the accuracy on the classes each peer lacks. The tables' peers have overlapping column
sets, so every pair teaches across columns one side lacks.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from server.results import write_json  # noqa: E402

FILLS = ("conditional", "median")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load", default="nothing else", help="what else ran on the machine (recorded)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "column_fill.json")
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in ("digits", "wine"):
            for fill in FILLS:
                out = Path(tmp) / f"{dataset}_{fill}.json"
                cmd = [sys.executable, str(ROOT / "bench" / "tabular.py"), "--dataset", dataset]
                cmd += ["--column-fill", fill, "--out", str(out), "--load", args.load]
                subprocess.run(cmd, check=True, cwd=ROOT)
                res = json.loads(out.read_text())
                for p in res["peers"]:
                    runs.append(
                        {
                            "dataset": dataset,
                            "column_fill": fill,
                            "peer": p["id"],
                            "learner": p["learner"],
                            "accuracy_before": p["accuracy_before"],
                            "accuracy_after": p["accuracy_after"],
                            "missing_class_accuracy_after": p["missing_class_accuracy_after"],
                            "test_size": res["test_size"],
                        }
                    )
    by = {(r["dataset"], r["learner"], r["column_fill"]): r for r in runs}
    effect = [
        {
            "dataset": d,
            "learner": k,
            "accuracy_after_conditional": by[(d, k, "conditional")]["accuracy_after"],
            "accuracy_after_median": by[(d, k, "median")]["accuracy_after"],
            "missing_class_accuracy_conditional": by[(d, k, "conditional")]["missing_class_accuracy_after"],
            "missing_class_accuracy_median": by[(d, k, "median")]["missing_class_accuracy_after"],
        }
        for d, k in sorted({(r["dataset"], r["learner"]) for r in runs})
    ]
    write_json(
        args.out,
        {
            "experiment": "column fill: conditional draw from the student's column model vs its median",
            "command": "python bench/column_fill.py " + " ".join(sys.argv[1:]),
            "effect": effect,
            "runs": runs,
            "concurrent_load": args.load,
        },
    )
    for e in effect:
        print(
            f"{e['dataset']:6s} {e['learner']:7s} after {100 * e['accuracy_after_median']:.1f}% (median) -> "
            f"{100 * e['accuracy_after_conditional']:.1f}% (conditional); lacking classes "
            f"{100 * e['missing_class_accuracy_median']:.1f}% -> {100 * e['missing_class_accuracy_conditional']:.1f}%"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
