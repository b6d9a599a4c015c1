"""Speed on whatever torch device there is: a CNN peer's training, evaluation and counterfactual search.

    python bench/gpu_check.py                  # --device auto: CUDA when present -> bench/results/gpu_check.json
    python bench/gpu_check.py --device cpu     # the same on the CPU

fmnist-10's peer 0 with a CNN (`--device` as `ckd demo` takes it), on the first --train-images
images of its part of the split:
- training: `TrainConfig.epochs` = --epochs over those images (TorchLearner.fit, batch size and
  learning rate as fmnist-10), images per second of wall time, after a warm-up fit of a
  throwaway model (CUDA's and oneDNN's first calls set up kernels);
- evaluation: Peer.evaluate on --test-images test images, images per second;
- counterfactual search: Peer._search under the default release (as bench/cf_speed.py) on every
  instance the trained model gets right, at most --examples, counterfactuals per second (the
  median of --repeats runs), and the floor of one batched forward and backward pass per step.

After each part the model's parameters are checked to be on the device asked for (the script
fails otherwise); on CUDA the peak memory each part allocated on the GPU is recorded, so a part
that quietly ran on the CPU shows 0 there.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from cf_speed import CPU_SECONDS, rate, search  # noqa: E402
from fmnist10 import machine  # noqa: E402

from peer.config import DEFAULT_PRIVACY, PRIVACY_PRESETS, ExperimentConfig  # noqa: E402
from peer.core.counterfactual import _fast_layout  # noqa: E402
from peer.core.peer import Peer  # noqa: E402
from peer.data.fashion import load_fashion_mnist  # noqa: E402
from peer.errors import UsageError  # noqa: E402
from peer.experiment import build_peer, partition  # noqa: E402
from peer.learners import make_learner  # noqa: E402
from peer.learners.neural import TorchLearner, pick_device  # noqa: E402
from server.results import write_json  # noqa: E402


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously: a clock read before this
    measures the queueing, not the work)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_info(device: torch.device) -> dict:
    info: dict = {"device": str(device), "torch": torch.__version__, "cuda_version": torch.version.cuda}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {
            "device_name": torch.cuda.get_device_name(device),
            "compute_capability": f"{props.major}.{props.minor}",
            "device_memory_gib": round(props.total_memory / 2**30, 1),
            "cudnn": torch.backends.cudnn.version(),
        }
    else:
        info["device_name"] = machine()["cpu"] or device.type
    return info


def on_device(learner: TorchLearner, device: torch.device, part: str) -> None:
    """Fail unless every parameter of the model is on `device` (after `part`)."""
    where = {p.device for p in learner.module.parameters()}
    if any(d.type != device.type or (device.index is not None and d.index != device.index) for d in where):
        raise SystemExit(f"{part}: the model is on {sorted(map(str, where))}, not on {device}")


class Peak:
    """Peak GPU memory allocated inside the block (None off CUDA)."""

    def __init__(self, device: torch.device):
        self.device, self.mib = device, None

    def __enter__(self) -> Peak:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.mib = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)


def gradient_pass_seconds(module: torch.nn.Module, x: np.ndarray, batch: int, device: torch.device) -> float:
    """Seconds per example of one forward and backward pass (gradient wrt the input), batched, on `device`."""
    xb = torch.from_numpy(np.ascontiguousarray(x[:batch], dtype=np.float32)).to(device)
    best = float("inf")
    for _ in range(6):  # the first is a warm-up
        sync(device)
        t = time.perf_counter()
        xa = xb.clone().requires_grad_(True)
        torch.autograd.grad(module(xa).sum(), xa)
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best / len(xb)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="torch device: auto (CUDA when present), cpu, cuda, cuda:1")
    parser.add_argument("--train-images", type=int, default=4096, help="training images (of peer 0's part)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--test-images", type=int, default=10000, help="evaluation images (of the test set)")
    parser.add_argument("--examples", type=int, default=4096, help="most instances searched per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu_check.json")
    parser.add_argument(
        "--load", default="nothing else", help="what else ran on the machine during the measurement (recorded)"
    )
    args = parser.parse_args()
    if min(args.train_images, args.epochs, args.test_images, args.examples, args.repeats, args.threads) < 1:
        parser.error("--train-images, --epochs, --test-images, --examples, --repeats and --threads must be >= 1")
    from peer.process import configure_process

    configure_process(args.threads)
    try:
        device = pick_device(args.device)
        torch.empty(0, device=device)  # an unknown or absent device fails here, not halfway through
    except (RuntimeError, UsageError) as exc:
        parser.error(f"--device {args.device}: {exc}")
    cfg = ExperimentConfig(
        learners="cnn",
        device=args.device,
        train_per_peer=args.train_images,
        epochs=args.epochs,
        **PRIVACY_PRESETS[DEFAULT_PRIVACY],
    )
    train, test = load_fashion_mnist(cfg.data_dir)
    peer: Peer = build_peer(cfg, 0, "cnn", train, partition(cfg, train)[0])
    learner = peer.learner
    assert isinstance(learner, TorchLearner)
    on_device(learner, device, "building")
    result: dict = {
        "command": "python bench/gpu_check.py " + shlex.join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **device_info(device),
        "machine": {**machine(), "concurrent_load": args.load, "load_average_at_start": os.getloadavg()},
    }

    print(f"training on {device} ({result['device_name']})...", flush=True)
    warm = make_learner("cnn", peer.input_shape, peer.classes, cfg.train(0))
    warm.fit(peer.x[:512], peer.y[:512], epochs=1)
    sync(device)
    with Peak(device) as peak:
        t, cpu = time.perf_counter(), time.process_time()
        learner.fit(peer.x, peer.y, epochs=args.epochs)
        sync(device)
        seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
    on_device(learner, device, "training")
    result["train"] = {
        "images": len(peer.y),
        "epochs": args.epochs,
        "batch_size": cfg.batch_size,
        "seconds": round(seconds, 3),
        "images_per_second": round(len(peer.y) * args.epochs / seconds, 1),
        # CPU seconds of this process, all its threads (beside other work wall time stretches, this less)
        "cpu_seconds": round(cpu, 2),
        "peak_gpu_mib": peak.mib,
    }

    x_test, y_test = test.float_inputs()[: args.test_images], test.y[: args.test_images]
    peer.evaluate(x_test[:256], y_test[:256])  # warm-up
    with Peak(device) as peak:
        t, cpu = time.perf_counter(), time.process_time()
        ev = peer.evaluate(x_test, y_test)
        seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
    on_device(learner, device, "evaluation")
    result["evaluate"] = {
        "images": len(y_test),
        "accuracy": round(ev["accuracy"], 4),
        "seconds": round(seconds, 3),
        "images_per_second": round(len(y_test) / seconds, 1),
        "cpu_seconds": round(cpu, 2),
        "peak_gpu_mib": peak.mib,
    }

    print("counterfactual search...", flush=True)
    right = np.flatnonzero(peer.own_proba().argmax(axis=1) == peer.y)
    idx = np.sort(np.random.default_rng(0).choice(right, min(args.examples, len(right)), replace=False))
    search(peer, idx[:64], 0)  # warm-up
    with Peak(device) as peak:
        runs = [search(peer, idx, r) for r in range(args.repeats)]
    on_device(learner, device, "counterfactual search")
    per_run = [rate([r]) for r in runs]
    steps = max(runs[0].mean_steps, 1.0)
    # the floor in the layout the search uses (on a CPU, a convolutional model's channels-last copy)
    module = _fast_layout(learner.module.eval(), device)
    for p in module.parameters():
        p.requires_grad_(False)
    per = gradient_pass_seconds(module, peer.search_space()[idx], cfg.counterfactual().batch_size, device)
    cps = statistics.median(per_run)
    result["counterfactuals"] = {
        "instances": int(len(idx)),
        "counterfactuals_per_second": round(cps, 1),
        "counterfactuals_per_second_runs": [round(v, 1) for v in per_run],
        "cpu_seconds_runs": [round(CPU_SECONDS[id(r)], 2) for r in runs],
        "made": runs[0].counterfactuals,
        "failed": runs[0].failed,
        "mean_steps": round(runs[0].mean_steps, 2),
        "floor_per_second": round(1.0 / (per * steps), 1),
        "floor_what": "one forward+backward pass (input gradient) per example per search step, batched",
        "within_x_of_floor": round(1.0 / (per * steps) / max(cps, 1e-9), 2),
        "peak_gpu_mib": peak.mib,
        "privacy": DEFAULT_PRIVACY,
    }
    result["machine"]["load_average_at_end"] = os.getloadavg()
    write_json(args.out, result)
    print(
        f"{result['device_name']}: train {result['train']['images_per_second']:.0f} images/s, evaluate "
        f"{result['evaluate']['images_per_second']:.0f} images/s, search {cps:.0f} counterfactuals/s; wrote {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
