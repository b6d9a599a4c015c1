"""Results of a run, whichever runtime made it: results.json (one schema), the per-peer table, and
PNG figures; written atomically. Also turns the records gRPC peers report into a run."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from peer.config import ExperimentConfig, config_dict, options
from peer.errors import UsageError
from peer.experiment import Experiment
from peer.privacy.measures import LeakageStats
from peer.round import PeerRound, RunLog


def summarise(exp: Experiment) -> dict:
    """The run as JSON-able data: headline numbers first, then per peer, per round, per pair."""
    log = exp.log
    peers = []
    judged = {(g["peer"], g["round"], t): v for g in log.gates for t, v in g["teachers"].items()}
    for k, (pid, evals) in enumerate(log.evaluations.items()):
        missing = exp.missing[pid]
        before, after = evals[0], evals[-1]
        gates = [g for g in log.gates if g["peer"] == pid]
        peers.append(
            {
                "id": pid,
                "learner": exp.learners[k],
                **({"features": list(exp.features[pid])} if exp.features.get(pid) else {}),
                **({"classes": list(exp.peer_classes[pid])} if exp.peer_classes.get(pid) else {}),
                "missing_classes": [exp.classes[c] for c in missing],
                "train_size": log.train_sizes[pid][0],
                "accuracy_before": round(before["accuracy"], 4),
                "accuracy_after": round(after["accuracy"], 4),
                "missing_class_accuracy_before": _mean_of(before["per_class"], missing),
                "missing_class_accuracy_after": _mean_of(after["per_class"], missing),
                "per_class_before": [_r(v) for v in before["per_class"]],
                "per_class_after": [_r(v) for v in after["per_class"]],
                "accuracy_by_round": [round(e["accuracy"], 4) for e in evals],
                "missing_class_accuracy_by_round": [_mean_of(e["per_class"], missing) for e in evals],
                "received": sum(r.sent for r in log.teach if r.student == pid),
                "refused": sum(v["refused"] for g in gates for v in g["teachers"].values()),
                "training_set_by_round": log.train_sizes[pid],
                "gate_by_round": [
                    {
                        k: g.get(k)
                        for k in ("round", "outcome", "accuracy_before", "accuracy_after", "improved", "new_classes")
                    }
                    for g in gates
                ],
            }
        )
    teach = log.teach
    made = sum(r.counterfactuals for r in teach)
    cf_seconds = sum(r.counterfactual_seconds for r in teach)
    attempted = sum(r.attempted for r in teach)
    problems = bool(log.errors or log.skipped)
    return {
        "status": "degraded" if problems else "ok",
        "experiment": _experiment_name(exp),
        "median_accuracy_before": _median([p["accuracy_before"] for p in peers]),
        "median_accuracy_after": _median([p["accuracy_after"] for p in peers]),
        "missing_class_accuracy_before": [p["missing_class_accuracy_before"] for p in peers],
        "missing_class_accuracy_after": [p["missing_class_accuracy_after"] for p in peers],
        "wall_seconds": round(exp.wall_seconds, 2),
        "timings": {k: round(v, 2) for k, v in log.timings.items()},
        "timings_what": "seconds peers spent in each step, summed over peers (they add up to more than "
        "wall_seconds where peers work in parallel)",
        "counterfactuals": {
            "attempted": attempted,
            "made": made,
            "failed": sum(r.failed for r in teach),
            "duplicates_removed": sum(r.duplicates for r in teach),
            "sent_with_augmentation": sum(r.sent for r in teach),
            "per_second": round(made / cf_seconds, 1) if cf_seconds else None,
            "mean_steps": round(
                float(np.average([r.mean_steps for r in teach], weights=[max(r.attempted, 1) for r in teach])), 2
            )
            if teach
            else None,
            "mean_source_l1": round(
                float(np.average([r.source_l1 for r in teach], weights=[max(r.counterfactuals, 1) for r in teach])), 3
            )
            if teach
            else None,
        },
        "rounds": rounds_summary(exp),
        "leakage": leakage_summary(teach),
        "gate": gate_summary(log.gates, exp.config),
        "errors": log.errors,
        "skipped": log.skipped,
        "peers": peers,
        "pairs": [
            {
                **r.summary(),
                **_judged(judged.get((r.student, r.round, r.teacher)), r.sent, exp.config.validation_share > 0),
            }
            for r in teach
        ],
        "classes": list(exp.classes),
        "config": config_dict(exp.config),
    }


def rounds_summary(exp: Experiment) -> dict:
    """How many rounds ran after local training and why the run stopped (peer.round.stop_after),
    with the peers whose validation slice showed an improvement in each round."""
    cfg = exp.config
    run = max((len(e) - 1 for e in exp.log.evaluations.values()), default=0)
    improved = {
        r: sorted(g["peer"] for g in exp.log.gates if g["round"] == r and g.get("improved")) for r in range(1, run + 1)
    }
    return {
        "asked": cfg.rounds,
        "max_rounds": cfg.max_rounds if cfg.auto_rounds else None,
        "run": run,
        "stopped": exp.log.stopped or f"{run} round{'' if run == 1 else 's'} asked",
        "improved": {str(r): peers for r, peers in improved.items()},
        "what": "improved: peers whose model of the round beat their model of before it on their own validation "
        "slice beyond noise (c - b > z sqrt(b + c)), or that kept the first examples of a class their data lacks "
        "(which their slice cannot judge); --rounds auto stops after the first round with none",
    }


def _judged(decision: dict | None, sent: int, gated: bool) -> dict:
    """A pair's examples the student's gate accepted and refused (None where it had no gate; 0 and 0
    where the teacher sent nothing to judge)."""
    if decision is None and gated and sent == 0:
        return {"accepted": 0, "refused": 0}
    return {
        "accepted": None if decision is None else decision["accepted"],
        "refused": None if decision is None else decision["refused"],
    }


def gate_summary(gates: list[dict], config: ExperimentConfig) -> dict:
    """What every peer's validation gate decided, the run as a whole and per peer and round."""
    return {
        "what": "each peer keeps --validation-share of its private data (per class, never trained on or sent) "
        "and keeps a round's received examples only where they cost no accuracy there beyond noise "
        "(b right->wrong, c wrong->right validation rows: harmful when b - c > z sqrt(b + c)); "
        "else it refits without the most suspect teacher, then with examples of classes it lacks only, "
        "else it keeps its model of before the round; refused examples are never trained on",
        "validation_share": config.validation_share,
        "z": config.gate_z,
        "accepted": sum(v["accepted"] for g in gates for v in g["teachers"].values()),
        "refused": sum(v["refused"] for g in gates for v in g["teachers"].values()),
        "fits": sum(len(g["tries"]) for g in gates),
        "rounds": gates,
    }


