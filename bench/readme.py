"""The README's results tables, rendered from the JSON under bench/results/.

    python bench/readme.py           # rewrite the tables in README.md from the JSON
    python bench/readme.py --check   # exit 1 (and show the difference) when README.md disagrees

Each table sits between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` in README.md; everything
outside the markers is left alone. Tables: `results` (the headline runs), `privacy` (the sweep
of bench/privacy.py), `faults` (bench/faults.py's scenarios), `cf_speed` (counterfactual
search speed per teacher, bench/cf_speed.py), `forest_search` (what a forest's two searches
taught on the digits table, bench/forest_search.py), `gpu_check` (a CNN peer's speed on the
device there was, bench/gpu_check.py), `scale` (bench/scale.py), `wire` (bench/wire.py: bytes by kind
against FedAvg's), `dirichlet20` (bench/dirichlet20.py) and `compose` (bench/compose_fmnist10.py).
A test runs the check, so a README that disagrees with its JSON fails CI.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path[:0] = [str(ROOT)]

from peer.config import PRIVACY_PRESETS  # noqa: E402


def _load(name: str, results: Path) -> dict | list | None:
    path = results / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _pct(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{100 * value:.{digits}f}%"


def _when(d: dict) -> str:
    load = (d.get("machine") or {}).get("concurrent_load")
    busy = bool(load) and not str(load).startswith("nothing else")
    return "; ".join(x for x in (d.get("date", "")[:10], "beside other work" if busy else "") if x) or "n/a"


def _privacy(d: dict) -> str:
    """The release preset a run used; runs from before the presets existed released as `paper` does."""
    return str((d.get("config") or {}).get("privacy") or "paper")


def _fmnist_row(name: str, d: dict) -> str:
    base = d.get("baselines") or {}
    baselines = (
        f"local {_pct(base.get('local_only'))}, FedAvg {_pct(base.get('fedavg'))}, pooled {_pct(base.get('pooled'))}"
        if base
        else ""
    )
    cf = d.get("counterfactuals") or {}
    leak = d.get("leakage") or {}
    near = f"{_pct(leak['near_copy_share'], 0)} of what was sent near-copies" if "near_copy_share" in leak else ""
    wire = f"{d['bytes_over_payload']}x payload bytes on the wire" if "bytes_over_payload" in d else ""
    same = (d.get("vs_in_process") or d.get("in_process") or {}).get("per_peer_equal")
    equal = "" if same is None else f"every peer's accuracy as in process: {'yes' if same else 'no'}"
    notes = "; ".join(x for x in (baselines, near, wire, equal) if x)
    return (
        f"| {name} | {_privacy(d)} | {_pct(d['median_accuracy_before'])} -> {_pct(d['median_accuracy_after'])} | "
        f"{notes} | "
        f"{d['wall_seconds']:.0f} s | {cf.get('per_second', d.get('counterfactuals_per_second', 'n/a'))} | "
        f"{_when(d)} | `{d['command']}` |"
    )


def _tabular_row(name: str, d: dict) -> str:
    before = " / ".join(_pct(p["accuracy_before"]) for p in d["peers"])
    after = " / ".join(_pct(p["accuracy_after"]) for p in d["peers"])
    learners = ", ".join(p["learner"] for p in d["peers"])
    return (
        f"| {name} ({learners}) | {_privacy(d)} | {before} -> {after} | pooled {_pct(d['pooled_accuracy'])}; "
        f"every peer improved: {'yes' if d['every_peer_improved'] else 'no'} | {d['wall_seconds']:.0f} s | n/a | "
        f"{_when(d)} | `{d['command']}` |"
    )


RUNS: list[tuple[str, str, Callable[[str, dict], str]]] = [
    ("fmnist10", "fmnist-10, 10 CNN peers, in process", _fmnist_row),
    ("fmnist10_auto", "fmnist-10, 10 CNN peers, in process, rounds until none improved", _fmnist_row),
    ("fmnist10_paper", "fmnist-10, 10 CNN peers, in process", _fmnist_row),
    ("fmnist10_paper_auto", "fmnist-10, 10 CNN peers, in process, rounds until none improved", _fmnist_row),
    ("fmnist10_hetero", "fmnist-10, 4 CNN + 3 MLP + 3 forest", _fmnist_row),
    ("grpc_fmnist10", "fmnist-10 over gRPC, 10 processes, mutual TLS", _fmnist_row),
    ("flower_fmnist10", "fmnist-10 through Flower simulation", _fmnist_row),
    ("tabular", "digits as a table, 3 peers", _tabular_row),
    ("tabular_wine", "wine, 3 peers", _tabular_row),
]


def results_table(results: Path = RESULTS) -> str:
    lines = [
        "| run | privacy | median accuracy before -> after | notes | wall time | counterfactuals/s | measured | "
        "command |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, title, row in RUNS:
        d = _load(name, results)
        if isinstance(d, dict):
            lines.append(row(title, d))
    return "\n".join(lines)


def _setting(r: dict) -> str:
    mark = " (earlier code)" if r.get("earlier_code") else ""
    if r["knob"] == "paper":
        return "paper (`--privacy paper`)" + mark
    if r["knob"] == "combination":
        # rows from before release tries searched once, and dropped what the filter judged near
        knobs = {"release_tries": 1, "min_distance_action": "drop", **r.get("config", {})}
        # the release's knobs; how a student trains (soft_labels, own_mix) is not the release's
        release = {k: v for k, v in PRIVACY_PRESETS["guarded"].items() if k not in ("soft_labels", "own_mix")}
        guarded = not r.get("earlier_code") and all(knobs.get(k) == v for k, v in release.items())
        return r["value"] + (" (`--privacy guarded`, the default)" if guarded else "") + mark
    return f"`{r['knob']}` {r['value']}" + mark


def privacy_table(results: Path = RESULTS) -> str:
    rows = _load("privacy", results)
    lines = [
        "| setting | median accuracy after (1 round) | gain | share of the paper's gain | near-copies sent | "
        "shifted near-copies (sample) | nearest-private ratio (median) | best attack | AUC | TPR at 1% FPR |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows if isinstance(rows, list) else []:
        aligned = r.get("aligned_near_copy_share")
        ratio = r.get("median_nearest_private_ratio")
        auc = r.get("mia_auc")
        sent = r.get("sent")
        lines.append(
            f"| {_setting(r)} | {_pct(r['median_accuracy_after'])} | {100 * r['accuracy_gain']:+.1f} | "
            f"{_pct(r['gain_ratio'], 0)} | {_pct(r['near_copy_share']) if sent else 'nothing sent'} | "
            f"{_pct(aligned) if aligned is not None else ('n/a' if not sent else 'not measured')} | "
            f"{'n/a' if ratio is None else f'{ratio:.2f}'} | {r.get('best_attack') or 'n/a'} | "
            f"{'n/a' if auc is None else f'{auc:.3f}'} | {_pct(r['tpr_at_1pct_fpr'])} |"
        )
    return "\n".join(lines)


def faults_table(results: Path = RESULTS) -> str:
    d = _load("faults", results)
    lines = [
        "| scenario | faults injected | batches acknowledged / stored | lost | duplicated | "
        "median accuracy after (undisturbed) | wall time |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in (d.get("by_scenario", {}) if isinstance(d, dict) else {}).items():
        label = name + (" (ablation: not the default)" if s.get("ablation") else "")
        lines.append(
            f"| {label} | {s['faults_injected']} | {s['batches_acknowledged']} / {s['batches_stored']} | "
            f"{s['lost']} | {s['duplicates']} | {_pct(s['median_accuracy_after'])} "
            f"({_pct(s['undisturbed_median_accuracy_after'])}) | {s['seconds']:.0f} s |"
        )
    by_seed = d.get("undisturbed_median_by_seed") if isinstance(d, dict) else None
    if by_seed:
        lines.append("")
        lines.append(
            f"With no fault, the median over seeds {', '.join(by_seed)} (the same split): "
            + ", ".join(_pct(v) for v in by_seed.values())
            + f"; a spread of {d['undisturbed_seed_spread_points']:.1f} points "
            f"(standard deviation {d['undisturbed_seed_sd_points']:.1f})."
        )
    for name, s in (d.get("by_scenario", {}) if isinstance(d, dict) else {}).items():
        diffs = s.get("paired_difference_points_by_seed")
        if diffs:
            lines.append("")
            lines.append(
                f"{name[0].upper() + name[1:]}, seed by seed against the undisturbed run with the same seed "
                f"({', '.join(diffs)}): "
                + ", ".join(f"{v:+.2f}" for v in diffs.values())
                + f" points; mean {s['paired_difference_mean_points']:+.2f} "
                f"(standard deviation {s['paired_difference_sd_points']:.2f})."
            )
    return "\n".join(lines)


def cf_speed_table(results: Path = RESULTS) -> str:
    d = _load("cf_speed", results)
    lines = [
        "| teacher | counterfactuals/s | per CPU second | one at a time | floor | x of floor | mean steps | "
        "made / failed | measured |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    if not isinstance(d, dict):
        return "\n".join(lines)
    for kind, k in d["kinds"].items():
        lines.append(
            f"| {kind} | {k['counterfactuals_per_second']:.0f} | {k.get('counterfactuals_per_cpu_second', 'n/a')} | "
            f"{k['per_example_loop_per_second']:.0f} | "
            f"{k['floor_per_second']:.0f} | {k['within_x_of_floor']:.2f} | {k['mean_steps']} | "
            f"{k['made']} / {k['failed']} | {_when(d)} |"
        )
    lines.append("")
    lines.append(f"Command: `{d['command']}`.")
    forest = (d["kinds"].get("forest") or {}).get("compared_with_sampling_search")
    if forest:
        new, old, box = forest["default"], forest["sampling_only"], forest["leaf_box_only"]
        both = forest["mean_l1_both_ok"]
        lines.append(
            f"Forest, the same {forest['instances']} instances searched from themselves: the search that teaches "
            f"{new['ok']} made ({new['per_second']:.0f}/s), the derivative-free search it replaces {old['ok']} "
            f"({old['per_second']:.0f}/s), mean L1 to the start where both made one {both['default']} against "
            f"{both['sampling_only']}; the leaf boxes alone {box['ok']} ({box['per_second']:.0f}/s, mean L1 "
            f"{box['mean_l1_of_ok']}). The forest predicts the target class for "
            f"{_pct(new['ok_predicted_as_target'])} of what the search that teaches made."
        )
    return "\n".join(lines)


def forest_search_table(results: Path = RESULTS) -> str:
    d = _load("forest_search", results)
    lines = [
        "| release | forest's search | seeds | mlp after (each seed) | mean mlp / forest / linear after | "
        "forest sent (mean) | forest's search seconds (each seed) |",
        "|---|---|---|---|---|---|---|",
    ]
    if not isinstance(d, dict):
        return "\n".join(lines)
    for privacy, by_search in d["by_privacy"].items():
        for search, s in by_search.items():
            runs, mean = s["runs"], s["mean_accuracy_after"]
            seconds = " / ".join(f"{r['forest_search_seconds']:.1f}" for r in runs)
            lines.append(
                f"| {privacy} | {search} | {len(runs)} | "
                f"{' / '.join(_pct(r['accuracy_after']['mlp']) for r in runs)} | "
                f"{' / '.join(_pct(mean[k]) for k in ('mlp', 'forest', 'linear'))} | {s['mean_forest_sent']:.0f} | "
                f"{seconds} |"
            )
    lines.append("")
    lines.append(f"Command: `{d['command']}`; each run `{d['each_run']}`.")
    return "\n".join(lines)


def gpu_check_table(results: Path = RESULTS) -> str:
    d = _load("gpu_check", results)
    lines = [
        "| device | torch (CUDA) | training images/s | evaluation images/s | counterfactuals/s | floor | "
        "x of floor | measured | command |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    if not isinstance(d, dict):
        return "\n".join(lines)
    cf = d["counterfactuals"]
    lines.append(
        f"| {d['device_name']} ({d['device']}) | {d['torch']} ({d.get('cuda_version') or 'none'}) | "
        f"{d['train']['images_per_second']:.0f} | {d['evaluate']['images_per_second']:.0f} | "
        f"{cf['counterfactuals_per_second']:.0f} | {cf['floor_per_second']:.0f} | {cf['within_x_of_floor']:.2f} | "
        f"{_when(d)} | `{d['command']}` |"
    )
    return "\n".join(lines)


def _split(r: dict) -> str:
    if "end_anonymous_mb_max" not in r:
        return "n/a"
    return f"{r['end_anonymous_mb_max']:.0f} MB / {r['end_file_mb_median']:.0f} MB"


def _share(r: dict) -> str:
    return f"{r['end_pss_mb_max']:.0f} MB" if "end_pss_mb_max" in r else "n/a"


def _round_time(r: dict) -> str:
    runs = r.get("round_seconds_runs") or []
    if len(runs) < 2:
        return f"{r['round_seconds']:.1f} s"
    return f"{r['round_seconds']:.1f} s ({min(runs):.1f}-{max(runs):.1f})"


def _scale_rows(runs: list) -> list[str]:
    lines = [
        "| peers | teachers per student | pairs taught | round 1 wall time: median (range) | bytes on the wire | "
        "peak memory of a peer process (median) | of it at the end: anonymous (largest) / file-backed (median) | "
        "proportional share at the end (largest) | median accuracy before -> after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        fan = "all others" if not r["fanout"] else f"{r['fanout']} most useful"
        lines.append(
            f"| {r['peers']} | {fan} | {r['pairs']} | {_round_time(r)} | {r['bytes'] / 1e6:.1f} MB | "
            f"{r['peak_rss_mb']:.0f} MB ({r['peak_rss_mb_median']:.0f} MB) | {_split(r)} | {_share(r)} | "
            f"{_pct(r['median_accuracy_before'])} -> {_pct(r['median_accuracy_after'])} |"
        )
    return lines


def _torch(runs: list) -> str:
    builds = {(r["torch"]["version"], r["torch"]["build"]) for r in runs if "torch" in r}
    return ", ".join(f"torch {v} ({b})" for v, b in sorted(builds)) or "torch (build not recorded)"


def scale_table(results: Path = RESULTS) -> str:
    runs = _load("scale", results)
    runs = runs if isinstance(runs, list) else []
    lines = [f"Peers on {_torch(runs)}, as `make venv` installs it:", "", *_scale_rows(runs)]
    floors = {r["torch_import_rss_mb"] for r in runs if "torch_import_rss_mb" in r}
    if floors:
        lines.append("")
        lines.append(
            f"A bare Python process that has imported torch holds {max(floors):.0f} MB here before any peer "
            "code runs (`torch_import_rss_mb`); the rest of a peer's peak is ckd's own. At the end of the run "
            "each peer reports its resident memory split (`resident_mb` in its wire report, from "
            "/proc/self/smaps_rollup): anonymous memory (heap, tensors, data, torch's own among them: what each "
            "further peer process adds) and file-backed pages of the libraries it maps (torch's CUDA libraries "
            "among them with no GPU), which the page cache holds once for every peer process on the machine; "
            "and its proportional share (PSS: each page divided by the number of processes that map it), what "
            "one more peer process costs a machine that already runs peers."
        )
    cpu = _load("scale_cpu", results)
    if isinstance(cpu, list) and cpu:
        cpu_floor = max((r.get("torch_import_rss_mb", 0.0) for r in cpu), default=0.0)
        lines += [
            "",
            f"The same peers on {_torch(cpu)}, as the Docker image installs it "
            "(`make venv TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu` for a venv; "
            f"bench/results/scale_cpu.json): a bare import of it holds {cpu_floor:.0f} MB.",
            "",
            *_scale_rows(cpu),
        ]
    return "\n".join(lines)


def _mb(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 1e6:.1f} MB"


def wire_table(results: Path = RESULTS) -> str:
    """bench/wire.py: bytes by kind of the float32 and compact gRPC runs, and FedAvg's to the same accuracy."""
    d = _load("wire", results)
    lines = [
        "| run | median accuracy after | bytes sent | model blobs | example batches | control | examples sent |",
        "|---|---|---|---|---|---|---|",
    ]
    if not isinstance(d, dict):
        return "\n".join(lines)
    for name, r in d["runs"].items():
        kinds = r.get("bytes_by_kind") or {}
        settings = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in r["settings"].items())
        lines.append(
            f"| ckd {name} (`{settings}`) | {_pct(r['median_accuracy_after'])} | {_mb(r['bytes_sent'])} | "
            f"{_mb(kinds.get('model'))} | {_mb(kinds.get('examples'))} | {_mb(kinds.get('control'))} | "
            f"{r['examples_sent']:,} |"
        )
    fed = d["fedavg"]
    reach = fed["rounds_to_same_accuracy"]
    curve = ", ".join(_pct(a) for a in fed["accuracy_per_round"])
    lines.append(
        f"| FedAvg to {_pct(d['median_accuracy_after'])}: "
        + (f"round {reach} of {len(fed['accuracy_per_round'])}" if reach else "never reached")
        + f" (per round: {curve}) | {_pct(fed['accuracy_per_round'][reach - 1]) if reach else 'n/a'} | "
        f"{_mb(d['fedavg_bytes_to_same_accuracy'])} | {_mb(d['fedavg_bytes_to_same_accuracy'])} | n/a | "
        "not counted | n/a |"
    )
    ratio = d.get("bytes_ratio")
    lines.append("")
    lines.append(
        f"ckd compact / FedAvg to the same accuracy: {'n/a' if ratio is None else f'{ratio:.2f}x'} the bytes; "
        f"compact / float32: {d['compact_over_float32_bytes']:.2f}x the bytes, median accuracy "
        f"{d['accuracy_change_points']:+.2f} points. Measured {_when(d)}: `{d['command']}`."
    )
    return "\n".join(lines)


