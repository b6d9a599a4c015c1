"""Accuracy gain against the best membership-inference attack, per setting of bench/results/privacy.json.

python bench/plot_privacy.py   # -> bench/figures/privacy_frontier.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MARKERS = {"paper": "*", "cf_start": "o", "min_distance": "s", "noise_scale": "^", "combination": "D"}


def main() -> int:
    # a setting that sent nothing has no attack to plot
    rows = [
        r for r in json.loads((ROOT / "bench" / "results" / "privacy.json").read_text()) if r["mia_auc"] is not None
    ]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for knob, marker in MARKERS.items():
        mine = [r for r in rows if r["knob"] == knob]
        if mine:
            ax.scatter(
                [r["mia_auc"] for r in mine],
                [100 * r["accuracy_gain"] for r in mine],
                marker=marker,
                s=120 if knob == "paper" else 50,
                label=knob,
            )
        for r in mine:
            ax.annotate(
                r["value"] if knob != "paper" else "paper",
                (r["mia_auc"], 100 * r["accuracy_gain"]),
                fontsize=7,
                xytext=(4, 3),
                textcoords="offset points",
            )
    paper = next((r for r in rows if r["knob"] == "paper"), None)
    if paper:
        ax.axhline(80 * paper["accuracy_gain"], color="grey", ls=":", lw=1, label="80% of the paper's gain")
    ax.axvline(0.55, color="red", ls=":", lw=1, label="attack AUC 0.55")
    ax.set_xlabel("best membership-inference attack on what was sent: ROC AUC (0.5 = guessing)")
    ax.set_ylabel("median accuracy gain, points (fmnist-10, 1 round)")
    ax.set_title("What a setting teaches against what it gives away")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    out = ROOT / "bench" / "figures" / "privacy_frontier.png"
    out.parent.mkdir(exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
