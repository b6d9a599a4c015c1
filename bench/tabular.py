"""Tabular benchmark: three peers with different but overlapping columns and different learners.

    python bench/tabular.py                  # digits -> bench/results/tabular.json (about a minute on 2 cores)
    python bench/tabular.py --dataset wine   # wine -> bench/results/tabular_wine.json (seconds)
    python bench/tabular.py --set cf_forest_search=sampling --out /tmp/t.json   # an option changed

The paper's tabular setting on data that ships with scikit-learn: the 8x8 digits as a table of
64 named pixel columns ("pixel_r_c", values 0..16). Everything is fixed up front:
- test set: a stratified 25% of the 1,797 rows (seed 0), never seen in training;
- the rest shuffled (seed 0) into 3 parts; peer k never sees the classes c with c % 3 == k
  (label skew, as in fmnist-10), so each peer misses three or four digits;
- columns: peer-0 the top six pixel rows, peer-1 the bottom six, peer-2 the left six pixel
  columns (48 each, pairwise overlapping, each lacking 16 the others have);
- learners: peer-0 an MLP, peer-1 a random forest, peer-2 a linear model (logistic regression).
Peers teach each other with counterfactuals mapped by column name into the student's space.
`pooled_accuracy` is the best of the three learner kinds trained on all peers' rows and all
64 columns pooled (the reference each peer's gap is measured to).

`--dataset wine` is the same setting on scikit-learn's wine table (178 rows, 13 chemical
measurements in very different units, 3 cultivars): peer k never sees cultivar k; peer-0 has
columns 1-9, peer-1 columns 5-13, peer-2 columns 1-4 and 9-13.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from peer.config import ExperimentConfig, with_privacy  # noqa: E402
from peer.data.fashion import Dataset  # noqa: E402
from peer.data.sources import holdout  # noqa: E402
from peer.experiment import build_peer, evaluation_inputs  # noqa: E402
from peer.inprocess import InProcessTransport, run_rounds  # noqa: E402
from peer.learners import make_learner  # noqa: E402
from server.results import write_json  # noqa: E402

LEARNERS = ("mlp", "forest", "linear")
CONFIG = ExperimentConfig(
    peers=3,
    rounds=3,
    learners=",".join(LEARNERS),
    split="iid",
    epochs=60,
    retrain_epochs=30,
    batch_size=32,
    lr=3e-3,
    augment_copies=1,
    seed=0,
)


def load(name: str) -> Dataset:
    from sklearn import datasets

    d = {"digits": datasets.load_digits, "wine": datasets.load_wine}[name]()
    return Dataset(
        d.data.astype(np.float32),
        d.target.astype(np.int64),
        tuple(str(c) for c in d.target_names),
        tuple(d.feature_names),
    )


def pixels(rows: range, cols: range) -> tuple[str, ...]:
    return tuple(f"pixel_{r}_{c}" for r in rows for c in cols)


def feature_sets(name: str, data: Dataset) -> tuple[tuple[str, ...], ...]:
    if name == "digits":
        return pixels(range(0, 6), range(8)), pixels(range(2, 8), range(8)), pixels(range(8), range(0, 6))
    f = data.features
    return f[0:9], f[4:13], f[0:4] + f[8:13]


def parts(train: Dataset, seed: int = 0) -> list[np.ndarray]:
    """Shuffle into 3 parts; peer k never sees the classes c with c % 3 == k."""
    order = np.random.default_rng(seed).permutation(len(train))
    out = []
    for k, part in enumerate(np.array_split(order, 3)):
        out.append(np.sort(part[train.y[part] % 3 != k]))
    return out


def pooled(train: Dataset, test: Dataset, cfg: ExperimentConfig) -> dict[str, float]:
    """Each learner kind on all peers' rows and all columns."""
    out = {}
    for k, kind in enumerate(LEARNERS):
        learner = make_learner(kind, train.x.shape[1:], train.classes, cfg.train(k))
        learner.set_features(train.features, train.x)
        learner.fit(train.x, train.y)
        out[kind] = round(float((learner.predict(test.x) == test.y).mean()), 4)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=("digits", "wine"), default="digits")
    parser.add_argument(
        "--load",
        default="nothing else",
        help="what else ran on the machine during the measurement (recorded in the JSON)",
    )
    parser.add_argument(
        "--column-fill", choices=("conditional", "median"), default="conditional", help="see `ckd demo --help`"
    )
    parser.add_argument("--privacy", default="paper", help="release preset (see `ckd demo --help`)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: bench/results/tabular*.json)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="OPTION=VALUE",
        help="an option on top of the setting, e.g. --set cf_forest_search=sampling (needs --out)",
    )
    args = parser.parse_args()
    if args.set and not args.out:
        parser.error("--set needs --out: the result is not the benchmark's setting")
    from peer.process import configure_process

    configure_process(int(os.environ.get("CKD_THREADS", "1")))
    knobs = {}
    for item in args.set:
        key, _, value = item.partition("=")
        if not hasattr(CONFIG, key):
            parser.error(f"--set {item}: no option {key!r}")
        knobs[key] = type(getattr(CONFIG, key))(value)
    cfg = replace(CONFIG, column_fill=args.column_fill, **with_privacy({"privacy": args.privacy}, set()))
    cfg = replace(cfg, **knobs)
    data = load(args.dataset)
    train, test = holdout(data, 0.25, seed=0)
    features = feature_sets(args.dataset, data)
    peers = [
        build_peer(cfg, k, kind, train, part, features[k]) for k, (kind, part) in enumerate(zip(LEARNERS, parts(train)))
    ]
    start = time.perf_counter()
    log = run_rounds(
        peers,
        InProcessTransport({p.id: p for p in peers}),
        evaluation_inputs(peers, test),
        test.y,
        cfg.rounds,
        cfg.epochs,
        cfg.retrain_epochs,
        quiet=True,
    )
    wall = time.perf_counter() - start
    reference = pooled(train, test, cfg)
    best = max(reference.values())
    rows = []
    for p in peers:
        evals = log.evaluations[p.id]
        before, after = evals[0]["accuracy"], evals[-1]["accuracy"]
        missing = [c for c in range(len(train.classes)) if not (p.y == c).any()]
        rows.append(
            {
                "id": p.id,
                "learner": p.learner.kind,
                "features": list(p.features),
                "train_size": len(p.y),
                "missing_classes": [train.classes[c] for c in missing],
                "accuracy_before": round(before, 4),
                "accuracy_after": round(after, 4),
                "accuracy_by_round": [round(e["accuracy"], 4) for e in evals],
                "missing_class_accuracy_before": round(float(np.mean([evals[0]["per_class"][c] for c in missing])), 4),
                "missing_class_accuracy_after": round(float(np.mean([evals[-1]["per_class"][c] for c in missing])), 4),
                "gap_closed": round((after - before) / (best - before), 3) if best > before else None,
                "received": sum(r.sent for r in log.teach if r.student == p.id),
            }
        )
    weakest = min(rows, key=lambda r: r["accuracy_before"])
    what = {"digits": "scikit-learn digits as a 64-column table", "wine": "scikit-learn wine (13 columns)"}
    result = {
        "experiment": f"tabular: {what[args.dataset]}, 3 peers with overlapping columns and different learners",
        "command": "python bench/tabular.py " + shlex.join(sys.argv[1:]),
        "pooled_accuracy": best,
        "pooled_by_learner": reference,
        "weakest_peer": weakest["id"],
        "weakest_gap_closed": weakest["gap_closed"],
        "every_peer_improved": all(r["accuracy_after"] > r["accuracy_before"] for r in rows),
        "peers": rows,
        "pairs": [r.summary() for r in log.teach],
        "test_size": len(test),
        "wall_seconds": round(wall, 2),
        "config": {k: v for k, v in vars(cfg).items() if v not in (None, "")},
        "machine": {
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "concurrent_load": args.load,
        },
    }
    name = "tabular.json" if args.dataset == "digits" else f"tabular_{args.dataset}.json"
    write_json(args.out or ROOT / "bench" / "results" / name, result)
    for r in rows:
        print(
            f"{r['id']} {r['learner']:<7} {100 * r['accuracy_before']:.1f}% -> {100 * r['accuracy_after']:.1f}% "
            f"(missing {','.join(r['missing_classes'])}: {100 * r['missing_class_accuracy_before']:.1f}% -> "
            f"{100 * r['missing_class_accuracy_after']:.1f}%), gap closed {r['gap_closed']}"
        )
    print(f"pooled {100 * best:.1f}% {reference}; wall {wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