def dirichlet20_table(results: Path = RESULTS) -> str:
    """bench/dirichlet20.py: ckd against FedAvg, local-only and pooled on the same split, with the published."""
    d = _load("dirichlet20", results)
    lines = [
        "| alpha | ckd mean accuracy before -> after (median) | FedAvg, measured | each peer alone (mean) | "
        "pooled | ckd wall time | FedAvg wall time | published FedAvg / FedDF / FedCDA |",
        "|---|---|---|---|---|---|---|---|",
    ]
    if not isinstance(d, dict):
        return "\n".join(lines)
    for alpha in sorted(k for k in d if k.replace(".", "", 1).isdigit()):
        r = d[alpha]
        pub = r.get("published") or {}
        lines.append(
            f"| {alpha} | {_pct(r['mean_accuracy_before'])} -> {_pct(r['mean_accuracy_after'])} "
            f"({_pct(r['median_accuracy_after'])}) | {_pct(r['fedavg'])} | {_pct(r['local_only'])} | "
            f"{_pct(r['pooled'])} | {r['wall_seconds']:.0f} s ({r['wall_ratio_to_fedavg']:.1f}x FedAvg's) | "
            f"{r['fedavg_wall_seconds']:.0f} s | "
            + " / ".join(f"{pub[k]:.2f}%" for k in ("FedAvg", "FedDF", "FedCDA") if k in pub)
            + " |"
        )
    lines.append("")
    runs = [
        f"alpha {alpha}: `{d[alpha].get('command', d['command'])}`"
        + (f" ({d[alpha]['load']})" if d[alpha].get("load") else "")
        for alpha in sorted(k for k in d if k.replace(".", "", 1).isdigit())
    ]
    lines.append(f"Measured {_when(d)}: {'; '.join(runs)}; last run's load: {d['machine'].get('concurrent_load')}.")
    return "\n".join(lines)