def leakage_summary(teach: list) -> dict:
    """What every teacher sent against its own private data, the run as a whole.

    Near-copies are counted over everything sent; medians come from each pair's seeded sample
    (up to peer.core.peer.LEAKAGE_SAMPLE examples per pair), the same in every runtime.
    """
    measured = [r for r in teach if r.leakage]
    count = sum(int(r.leakage["count"]) for r in measured)
    near = sum(int(r.leakage["near_copies"]) for r in measured)
    sampled = LeakageStats.merge([r.sampled_leakage() for r in measured]).to_dict()
    return {
        "what": "each example sent against the sender's private data (inputs in [0,1]; a table's columns scaled by "
        "the sender's own min and max): L2 distance to the nearest private example, that distance over "
        "the private example's own distance to its nearest other private example (ratio; below 1 is a "
        "near-copy), distance to the search's start, SSIM (images) to the nearest private example",
        "sent": count,
        "near_copies": near,
        "near_copy_share": round(near / count, 6) if count else None,
        **{
            k: None if v is None else round(float(v), 4)
            for k, v in sampled.items()
            if k not in ("count", "near_copies", "near_copy_share")
        },
    }


def _experiment_name(exp: Experiment) -> str:
    if exp.config.data:
        return f"data:{Path(exp.config.data).name}"
    return "fmnist-10" if _is_fmnist10(exp) else "fashion-mnist"


def _is_fmnist10(exp: Experiment) -> bool:
    c = exp.config
    return c.peers == 10 and c.split == "miss-class" and c.split_seed == 0 and not c.train_per_peer and not c.test_limit


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 4)


def _mean_of(per_class: list, classes: list[int]) -> float | None:
    vals = [per_class[c] for c in classes if per_class[c] is not None]
    return round(float(np.mean(vals)), 4) if vals else None


def _median(values: list[float]) -> float:
    return round(float(np.median(values)), 4)


