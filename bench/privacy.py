"""Privacy/accuracy frontier of the release knobs on fmnist-10.

    python bench/privacy.py                       # full fmnist-10 -> bench/results/privacy.json
    python bench/privacy.py --train-per-peer 1500 --test-limit 2000 --out runs/privacy_small.json

Round 0 (local training) is the same for every setting, so it is trained once; each setting
then runs its rounds of teach and retrain on deep copies of the trained peers. For every
setting: median accuracy after and its gain over round 0, the gain as a share of the paper
setting's gain, and what the sent examples reveal about each teacher's private data:
- near_copy_share: share of sent inputs closer to some private example p than p's nearest other
  private example (nearest_ratio < 1)
- aligned_near_copy_share: the same over a sample of what was sent with shifts allowed: some
  whole-pixel shift (within 2 pixels) of the sent image is nearer a private image p than any
  shift of any other private image is to p (aligned_nearest_ratio < 1): a shifted copy counts
- median_nearest_private_ratio: median of (distance to the nearest private example) / (that
  example's distance to its nearest other private example)
- mia_auc, tpr_at_1pct_fpr: the best membership-inference attack a receiver could mount from
  what it received: members = a sample of each teacher's private instances, non-members = test
  images of the classes that teacher holds (attacks from peer.privacy.attacks where present,
  else the distance attack: score = -distance to the nearest example received from it).
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from fmnist10 import machine  # noqa: E402  (bench/ is this script's own folder on sys.path)

from peer.config import PRIVACY_PRESETS, ExperimentConfig  # noqa: E402
from peer.core.peer import Peer  # noqa: E402
from peer.data.fashion import load_fashion_mnist  # noqa: E402
from peer.experiment import build_peers  # noqa: E402
from peer.inprocess import InProcessTransport  # noqa: E402
from peer.privacy.measures import aligned_nearest_ratio, nearest, nearest_ratio  # noqa: E402
from peer.round import RunLog, teach_students, train_step  # noqa: E402

KNOBS = (
    "cf_start",
    "cf_start_k",
    "min_distance",
    "min_distance_action",
    "noise_scale",
    "release_tries",
    "augment_copies",
)
# the paper setting: its preset, and one augmented copy per counterfactual (the default)
PAPER = {**PRIVACY_PRESETS["paper"], "augment_copies": 1}


def settings() -> list[tuple[str, str, dict]]:
    """(knob, value, knob settings) of the sweep, the paper setting first."""
    out = [("paper", "instance", {})]
    for k in (2, 3, 4, 8, 16):
        out.append(("cf_start", f"mix k={k}", {"cf_start": "mix", "cf_start_k": k}))
    out += [("cf_start", "prototype", {"cf_start": "prototype"}), ("cf_start", "noise", {"cf_start": "noise"})]
    for f in (0.25, 0.5, 0.75, 1.0, 1.25):
        out.append(("min_distance", str(f), {"min_distance": f}))
    for s in (0.05, 0.1, 0.2, 0.3, 0.5):
        out.append(("noise_scale", str(s), {"noise_scale": s}))
    combos = [
        {"cf_start": "mix", "cf_start_k": 2, "min_distance": 1.0},
        {"cf_start": "mix", "cf_start_k": 4, "min_distance": 1.0},
        {"cf_start": "mix", "cf_start_k": 8, "min_distance": 1.0},
        {"cf_start": "mix", "cf_start_k": 4, "min_distance": 1.0, "noise_scale": 0.1},
        {"cf_start": "instance", "min_distance": 1.0, "noise_scale": 0.2},
        {"cf_start": "prototype", "min_distance": 1.0},
        # an instance whose x' the filter dropped searched again from a new mix
        {"cf_start": "mix", "cf_start_k": 2, "min_distance": 1.0, "release_tries": 4},
        {"cf_start": "mix", "cf_start_k": 4, "min_distance": 1.0, "release_tries": 4},
        {"cf_start": "mix", "cf_start_k": 2, "min_distance": 1.0, "release_tries": 8},
        {"cf_start": "mix", "cf_start_k": 2, "min_distance": 1.0, "release_tries": 4, "augment_copies": 3},
        # more of what passes the filter: more shifted copies, a mix of 3, more searches
        {"cf_start": "mix", "cf_start_k": 4, "min_distance": 1.0, "release_tries": 4, "augment_copies": 3},
        {"cf_start": "mix", "cf_start_k": 3, "min_distance": 1.0, "release_tries": 4},
        {"cf_start": "mix", "cf_start_k": 4, "min_distance": 1.0, "release_tries": 16},
        # a near x' moved out of the private example's ball instead of dropped
        {"cf_start": "mix", "cf_start_k": 4, "min_distance": 1.0, "min_distance_action": "push", "release_tries": 4},
        {"cf_start": "mix", "cf_start_k": 4, "min_distance": 1.0, "min_distance_action": "push", "release_tries": 1},
    ]
    for c in combos:
        out.append(("combination", " ".join(f"{k}={v}" for k, v in c.items()), c))
    return out


class RecordingTransport(InProcessTransport):
    """In-process delivery that also keeps every batch, for measuring what was sent."""

    def __init__(self, peers: dict) -> None:
        super().__init__(peers)
        self.batches = []

    def push_examples(self, peer_id, batch):
        self.batches.append(batch)
        return super().push_examples(peer_id, batch)


ALIGNED_SAMPLE = 300  # sent images per teacher checked at every shift (25 shifts each)
REFERENCE = 3000  # most attacker reference images per teacher (shadow sets, confidence calibration)
# attacks on what was sent ("unmix" where the search starts at a mix); "confidence" reads the teacher's model
ON_SENT = ("distance", "aligned", "calibrated", "unmix")


def measure(
    peers,
    transport: RecordingTransport,
    attack_x: np.ndarray,
    attack_y: np.ndarray,
    sample: int,
    seed: int,
    mix_k: int | None = None,
) -> dict:
    """Near-copies, ratio median and attacks over everything each teacher sent.

    Per teacher: members = `sample` of its private instances; non-members = `sample` images of
    `attack_x` (test images) of the classes it holds; the attacker's reference data = the other
    test images of those classes. An attack's AUC and TPR are the median over teachers; the best
    attack is the one with the highest median AUC among those on what was sent.
    """
    from peer.privacy.attacks import run_attacks

    by_teacher: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for b in transport.batches:
        x = b.x.astype(np.float32) / 255.0 if b.x.dtype == np.uint8 else b.x.astype(np.float32)
        by_teacher.setdefault(b.sender, []).append((x, b.y))
    ratios, near, aligned, results = [], [], [], {}
    rng = np.random.default_rng(seed)
    for p in peers:
        got = by_teacher.get(p.id, [])
        if not got:
            continue
        sent, sent_y = np.concatenate([g[0] for g in got]), np.concatenate([g[1] for g in got])
        nn = p.private_nn()
        d, i = nearest(sent, p.x)
        ratios.append(d / np.maximum(nn[i], 1e-6))
        near.append(nearest_ratio(sent, p.x, nn) < 1.0)
        if p.image:
            pick = rng.choice(len(sent), min(ALIGNED_SAMPLE, len(sent)), replace=False)
            aligned.append(aligned_nearest_ratio(sent[pick], p.x) < 1.0)
        mem = rng.choice(len(p.x), min(sample, len(p.x)), replace=False)
        pool = rng.permutation(np.flatnonzero(np.isin(attack_y, np.unique(p.y))))
        non, ref = pool[:sample], pool[sample : sample + REFERENCE]
        flat = lambda a: a.reshape(len(a), -1)  # noqa: E731
        res = run_attacks(
            flat(sent),
            sent_y,
            flat(p.x[mem]),
            p.y[mem],
            flat(attack_x[non]),
            attack_y[non],
            flat(attack_x[ref]),
            attack_y[ref],
            rng=rng,
            image_shape=tuple(p.input_shape) if p.image else None,
            mix_k=mix_k,
            model=lambda a, p=p: p.learner.predict_proba(a.reshape(-1, *p.input_shape)),
        )
        for name, r in res.items():
            results.setdefault(name, []).append((r.auc, r.tpr_at_1pct_fpr))
    ratios_all = np.concatenate(ratios) if ratios else np.zeros(0)
    near_all = np.concatenate(near) if near else np.zeros(0, bool)
    attacks = {
        k: {
            "auc": float(np.median([a for a, _ in v])),
            "tpr_at_1pct_fpr": float(np.median([t for _, t in v])),
            "auc_max": float(max(a for a, _ in v)),
            "tpr_at_1pct_fpr_max": float(max(t for _, t in v)),
        }
        for k, v in results.items()
    }
    on_sent = [k for k in attacks if k in ON_SENT]
    best = max(on_sent, key=lambda k: (attacks[k]["auc"], attacks[k]["tpr_at_1pct_fpr"])) if on_sent else None
    return {
        "sent": int(len(ratios_all)),
        "near_copy_share": float(near_all.mean()) if near_all.size else 0.0,
        "aligned_near_copy_share": float(np.concatenate(aligned).mean()) if aligned else None,
        "median_nearest_private_ratio": float(np.median(ratios_all)) if ratios_all.size else None,
        "mia_auc": attacks[best]["auc"] if best else None,
        "tpr_at_1pct_fpr": attacks[best]["tpr_at_1pct_fpr"] if best else None,
        "best_attack": best,
        "attacks": attacks,
    }


def fresh_copy(p: Peer, teach) -> Peer:
    """Peer p as trained in round 0 (its learner copied, its data and cached predictions shared),
    with `teach` and an empty store."""
    q = Peer(
        p.id, p.x, p.y, p.classes, copy.deepcopy(p.learner), teach, seed=p.seed, image=p.image, features=p.features
    )
    q._own_proba, q._private_nn = p.own_proba(), p.private_nn()
    return q


def median_accuracy(log: RunLog, r: int) -> float:
    return float(np.median([ev[r]["accuracy"] for ev in log.evaluations.values()]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=1, help="rounds of teach and retrain per setting")
    parser.add_argument("--train-per-peer", type=int, default=0, help="examples of each peer's part (0: all)")
    parser.add_argument("--test-limit", type=int, default=0, help="first N test images (0: all)")
    parser.add_argument("--sample", type=int, default=500, help="members and non-members per teacher for attacks")
    parser.add_argument("--only", default="", help="comma list of setting indices to run (default: all)")
    parser.add_argument(
        "--paper-gain",
        type=float,
        default=None,
        help="the paper setting's gain from an earlier run of the same round 0, for gain_ratio "
        "when setting 0 is not in --only",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "privacy.json")
    parser.add_argument("--load", default="nothing else", help="what else ran on the machine meanwhile (recorded)")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the rows of --out that this run does not measure (a row measured here replaces its "
        "earlier one); each row keeps the command that measured it",
    )
    args = parser.parse_args()
    from peer.process import configure_process

    configure_process(args.threads)

    base = ExperimentConfig(
        rounds=args.rounds,
        train_per_peer=args.train_per_peer,
        test_limit=args.test_limit,
        privacy="custom",
        device=args.device,
        validation_share=0.0,  # the release knobs alone, on the peers' whole parts: no validation gate
    )
    train, test = load_fashion_mnist(base.data_dir)
    attack_x, attack_y = test.float_inputs(), test.y  # non-members and attacker reference: all test images
    if base.test_limit:
        test = test.subset(np.arange(min(base.test_limit, len(test))))
    test_x = test.float_inputs()
    t = time.perf_counter()
    peers0 = build_peers(base, train)
    ids = [p.id for p in peers0]
    records0 = [train_step(p, 0, base.epochs, test_x, test.y) for p in peers0]
    log0 = RunLog.from_records(records0, ids)
    for p in peers0:
        p.own_proba(), p.private_nn()  # cached once, shared by every copy
    before = median_accuracy(log0, 0)
    print(f"round 0: median accuracy {before:.4f} ({time.perf_counter() - t:.0f} s)", flush=True)

    chosen = settings()
    if args.only:
        chosen = [chosen[int(i)] for i in args.only.split(",")]
    rows, paper_gain = [], args.paper_gain
    earlier = json.loads(args.out.read_text()) if args.merge and args.out.exists() else []
    for knob, value, knobs in chosen:
        t = time.perf_counter()
        cfg = replace(base, **{**PAPER, **knobs})
        peers = [fresh_copy(p, cfg.teach()) for p in peers0]
        transport = RecordingTransport({p.id: p for p in peers})
        records = list(records0)
        for r in range(1, cfg.rounds + 1):
            for p in peers:
                p.snapshot(r)
            taught = {p.id: teach_students(p, r, ids, transport) for p in peers}
            records += [train_step(p, r, cfg.retrain_epochs, test_x, test.y).merge(taught[p.id]) for p in peers]
        log = RunLog.from_records(records, ids)
        after = median_accuracy(log, cfg.rounds)
        gain = after - before
        if knob == "paper":
            paper_gain = gain
        row = {
            "knob": knob,
            "value": value,
            "median_accuracy_before": before,
            "median_accuracy_after": after,
            "accuracy_gain": gain,
            "gain_ratio": gain / paper_gain if paper_gain else None,
            **measure(
                peers,
                transport,
                attack_x,
                attack_y,
                args.sample,
                cfg.seed,
                mix_k=cfg.cf_start_k if cfg.cf_start == "mix" else None,
            ),
            "filtered": sum(rep.filtered for rep in log.teach),
            "retried": sum(rep.retried for rep in log.teach),
            "failed": sum(rep.failed for rep in log.teach),
            "counterfactuals": sum(rep.counterfactuals for rep in log.teach),
            "seconds": round(time.perf_counter() - t, 1),
            "config": asdict(cfg),
        }
        rows.append(row)

        def fmt(key: str, row: dict = row) -> str:
            value = row[key]
            return "n/a" if value is None else f"{value:.3f}"

        print(
            f"{knob:12s} {value:48s} after {after:.4f} gain {gain:+.4f} ratio {fmt('gain_ratio')} "
            f"near {fmt('near_copy_share')} aligned {fmt('aligned_near_copy_share')} "
            f"med-ratio {fmt('median_nearest_private_ratio')} auc {fmt('mia_auc')} "
            f"tpr1 {fmt('tpr_at_1pct_fpr')} sent {row['sent']} ({row['seconds']:.0f} s)",
            flush=True,
        )
        result = [
            {
                **r,
                "command": "python bench/privacy.py " + shlex.join(sys.argv[1:]),
                "machine": {**machine(), "concurrent_load": args.load},
            }
            for r in rows
        ]
        if args.merge:  # the settings run here replace their earlier rows; the others stay
            mine = {(r["knob"], r["value"]) for r in result}
            result = [r for r in earlier if (r["knob"], r["value"]) not in mine] + result
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")  # after every setting: partial results survive
    return 0


if __name__ == "__main__":
    sys.exit(main())