def compose_table(results: Path = RESULTS) -> str:
    """bench/compose_fmnist10.py: fmnist-10 through docker-compose against `ckd launch`, and peers on
    their own files (docker/compose.owndata.yml) against the same small run on parts."""
    d = _load("compose_fmnist10", results)
    lines = [
        "| run | median accuracy before -> after | missing classes after (median) | examples sent | "
        "experiment wall time | whole run |",
        "|---|---|---|---|---|---|",
    ]
    if not isinstance(d, dict):
        return "\n".join(lines)

    def row(name: str, r: dict, whole: str) -> str:
        missing = [v for v in r.get("missing_class_accuracy_after") or [] if v is not None]
        missing_text = _pct(float(np.median(missing)) if missing else None)
        return (
            f"| {name} | {_pct(r['median_accuracy_before'])} -> {_pct(r['median_accuracy_after'])} | "
            f"{missing_text} | {r['counterfactuals']['sent_with_augmentation']:,} | {r['wall_seconds']:.0f} s | "
            f"{whole} |"
        )

    if "compose" in d and "launch" in d:
        lines.append(
            row("`docker-compose up`, 10 peer containers", d["compose"], f"{d['compose']['compose_seconds']:.0f} s")
        )
        lines.append(row("`ckd launch`, 10 peer processes", d["launch"], "n/a"))
    own = d.get("own_data")
    if isinstance(own, dict):
        size = own["config"]
        small = f"{size['train_per_peer']} images a peer, {size['rounds']} round"
        lines.append(row(f"parts (`--part K`), {small}", own["parts"], f"{own['parts']['compose_seconds']:.0f} s"))
        lines.append(
            row(
                f"own files (`compose.owndata.yml`), {small}",
                own["own_files"],
                f"{own['own_files']['compose_seconds']:.0f} s",
            )
        )
    lines.append("")
    said = []
    if "median_difference_points" in d:
        said.append(
            f"compose - launch: {d['median_difference_points']:+.2f} points of median accuracy; every peer's "
            f"accuracies equal: {'yes' if d.get('per_peer_equal') else 'no'}"
        )
    if isinstance(own, dict):
        by = f" (`{own['command']}`)" if own.get("command") and own["command"] != d.get("command") else ""
        said.append(f"own files equal parts, peer for peer{by}: {'yes' if own['per_peer_equal'] else 'no'}")
    if "image" in d:
        said.append(f"image {d['image']['size_mb'] / 1000:.2f} GB")
    lines.append(
        f"Measured {d.get('date', '')[:10]}: `{d['command']}`; {'; '.join(said)}; what else ran: {d.get('load')}."
    )
    return "\n".join(lines)