def table(summary: dict) -> str:
    """The per-peer table printed at the end of a run."""
    head = (
        f"{'peer':<8} {'learner':<7} {'missing':<12} {'acc before':>10} {'acc after':>9} "
        f"{'missing before':>14} {'missing after':>13} {'received':>8} {'refused':>7}"
    )
    lines = [head, "-" * len(head)]
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    for p in summary["peers"]:
        lines.append(
            f"{p['id']:<8} {p['learner']:<7} {','.join(p['missing_classes'])[:12]:<12} "
            f"{pct(p['accuracy_before']):>10} {pct(p['accuracy_after']):>9} "
            f"{pct(p['missing_class_accuracy_before']):>14} {pct(p['missing_class_accuracy_after']):>13} "
            f"{p['received']:>8} {p.get('refused', 0):>7}"
        )
    cf = summary["counterfactuals"]
    lines.append("-" * len(head))
    lines.append(
        f"median accuracy {pct(summary['median_accuracy_before'])} -> "
        f"{pct(summary['median_accuracy_after'])}; "
        f"{cf['made']} counterfactuals ({cf['failed']} failed, {cf['duplicates_removed']} duplicates), "
        f"{cf['per_second']} per second; wall {summary['wall_seconds']:.0f} s"
    )
    rounds = summary.get("rounds")
    if rounds and rounds["asked"] == "auto":
        lines.append(f"rounds: {rounds['run']} run, stopped: {rounds['stopped']}")
    leak = summary["leakage"]
    if leak["sent"]:
        ssim = f", SSIM to it {leak['ssim_median']} (median)" if leak["ssim_median"] is not None else ""
        lines.append(
            f"leakage: {leak['sent']} examples sent; nearest private example at "
            f"{leak['nearest_private_ratio_median']}x the private set's own neighbour distance "
            f"(median){ssim}; {leak['near_copies']} near-copies ({100 * leak['near_copy_share']:.2f}%)"
        )
        if leak["near_copies"]:
            lines.append(
                f"warning: {leak['near_copies']} examples sent were near-copies of private examples "
                f"(privacy preset {summary['config'].get('privacy')!r}); --min-distance 1 or a stricter "
                "--privacy preset prevents that"
            )
    gate = summary.get("gate")
    if gate and gate["rounds"]:
        notes = [
            f"{g['peer']} round {g['round']} {g['outcome']} "
            f"(validation {pct(g['accuracy_before'])} -> {pct(g['accuracy_after'])})"
            for g in gate["rounds"]
            if g["outcome"] not in ("accepted", "no examples")
        ]
        lines.append(
            f"gate ({pct(gate['validation_share'])} of private data for validation, z {gate['z']}): "
            f"{gate['accepted']} examples accepted, {gate['refused']} refused"
            + (f"; {'; '.join(notes)}" if notes else "; every round accepted")
        )
    for e in summary.get("errors", []):
        lines.append(f"error: round {e['round']}: {e['teacher']} could not teach {e['student']}: {e['error']}")
    for s in summary.get("skipped", []):
        where = f"{s['peer']}" if "peer" in s else f"barrier {s.get('stage')}"
        lines.append(f"skipped: round {s['round']} ({where}) went on without {', '.join(s['skipped'])}")
    for i in summary.get("incomplete", []):
        lines.append(
            f"incomplete: {i['peer']} reported rounds {', '.join(map(str, i['rounds_reported'])) or 'none'} "
            "of the run and no more; left out of the results"
        )
    if summary.get("status") == "degraded":
        lines.append("status: degraded (see errors, skipped and incomplete in results.json)")
    return "\n".join(lines)


