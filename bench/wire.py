"""Bytes on the wire: fmnist-10 over gRPC in float32 and in compact encodings, against FedAvg.

    python bench/wire.py          # -> bench/results/wire.json (+ each run's results in bench/results/wire/)

Two `ckd launch --peers 10` runs (bench/grpc_fmnist10.py's launch: a coordinator and one process
per peer, mutual TLS, loopback) with today's defaults: once with float32 everything (the model a
peer publishes in float32, images at 256 gray levels) and once compact (--blob-precision int8
--blob-rank 16 --example-precision uint4). For each: every peer's bytes sent by kind (model chunks
it served, example chunks it pushed, control requests) and the payload they carried.

FedAvg (bench/baselines.py: CNN, 10 rounds of 1 local epoch, all peers, the same split) is run in
the same invocation for its test accuracy after each round. A FedAvg round moves the model twice
per peer: the server sends it to each of the P peers and each sends its update back, 2 * P * the
float32 arrays' bytes (framing and control not counted). ckd's bytes are everything its peers
sent, framing of each message included (the coordinator's replies, a few kB, are not counted).
fedavg_bytes_to_same_accuracy: FedAvg's bytes up to the first round whose accuracy reaches the
compact run's median accuracy after.

--reuse takes a run's results from bench/results/wire/<run>/results.json where one exists with
the same configuration, instead of launching it again (the JSON says which runs were reused).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from baselines import fedavg, model_bytes  # noqa: E402
from fmnist10 import machine  # noqa: E402
from grpc_fmnist10 import SMALL, launch  # noqa: E402

from peer.config import ExperimentConfig  # noqa: E402
from peer.data.fashion import load_fashion_mnist  # noqa: E402
from peer.experiment import limit_test  # noqa: E402
from server.results import write_json  # noqa: E402

FLOAT32 = {"blob_precision": "float32", "blob_rank": 0, "example_precision": "uint8"}
COMPACT = {"blob_precision": "int8", "blob_rank": 16, "example_precision": "uint4"}


def same_config(results: dict, cfg: ExperimentConfig) -> bool:
    """Whether a stored results.json was run with `cfg` (options it predates count at their default)."""
    stored = results.get("config", {})
    defaults = asdict(ExperimentConfig())
    return all(stored.get(k, defaults[k]) == v for k, v in asdict(cfg).items() if k not in ("data_dir", "device"))


def run(name: str, cfg: ExperimentConfig, out: Path, threads: int, reuse: bool) -> dict:
    """One gRPC fmnist-10 run: accuracy, bytes sent by kind and payload by kind."""
    stored = out / "results.json"
    if reuse and stored.exists() and same_config(json.loads(stored.read_text()), cfg):
        summary, reused = json.loads(stored.read_text()), True
        print(f"{name}: reusing {stored}", flush=True)
    else:
        print(f"{name}: ckd launch --peers {cfg.peers} ...", flush=True)
        summary, _ = launch(cfg, out, threads)
        reused = False
    wire = summary["wire"]
    sent = sum(wire["bytes_sent"])
    result = {
        "settings": {k: getattr(cfg, k) for k in FLOAT32},
        "reused_stored_run": reused,
        "median_accuracy_before": summary["median_accuracy_before"],
        "median_accuracy_after": summary["median_accuracy_after"],
        "wall_seconds": summary["wall_seconds"],
        "bytes_sent": sent,
        "bytes_sent_per_peer": wire["bytes_sent"],
        "bytes_by_kind": wire.get("by_kind"),
        "payload_bytes": wire["payload_bytes"],
        "payload_by_kind": wire.get("payload_by_kind"),
        "examples_sent": summary["leakage"].get("sent") if summary.get("leakage") else None,
        "near_copies": summary["leakage"].get("near_copies") if summary.get("leakage") else None,
    }
    print(
        f"{name}: median {result['median_accuracy_after']:.4f}, {sent} bytes sent ({result['bytes_by_kind']})",
        flush=True,
    )
    return result


def first_round_reaching(curve: list[float], accuracy: float) -> int | None:
    """1-based round of the first accuracy >= `accuracy` (None: never reached)."""
    return next((r + 1 for r, a in enumerate(curve) if a >= accuracy), None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per peer process (and of FedAvg)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "wire.json")
    parser.add_argument("--reuse", action="store_true", help="reuse stored runs of the same configuration")
    parser.add_argument("--load", default="", help="what else ran on the machine meanwhile (recorded)")
    for name in SMALL:  # to check the script on a small config; the benchmark uses the defaults
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=None)
    args = parser.parse_args()
    small = {k: getattr(args, k) for k in SMALL if getattr(args, k) is not None}
    base = replace(ExperimentConfig(), **small)
    runs_dir = args.out.with_suffix("")
    runs = {
        name: run(name, replace(base, **settings), runs_dir / name, args.threads, args.reuse)
        for name, settings in (("float32", FLOAT32), ("compact", COMPACT))
    }

    from peer.process import configure_process

    configure_process(args.threads)
    train, test = load_fashion_mnist(base.data_dir)
    test = limit_test(base, test)
    print("fedavg ...", flush=True)
    t = time.perf_counter()
    curve = fedavg(base, train, test)
    fed_seconds = time.perf_counter() - t
    model = model_bytes(base, train)
    per_round = 2 * base.peers * model
    compact, full = runs["compact"], runs["float32"]
    reach = first_round_reaching(curve, compact["median_accuracy_after"])
    fed_bytes = reach * per_round if reach else None
    result = {
        "command": "python bench/wire.py"
        + (f" --threads {args.threads}" if args.threads != 1 else "")
        + (" --reuse" if args.reuse else "")
        + (f" --load {shlex.quote(args.load)}" if args.load else "")
        + "".join(f" --{k.replace('_', '-')} {v}" for k, v in small.items()),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {**machine(), "torch_threads_per_peer": args.threads, "concurrent_load": args.load or None},
        "transport": "grpc, mutual TLS, one process per peer on loopback",
        "ckd_bytes": compact["bytes_sent"],
        "fedavg_bytes_to_same_accuracy": fed_bytes,
        "bytes_ratio": round(compact["bytes_sent"] / fed_bytes, 4) if fed_bytes else None,
        "median_accuracy_after": compact["median_accuracy_after"],
        "median_accuracy_after_float32": full["median_accuracy_after"],
        "accuracy_change_points": round(100 * (compact["median_accuracy_after"] - full["median_accuracy_after"]), 2),
        "compact_over_float32_bytes": round(compact["bytes_sent"] / full["bytes_sent"], 4),
        "runs": runs,
        "fedavg": {
            "accuracy_per_round": curve,
            "model_bytes": model,
            "bytes_per_round": per_round,
            "rounds_to_same_accuracy": reach,
            "counted": "each round the server sends the float32 model to every peer and every peer sends its "
            "update back: 2 x peers x the model's array bytes, framing and control not counted",
            "seconds": round(fed_seconds, 1),
        },
        "what": "ckd_bytes: every byte the compact run's peers sent (serialized gRPC messages and their 5-byte "
        "prefix: model chunks served to teachers, example chunks pushed to students, control requests); "
        "bytes_by_kind splits them, payload_by_kind is the model arrays and example arrays they carried",
        "config": asdict(base),
    }
    print(
        f"ckd {result['ckd_bytes']} bytes (median {result['median_accuracy_after']:.4f}; float32 "
        f"{full['bytes_sent']} bytes, median {full['median_accuracy_after']:.4f}); FedAvg reaches it in round "
        f"{reach}: {fed_bytes} bytes; ratio {result['bytes_ratio']}",
        flush=True,
    )
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
