"""Can a receiver unmix what a mix start sends? Two fmnist-10 peers, six release settings.

    python bench/unmix.py      # -> bench/results/unmix.json (minutes on 2 cores)

A search that starts at the mean of k private images sends x' = (p_1 + ... + p_k) / k + delta. A
receiver who knows k (results.json records it) tests a candidate c by k x' - c: for a source it is
the sum of the other k - 1 images, inside [0, k - 1]; for anything else it leaves that range. The
unmix attack scores each candidate by how little it leaves it, over everything received
(peer.privacy.attacks.unmix_attack). As in bench/privacy_grids.py: peers 0 and 1 of the fixed
split, their whole parts, 2 epochs; peer-1 teaches peer-0 once. Members: 500 of peer-1's private
images of the classes it sent; non-members: 500 test images of those classes. The distance attack
on the same candidates is reported beside it.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from fmnist10 import machine  # noqa: E402
from privacy_grids import teaching_as, two_peers  # noqa: E402

from peer.config import PRIVACY_PRESETS, ExperimentConfig  # noqa: E402
from peer.data.fashion import load_fashion_mnist  # noqa: E402
from peer.privacy.attacks import distance_attack, unmix_attack  # noqa: E402
from server.results import write_json  # noqa: E402

GUARDED = PRIVACY_PRESETS["guarded"]
CLASS = {**GUARDED, "cf_start_pool": "class"}
SETTINGS = {
    "mix 4, filter, 1 search": {**CLASS, "cf_start_k": 4, "cf_start_cross": 0, "release_tries": 1},
    "mix 4, filter, 4 searches": {**CLASS, "cf_start_k": 4, "cf_start_cross": 0, "release_tries": 4},
    "mix 4 with 1 across, filter, 4 searches": {**CLASS, "cf_start_k": 4, "cf_start_cross": 1},
    "mix 4 with 1 across, alike, filter, 4 searches (guarded)": dict(GUARDED),
    "mix 2, filter, 4 searches": {**CLASS, "cf_start_k": 2, "release_tries": 4},
    "mix 2, no filter": {**CLASS, "cf_start_k": 2, "min_distance": 0.0, "release_tries": 1},
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sample", type=int, default=500)
    parser.add_argument("--load", default="nothing else", help="what else ran on the machine (recorded)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "unmix.json")
    args = parser.parse_args()
    from peer.process import configure_process

    configure_process(2)
    base = ExperimentConfig(epochs=2)
    train, test = load_fashion_mnist(base.data_dir)
    student, teacher, blob = two_peers(base, train)
    tx, ty = test.float_inputs().reshape(len(test), -1), test.y
    rows = []
    for name, knobs in SETTINGS.items():
        cfg = replace(base, privacy="custom", **knobs)
        rng = np.random.default_rng(0)
        batches, report = teaching_as(teacher, cfg.teach()).teach(student.id, blob, 1)
        sent = np.concatenate([b.inputs() for b in batches]).astype(np.float32).reshape(report.sent, -1)
        classes = np.unique(np.concatenate([b.y for b in batches]))
        mem_pool = np.flatnonzero(np.isin(teacher.y, classes))
        non_pool = np.flatnonzero(np.isin(ty, classes))
        members = teacher.x[rng.choice(mem_pool, min(args.sample, len(mem_pool)), replace=False)]
        non = tx[rng.choice(non_pool, min(args.sample, len(non_pool)), replace=False)]
        members = members.reshape(len(members), -1)
        unmix = unmix_attack(sent, members, non, knobs["cf_start_k"])
        dist = distance_attack(sent, members, non)
        rows.append(
            {
                "setting": name,
                "knobs": knobs,
                "sent": report.sent,
                "near_copies": report.near_copies,
                "classes_sent": len(classes),
                "unmix_auc": unmix.auc,
                "unmix_tpr_at_1pct_fpr": unmix.tpr_at_1pct_fpr,
                "distance_auc": dist.auc,
                "distance_tpr_at_1pct_fpr": dist.tpr_at_1pct_fpr,
            }
        )
        print(
            f"{name}: sent {report.sent}, unmix AUC {unmix.auc:.3f} TPR@1% {unmix.tpr_at_1pct_fpr:.3f}, "
            f"distance AUC {dist.auc:.3f} TPR@1% {dist.tpr_at_1pct_fpr:.3f}",
            flush=True,
        )
    write_json(
        args.out,
        {
            "experiment": "unmix attack on mix starts: peer-1 teaches peer-0 once, fmnist-10 split, 2 epochs",
            "command": "python bench/unmix.py " + " ".join(sys.argv[1:]),
            "rows": rows,
            "machine": {**machine(), "concurrent_load": args.load},
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
