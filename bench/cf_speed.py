"""Counterfactual search speed per teacher kind (cnn, mlp, forest) on Fashion-MNIST teachers.

    python bench/cf_speed.py                      # -> bench/results/cf_speed.json
    python bench/cf_speed.py --load "a training run on the other core"

The teacher is fmnist-10's peer 0 (its part of the miss-class split, trained briefly, seeds
fixed) under ckd's default teaching settings. The search is asked for every instance it gets
right (a superset of what any student qualifies), at most --examples of them. Rates:

- counterfactuals_per_second: what results.json reports as counterfactuals.per_second, in the
  same way: distinct counterfactuals made per second of wall time spent in Peer._search (start
  points, search, judging, de-duplication), the median of --repeats runs;
- per_example_loop_per_second: the same Peer._search called on one instance at a time;
- floor_per_second: a torch teacher's cost of one forward and backward pass (input gradient,
  batched as the search batches, in the layout the search uses) per search step, times the mean
  steps: the rate of a search that did nothing but its gradient passes. The forest has no
  gradient; its floor is one batched predict_proba per instance per step of its search.

The forest's leaf-box search (peer.core.counterfactual.forest_counterfactuals) is compared with
the derivative-free search it replaces on the same instances: validity (the forest predicts the
target class) and L1 distance to the start.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from fmnist10 import machine  # noqa: E402

from peer.config import DEFAULT_PRIVACY, PRIVACY_PRESETS, ExperimentConfig  # noqa: E402
from peer.core.counterfactual import (  # noqa: E402
    _fast_layout,
    leaf_box_counterfactuals,
    search_counterfactuals,
    soft_targets,
)
from peer.core.peer import Peer, TeachReport  # noqa: E402
from peer.data.fashion import load_fashion_mnist  # noqa: E402
from peer.experiment import build_peer, partition  # noqa: E402
from peer.learners.forest import ForestLearner  # noqa: E402
from peer.learners.neural import TorchLearner  # noqa: E402
from server.results import write_json  # noqa: E402

KINDS = ("cnn", "mlp", "forest")


def teacher(kind: str, epochs: int, fit: bool = True) -> Peer:
    cfg = ExperimentConfig(learners=kind, epochs=epochs, **PRIVACY_PRESETS[DEFAULT_PRIVACY])
    train, _ = load_fashion_mnist(cfg.data_dir)
    peer = build_peer(cfg, 0, kind, train, partition(cfg, train)[0])
    if fit:
        peer.train(epochs=epochs)
    return peer


CPU_SECONDS: dict[int, float] = {}  # id(report) -> CPU seconds of this process in the search


def search(peer: Peer, idx: np.ndarray, seed: int) -> TeachReport:
    """One Peer._search over `idx`; the report's mean steps and L1 to the start filled in from what
    it found, as Peer._search_and_release fills them in for a teaching call."""
    report = TeachReport(peer.id, "student", 1)
    cpu = time.process_time()
    found = peer._search(idx, report, np.random.default_rng(seed))
    CPU_SECONDS[id(report)] = time.process_time() - cpu
    report.mean_steps = float(found.steps.mean()) if len(found.steps) else 0.0
    if len(found.y):
        report.source_l1 = float(np.abs(found.x - found.src).reshape(len(found.y), -1).sum(axis=1).mean())
    return report


def rate(reports: list[TeachReport]) -> float:
    seconds = sum(r.counterfactual_seconds for r in reports)
    return sum(r.counterfactuals for r in reports) / seconds if seconds else 0.0


def gradient_pass_seconds(peer: Peer, x: np.ndarray, batch: int, repeats: int = 5) -> float:
    """Seconds per example of one forward and backward pass (gradient wrt the input), batched."""
    assert isinstance(peer.learner, TorchLearner)
    # the module the search runs (on a CPU, a convolutional teacher's channels-last copy)
    module = _fast_layout(peer.learner.module.eval(), peer.learner.device)
    for p in module.parameters():
        p.requires_grad_(False)
    xb = torch.from_numpy(np.ascontiguousarray(x[:batch], dtype=np.float32))
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        xa = xb.clone().requires_grad_(True)
        z = module(xa)
        (g,) = torch.autograd.grad(z.sum(), xa)
        best = min(best, time.perf_counter() - t)
    return best / len(xb)


def predict_seconds(peer: Peer, x: np.ndarray, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        peer.learner.predict_proba(x)
        best = min(best, time.perf_counter() - t)
    return best / len(x)


def distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a - b).reshape(len(a), -1).sum(axis=1)


def measure(kind: str, args: argparse.Namespace) -> dict:
    t = time.perf_counter()
    peer = teacher(kind, args.epochs)
    train_seconds = time.perf_counter() - t
    right = np.flatnonzero(peer.own_proba().argmax(axis=1) == peer.y)
    idx = np.sort(np.random.default_rng(0).choice(right, min(args.examples, len(right)), replace=False))
    boxes_seconds = None
    if isinstance(peer.learner, ForestLearner):  # built once per fitted forest, then cached
        t = time.perf_counter()
        peer.learner.leaf_boxes()
        boxes_seconds = round(time.perf_counter() - t, 2)
    search(peer, idx[:64], 0)  # warm-up
    runs = [search(peer, idx, r) for r in range(args.repeats)]
    per_run = [rate([r]) for r in runs]
    report = runs[0]
    loop_idx = idx[: args.loop_examples]
    t = time.perf_counter()
    loop = [search(peer, idx[i : i + 1], i) for i in range(len(loop_idx))]
    loop_wall = time.perf_counter() - t
    cc = peer.teach_config.counterfactual
    out: dict = {
        "learner": kind,
        "teacher_accuracy_own_data": round(float(len(right) / len(peer.y)), 4),
        "train_seconds": round(train_seconds, 1),
        **({"leaf_boxes_seconds": boxes_seconds} if boxes_seconds is not None else {}),
        "instances": int(len(idx)),
        "counterfactuals_per_second": round(statistics.median(per_run), 1),
        "counterfactuals_per_second_runs": [round(v, 1) for v in per_run],
        # CPU seconds of this process, all its threads: beside other work, wall time stretches while
        # CPU time much less; a run alone on the cores would come near made / (cpu_seconds / threads)
        "cpu_seconds_runs": [round(CPU_SECONDS[id(r)], 2) for r in runs],
        "counterfactuals_per_cpu_second": round(
            statistics.median(r.counterfactuals / max(CPU_SECONDS[id(r)], 1e-9) for r in runs), 1
        ),
        "made": report.counterfactuals,
        "failed": report.failed,
        "duplicates": report.duplicates,
        "mean_steps": round(report.mean_steps, 2),
        "mean_source_l1": round(report.source_l1, 3),
        "per_example_loop_per_second": round(rate(loop), 1),
        "per_example_loop_instances": int(len(loop_idx)),
        "per_example_loop_wall_seconds": round(loop_wall, 2),
    }
    loop_rate = max(out["per_example_loop_per_second"], 1e-9)
    out["speedup_over_loop"] = round(out["counterfactuals_per_second"] / loop_rate, 2)
    x = peer.search_space()[idx]
    steps = max(report.mean_steps, 1.0)
    if isinstance(peer.learner, TorchLearner):
        per = gradient_pass_seconds(peer, x, cc.batch_size)
        out["forward_backward_seconds_per_example"] = per
        out["floor_per_second"] = round(1.0 / (per * steps), 1)
        out["floor_what"] = "one forward+backward pass (input gradient) per example per search step, batched"
    else:
        per = predict_seconds(peer, x)
        out["predict_seconds_per_example"] = per
        out["floor_per_second"] = round(1.0 / (per * steps), 1)
        out["floor_what"] = "one batched predict_proba per example per search step (a forest has no gradient)"
    out["within_x_of_floor"] = round(out["floor_per_second"] / max(out["counterfactuals_per_second"], 1e-9), 2)
    if kind == "forest":
        out["compared_with_sampling_search"] = compare_forest(peer, idx[: args.compare_examples])
        # the same search with the evolution strategy's old budget of 20 steps (--cf-fallback-steps)
        taught = peer.teach_config
        peer.teach_config = replace(taught, counterfactual=replace(cc, fallback_steps=20))
        longer = search(peer, idx, 0)
        peer.teach_config = taught
        out["with_20_fallback_steps"] = {
            "made": longer.counterfactuals,
            "counterfactuals_per_second": round(rate([longer]), 1),
            "made_with_default": report.counterfactuals,
            "default_fallback_steps": cc.fallback_steps,
        }
    return out


def compare_forest(peer: Peer, idx: np.ndarray) -> dict:
    """On the same instances and soft targets (instance starts, the paper's): the search that
    teaches now (line search, leaf boxes from its best point, the evolution strategy for what the
    votes can still reach), the same without the evolution strategy, the leaf-box search alone
    from the instance, and the gradient-free search alone (what taught before)."""
    cc = peer.teach_config.counterfactual
    x0 = peer.search_space()[idx]
    target = soft_targets(peer.own_proba()[idx], peer.y[idx], cc.alpha)
    protos, boxes, predict = peer.prototypes(), peer.learner.leaf_boxes(), peer.learner.predict_proba
    assert boxes is not None
    searches = {
        "default": lambda: search_counterfactuals(
            predict, x0, target, protos, cc, np.random.default_rng(0), peer.levels, boxes
        ),
        "leaf_box_only": lambda: leaf_box_counterfactuals(boxes, predict, x0, target, cc, peer.levels),
        "sampling_only": lambda: search_counterfactuals(
            predict, x0, target, protos, cc, np.random.default_rng(0), peer.levels
        ),
        "without_evolution_strategy": lambda: search_counterfactuals(
            predict,
            x0,
            target,
            protos,
            replace(cc, fallback_steps=1),
            np.random.default_rng(0),
            peer.levels,
            boxes,
        ),
    }
    out: dict = {"instances": int(len(idx))}
    results = {}
    for name, run in searches.items():
        t = time.perf_counter()
        res = run()
        seconds = time.perf_counter() - t
        results[name] = res
        pred = predict(res.x).argmax(axis=1)
        out[name] = {
            "ok": int(res.ok.sum()),
            "seconds": round(seconds, 2),
            "per_second": round(float(res.ok.sum()) / seconds, 1),
            "ok_predicted_as_target": round(float((pred == target.argmax(axis=1))[res.ok].mean()), 4)
            if res.ok.any()
            else None,
            "mean_l1_of_ok": round(float(distance(res.x, x0)[res.ok].mean()), 3) if res.ok.any() else None,
            "mean_steps": round(float(res.steps.mean()), 2),
        }
    old, new = results["sampling_only"], results["default"]
    both = old.ok & new.ok
    out["both_ok"] = int(both.sum())
    out["mean_l1_both_ok"] = {
        "sampling_only": round(float(distance(old.x, x0)[both].mean()), 3) if both.any() else None,
        "default": round(float(distance(new.x, x0)[both].mean()), 3) if both.any() else None,
    }
    out["what"] = (
        "ok: reached the target gap after quantisation (predicted class = target class is then checked on "
        "ok_predicted_as_target); mean_l1_both_ok: L1 from the start over the instances both the default and "
        "the gradient-free search made; seconds exclude building the leaf boxes (once per fitted forest, see "
        "leaf_boxes_seconds)"
    )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--examples", type=int, default=4096, help="instances searched per run")
    parser.add_argument("--loop-examples", type=int, default=128, help="instances of the per-example loop")
    parser.add_argument("--compare-examples", type=int, default=512, help="forest: instances of the comparison")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2, help="teacher training epochs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cf_speed.json")
    parser.add_argument(
        "--load", default="nothing else", help="what else ran on the machine during the measurement (recorded)"
    )
    args = parser.parse_args()
    from peer.process import configure_process

    configure_process(args.threads)
    result: dict = {
        "command": "python bench/cf_speed.py " + shlex.join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {**machine(), "concurrent_load": args.load, "load_average_at_start": os.getloadavg()},
        "privacy": DEFAULT_PRIVACY,
        "what": "counterfactuals_per_second: distinct counterfactuals per second of wall time in the search "
        "(Peer._search), as results.json's counterfactuals.per_second; per_example_loop_per_second: the same, "
        "one instance per call; floor_per_second: see floor_what",
        "kinds": {},
    }
    for kind in args.kinds.split(","):
        print(f"{kind}...", flush=True)
        result["kinds"][kind] = measure(kind, args)
        print({k: v for k, v in result["kinds"][kind].items() if not isinstance(v, dict)}, flush=True)
    result["machine"]["load_average_at_end"] = os.getloadavg()
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