@contextmanager
def staged_output(out_dir: Path) -> Iterator[Path]:
    """A scratch directory beside `out_dir` that replaces it only if the block succeeds."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        yield stage
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out_dir, old)
            os.replace(stage, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(stage, out_dir)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically (temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def write_figures(exp: Experiment, summary: dict, out: Path) -> list[str]:
    """accuracy.png (per peer and class, before and after) and counterfactuals.png (x beside x')."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    before = np.array([[np.nan if v is None else v for v in p["per_class_before"]] for p in summary["peers"]])
    after = np.array([[np.nan if v is None else v for v in p["per_class_after"]] for p in summary["peers"]])
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.2), gridspec_kw={"width_ratios": [1, 1, 1]})
    for ax, data, title, cmap, vmin in (
        (axes[0], before, "before", "viridis", 0),
        (axes[1], after, "after", "viridis", 0),
        (axes[2], after - before, "change", "RdBu", -1),
    ):
        im = ax.imshow(data, cmap=cmap, vmin=vmin, vmax=1)
        ax.set_title(f"per-class test accuracy, {title}")
        ax.set_xticks(range(len(exp.classes)), [c.split("/")[0] for c in exp.classes], rotation=60, fontsize=8)
        ax.set_yticks(
            range(len(summary["peers"])), [f"{p['id']} ({p['learner']})" for p in summary["peers"]], fontsize=8
        )
        for i, p in enumerate(summary["peers"]):
            for c in exp.missing[p["id"]]:
                ax.add_patch(plt.Rectangle((c - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=1.5))
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle("Red boxes: the class each peer never saw in its private data")
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=110)
    plt.close(fig)
    names.append("accuracy.png")

    samples = [(r, g) for r in exp.log.teach if r.round == 1 for g in r.gallery[:1] if np.ndim(g[0]) >= 2][:12]
    if samples:
        fig, axes = plt.subplots(2, len(samples), figsize=(1.4 * len(samples), 3.4), squeeze=False)
        for j, (r, (src, cf, label)) in enumerate(samples):
            for i, img in enumerate((src, cf)):
                axes[i, j].imshow(np.asarray(img).reshape(src.shape[-2:]), cmap="gray", vmin=0, vmax=1)
                axes[i, j].axis("off")
            axes[0, j].set_title(f"{r.teacher[5:]}->{r.student[5:]}\n{exp.classes[label].split('/')[0]}", fontsize=7)
        axes[0, 0].text(-8, 14, "x", fontsize=10, ha="right")
        axes[1, 0].text(-8, 14, "x'", fontsize=10, ha="right")
        fig.suptitle("Private source x (top, never sent) and the counterfactual x' sent (bottom)", fontsize=9)
        fig.tight_layout()
        fig.savefig(out / "counterfactuals.png", dpi=110)
        plt.close(fig)
        names.append("counterfactuals.png")
    return names


def write_results(
    out: Path,
    exp: Experiment,
    transport: str,
    extra: dict | None = None,
    quiet: bool = False,
    also: Callable[[Path], list[str]] | None = None,
) -> dict:
    """results.json and the figures into `out` (replaced only when all is written); prints the table
    unless `quiet`. `also(stage)` writes a runtime's own files beside them and names them."""
    summary = summarise(exp)
    summary["transport"] = transport
    summary.update(extra or {})
    if summary.get("skipped") or summary.get("incomplete"):
        summary["status"] = "degraded"
    with staged_output(out) as stage:
        write_json(stage / "results.json", summary)
        figures = write_figures(exp, summary, stage)
        if also is not None:
            figures += also(stage)
    if not quiet:
        print(table(summary))
        if "wire" in summary:
            w = summary["wire"]
            print(
                f"wire: {sum(w['bytes_sent'])} bytes sent for {w['payload_bytes']} bytes of payload ({w['overhead']}x)"
            )
        print(f"results: {out / 'results.json'}, figures: {', '.join(str(out / f) for f in figures)}")
    return summary


def experiment_from_reports(
    metrics: dict[str, dict[int, dict]],
    rounds: int,
    wall: float | None,
    skipped: list[dict],
    state_dirs: dict[str, Path] | None = None,
    asked: int | str | None = None,
    max_rounds: int = 10,
    stopped: str = "",
) -> tuple[Experiment, dict]:
    """The run from what gRPC peers reported to the coordinator: per peer and round, a PeerRound
    record ("record"), what the peer is ("about", round 0) and its wire counts ("wire", last round).
    `rounds` is the last round run; `asked` what the coordinator was asked for (default: `rounds`),
    `stopped` why it stopped (peer.round.stop_after).

    A peer that did not report every round (lost for good before the end) is left out and named
    under "incomplete"; a UsageError when no peer reported every round.

    Returns the Experiment and results.json entries only a gRPC run has (wire, skipped barriers,
    incomplete peers).
    """

    def order(p: str) -> tuple[int, str]:
        part = metrics[p].get(0, {}).get("about", {}).get("part", 0)
        return (part if isinstance(part, int) else 1 << 30, p)  # peers on their own data (no part) by id

    everyone = sorted(metrics, key=order)
    incomplete = [p for p in everyone if not set(range(rounds + 1)) <= set(metrics[p])]
    ids = [p for p in everyone if p not in incomplete]
    if not ids:
        raise UsageError(f"no metrics for every round from {', '.join(incomplete)}")
    about = {p: metrics[p][0]["about"] for p in ids}
    own_data = any(a.get("own_data") for a in about.values())
    kinds = [about[p]["learner"] for p in ids]
    names = {f.name for f in options()}
    config = {k: v for k, v in about[ids[0]]["config"].items() if k in names}
    config.update(peers=len(ids), rounds=rounds if asked is None else asked)
    if asked == "auto":
        config.update(max_rounds=max_rounds)
    if ExperimentConfig(**config).learner_list() != kinds:  # a peer ran another learner (ckd peer --learner)
        config["learners"] = ",".join(kinds)
    records = [PeerRound.from_dict(metrics[p][r]["record"]) for p in ids for r in range(rounds + 1)]
    log = RunLog.from_records(records, ids)
    log.stopped = stopped
    log.skipped += [s for s in skipped if s["skipped"]]
    _attach_galleries(log, state_dirs or {})
    classes, missing, peer_classes = union_classes(
        log, {p: tuple(about[p]["classes"]) for p in ids}, {p: about[p]["missing"] for p in ids}
    )
    exp = Experiment(ExperimentConfig(**config), kinds, missing, log, wall or 0.0, classes, peer_classes=peer_classes)
    extra: dict = {"wire": wire_summary(metrics, ids, rounds)}
    if incomplete:  # peers that never reported a round of the run (lost for good): left out, named
        extra["incomplete"] = [{"peer": p, "rounds_reported": sorted(metrics[p])} for p in incomplete]
    if own_data:
        extra["experiment"] = "own-data"
    return exp, extra


