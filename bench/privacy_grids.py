"""What a receiver sees, beside the teacher's private images it is closest to, under each preset.

    python bench/privacy_grids.py   # -> bench/figures/privacy_grid_<preset>.png

Two fmnist-10 peers (the fixed split, their whole parts, 2 epochs): peer-1 teaches peer-0,
which never saw class 0. For each --privacy preset (and --min-distance 1 alone, and a mix of 2 with
the filter and 4 searches) the grid shows the
8 examples peer-1 sends that sit closest to one of its private images (top row), that private
image (bottom row) and their L2 distance (pixels in [0, 1]; two distinct private images of this
set sit about 3.5 apart).
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from peer.config import PRIVACY_PRESETS, ExperimentConfig  # noqa: E402
from peer.core.blob import ModelBlob  # noqa: E402
from peer.core.peer import Peer, TeachConfig  # noqa: E402
from peer.data.fashion import load_fashion_mnist  # noqa: E402
from peer.experiment import build_peers  # noqa: E402
from peer.privacy.attacks import reconstruction_pairs, save_reconstruction_grid  # noqa: E402


def two_peers(base: ExperimentConfig, train) -> tuple[Peer, Peer, ModelBlob]:
    """Peers 0 (the student) and 1 (the teacher) of the fixed split trained on their whole parts,
    and the student's model as published for round 1."""
    student, teacher = build_peers(base, train)[:2]
    student.train(round=0)
    teacher.train(round=0)
    return student, teacher, student.snapshot(1)


def teaching_as(teacher: Peer, teach: TeachConfig) -> Peer:
    """The trained teacher (its data and model shared) releasing under `teach`."""
    return Peer(teacher.id, teacher.x, teacher.y, teacher.classes, teacher.learner, teach, seed=teacher.seed)


def main() -> int:
    from peer.process import configure_process

    configure_process(1)
    base = ExperimentConfig(epochs=2)
    train, _ = load_fashion_mnist(base.data_dir)
    student, teacher, blob = two_peers(base, train)
    # the presets, and --min-distance 1 alone (the paper's start with the filter)
    settings = {
        **PRIVACY_PRESETS,
        "min-distance-1": {**PRIVACY_PRESETS["paper"], "min_distance": 1.0},
        "mix2": {**PRIVACY_PRESETS["guarded"], "cf_start_k": 2, "min_distance_action": "drop"},  # bench/unmix.py
    }
    for name, knobs in settings.items():
        cfg = replace(base, privacy=name if name in PRIVACY_PRESETS else "custom", **knobs)
        batches, report = teaching_as(teacher, cfg.teach()).teach(student.id, blob, 1)
        sent = np.concatenate([b.inputs() for b in batches]) if batches else np.zeros((0, *teacher.input_shape))
        if not len(sent):
            print(f"{name}: nothing sent")
            continue
        out = ROOT / "bench" / "figures" / f"privacy_grid_{name}.png"
        save_reconstruction_grid(
            reconstruction_pairs(sent, teacher.x, k=8),
            out,
            f"{name}: sent by {teacher.id} (top) beside its nearest private image "
            f"(bottom); {report.sent} sent, {report.near_copies} near-copies",
        )
        print(f"{name}: {report.sent} sent, {report.near_copies} near-copies -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