TABLES: dict[str, Callable[[Path], str]] = {
    "results": results_table,
    "privacy": privacy_table,
    "faults": faults_table,
    "cf_speed": cf_speed_table,
    "forest_search": forest_search_table,
    "gpu_check": gpu_check_table,
    "scale": scale_table,
    "wire": wire_table,
    "dirichlet20": dirichlet20_table,
    "compose": compose_table,
}


def render(readme: str, results: Path = RESULTS) -> str:
    """`readme` with every marked table replaced by its rendering; ValueError on a missing marker."""
    for name, make in TABLES.items():
        pattern = re.compile(rf"(<!-- bench:{name} -->\n)(?:.*?\n)?(<!-- /bench:{name} -->)", re.S)
        if not pattern.search(readme):
            raise ValueError(f"README has no <!-- bench:{name} --> ... <!-- /bench:{name} --> block")
        table = make(results)
        readme = pattern.sub(lambda m, t=table: m.group(1) + t + "\n" + m.group(2), readme)
    return readme


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if README.md disagrees")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = parser.parse_args(argv)
    current = args.readme.read_text()
    wanted = render(current)
    if args.check:
        if current != wanted:
            sys.stdout.writelines(
                difflib.unified_diff(
                    current.splitlines(True), wanted.splitlines(True), "README.md", "rendered from bench/results"
                )
            )
            print("README.md disagrees with bench/results: run python bench/readme.py", file=sys.stderr)
            return 1
        return 0
    if current != wanted:
        args.readme.write_text(wanted)
        print(f"updated {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