def union_classes(
    log: RunLog, classes: dict[str, tuple[str, ...]], missing: dict[str, list[int]]
) -> tuple[tuple[str, ...], dict[str, list[int]], dict[str, tuple[str, ...]]]:
    """Peers on their own data name their own classes. Returns every class named (the first peer's,
    then the others' new ones), each peer's missing classes as indices into it, and each peer's own
    class names where they differ; the log's per-class accuracies are re-indexed in place (None
    where a peer has no such class)."""
    ids = list(classes)
    union = list(classes[ids[0]])
    for p in ids[1:]:
        union += [c for c in classes[p] if c not in union]
    if all(classes[p] == tuple(union) for p in ids):
        return tuple(union), missing, {}
    at = {c: i for i, c in enumerate(union)}
    for p in ids:
        for evaluation in log.evaluations.get(p, []):
            per_class = evaluation.get("per_class", [])
            mapped: list[float | None] = [None] * len(union)
            for c, v in zip(classes[p], per_class):
                mapped[at[c]] = v
            evaluation["per_class"] = mapped
    missing = {p: [at[classes[p][c]] for c in missing[p]] for p in ids}
    return tuple(union), missing, {p: classes[p] for p in ids if classes[p] != tuple(union)}


def _attach_galleries(log: RunLog, state_dirs: dict[str, Path]) -> None:
    """Round 1's (source, x', label) per pair, from each teacher's gallery.npz (its operator's own
    files on this machine; sources never travel)."""
    for teacher, directory in state_dirs.items():
        path = directory / "gallery.npz"
        if not path.exists():
            continue
        with np.load(path, allow_pickle=False) as g:
            gallery = {
                str(s): [(src, cf, int(lab))]
                for s, src, cf, lab in zip(g["students"], g["sources"], g["counterfactuals"], g["labels"])
            }
        for rep in log.teach:
            if rep.teacher == teacher and rep.round == 1:
                rep.gallery = gallery.get(rep.student, [])


def wire_summary(metrics: dict[str, dict[int, dict]], ids: list[str], rounds: int) -> dict:
    wire = [metrics[p][rounds].get("wire", {}) for p in ids]
    sent = [w.get("bytes_sent", 0) for w in wire]
    payload = sum(w.get("payload_bytes", 0) for w in wire)
    return {
        "what": "bytes_sent: serialized gRPC messages each peer sent (model chunks served, example chunks pushed, "
        "control); payload_bytes: model arrays pulled plus example arrays pushed, all peers; by_kind and "
        "payload_by_kind: the same summed over peers by kind (model, examples, control)",
        "peers": ids,
        "bytes_sent": sent,
        "payload_bytes": payload,
        "overhead": round(sum(sent) / payload, 4) if payload else None,
        "refused": sum(w.get("refused", 0) for w in wire),
        "peak_rss_mb": [w.get("peak_rss_mb") for w in wire],  # each peer process's peak resident memory
        # each peer process's resident memory at its last report: anonymous (its own) and file-backed
        # (libraries, shared through the page cache); {} where the platform does not say
        "resident_mb": [w.get("resident_mb", {}) for w in wire],
        "by_kind": _add_up(w.get("by_kind", {}) for w in wire),
        "payload_by_kind": _add_up(w.get("payload_by_kind", {}) for w in wire),
    }


def _add_up(counts) -> dict[str, int]:
    """Per kind (model, examples, control), the sum over peers."""
    total: dict[str, int] = {}
    for c in counts:
        for kind, n in c.items():
            total[kind] = total.get(kind, 0) + int(n)
    return dict(sorted(total.items()))
