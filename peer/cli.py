"""The `ckd` command. Every option can also be set by an environment variable CKD_<OPTION>."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields
from pathlib import Path

from peer.errors import UsageError

# (config field, help). Flags are the field names with dashes; types come from the defaults.
DEMO_OPTIONS = [
    ("peers", "number of peers"),
    ("rounds", "rounds of teach and retrain after local training"),
    ("learners", "learner kind for all peers, or a list such as 'cnn*4,mlp*3,forest*3' (kinds: cnn, mlp, linear, forest)"),
    ("split", "how to split the training set: miss-class (peer k never sees class k), keep-fraction, dirichlet, iid"),
    ("keep_fraction", "with --split keep-fraction: the share of its weak class each peer keeps"),
    ("beta", "with --split dirichlet: concentration; smaller means more label skew"),
    ("split_seed", "seed of the split (fmnist-10 fixes it to 0)"),
    ("seed", "seed of training, the counterfactual search and augmentation"),
    ("epochs", "epochs of local training before the first round"),
    ("retrain_epochs", "epochs of training after each round (neural learners continue from their weights)"),
    ("batch_size", "training batch size"),
    ("lr", "training learning rate (Adam)"),
    ("alpha", "target y' = f(x) + alpha (onehot(y) - f(x)); in [0, 1]"),
    ("cf_method", "counterfactual search of differentiable teachers: newton (Gauss-Newton in logit space) or adam"),
    ("lam", "lambda, the weight of the L1 distance ||x' - x|| (adam and the gradient-free search)"),
    ("cf_lr", "step size of the adam counterfactual search"),
    ("cf_steps", "most steps of the counterfactual search"),
    ("cf_min_steps", "fewest steps before an example may stop"),
    ("cf_rel_tol", "an example has reached its target when its gap max|f(x') - y'| is this fraction of its start"),
    ("augment_copies", "augmented copies (shift, rotation, noise) sent with each counterfactual"),
    ("max_per_student", "most instances a teacher teaches one student per round (0: all qualified)"),
    ("privacy", "preset of what a teacher may release: paper (the search starts at the private instance, "
                "nothing filtered: sends near-copies of private data), guarded (starts at the mean of 4 "
                "instances of the class, --min-distance 1: no near-copies) or custom; a preset sets "
                "--cf-start, --cf-start-k, --min-distance and --noise-scale unless given"),
    ("cf_start", "where the counterfactual search starts: instance (the private x, the paper), mix (mean of "
                 "x and k-1 others of its class), prototype (class mean plus jitter), noise (steered "
                 "uniform noise, data-free)"),
    ("cf_start_k", "with --cf-start mix: instances averaged (>= 2)"),
    ("min_distance", "send nothing closer to a private example p than this fraction of p's distance to its "
                     "nearest other private example (0: off; 1: no near-copies)"),
    ("noise_scale", "std of Gaussian noise added to every input sent (pixels in [0, 1]; tables: their "
                    "[min, max] scaled to [0, 1])"),
    ("train_per_peer", "use only this many examples of each peer's part (0: all)"),
    ("test_limit", "evaluate on the first N test images (0: all)"),
    ("data_dir", "directory with the Fashion-MNIST IDX files (default: Debian's dataset-fashion-mnist, "
                 "else torchvision's download)"),
    ("device", "torch device: auto (CUDA when present), cpu, cuda, cuda:1, ..."),
    ("data", "your own data instead of Fashion-MNIST: a CSV or Parquet table, an .npz with x and y, or a "
             "folder with one sub-folder of images per class; options not set then default to 3 peers and "
             "--split iid, and for a table to mlp learners, 40 epochs and 20 retrain epochs"),
    ("data_kind", "kind of --data: csv, parquet, npz or images (default: from the path)"),
    ("label", "with a table: the label column"),
    ("test_data", "a separate test set in the same form as --data (default: hold out 20%% of --data)"),
    ("peer_features", "with a table: each peer's columns, peers separated by ';', e.g. 'age,income;income,city' "
                      "(default: every peer has every column)"),
]

# With --data, options the user did not set take these values instead (fmnist-10's suit 60,000 images).
DATA_DEFAULTS = {"peers": 3, "split": "iid"}
TABLE_DEFAULTS = {"learners": "mlp", "epochs": 40, "retrain_epochs": 20}  # tables are small: more epochs


def with_data(values: dict, given: set[str]) -> tuple[dict, tuple | None]:
    """With --data: load it (refused here, once, if unreadable) and fill the options the user did
    not set from DATA_DEFAULTS (and TABLE_DEFAULTS for a table); returns (values, (train, test)).
    Without: (values, None), Fashion-MNIST being loaded by whoever needs it."""
    from peer.experiment import ExperimentConfig, load_data, with_privacy

    values = with_privacy(values, given)
    if not values.get("data"):
        return values, None
    data = load_data(ExperimentConfig(**{**values, "peers": 2, "learners": "mlp"}))
    defaults = {**DATA_DEFAULTS, **(TABLE_DEFAULTS if data[0].tabular else {})}
    return {**values, **{k: v for k, v in defaults.items() if k not in given}}, data


class EnvDefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def _env(name: str, default):
    """The default of option `name`: CKD_<NAME> from the environment, else `default`."""
    return os.environ.get("CKD_" + name.upper().replace("-", "_"), default)


def _add(parser: argparse.ArgumentParser, name: str, default, help: str) -> None:
    flag = "--" + name.replace("_", "-")
    env = "CKD_" + name.upper()
    kind = type(default) if default is not None else str
    if kind is bool:
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=_env(name, default) in (True, "1", "true"),
                            help=f"{help} [env {env}]")
    else:
        parser.add_argument(flag, type=kind, default=_env(name, default), help=f"{help} [env {env}]")


def _given_options(argv: list[str]) -> set[str]:
    """Options the user set, by flag or environment variable."""
    flags = {a[2:].split("=")[0].replace("-", "_") for a in argv if a.startswith("--")}
    env = {k[4:].lower() for k in os.environ if k.startswith("CKD_")}
    return flags | env


def build_parser() -> argparse.ArgumentParser:
    from peer.experiment import ExperimentConfig

    parser = argparse.ArgumentParser(
        prog="ckd",
        description="ckd: cooperative knowledge distillation between peers that keep their data private.\n"
                    "Only model weights and synthetic examples (counterfactuals) ever leave a peer.",
        formatter_class=EnvDefaultsFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser(
        "demo", formatter_class=EnvDefaultsFormatter,
        help="run all peers in this process on Fashion-MNIST (fmnist-10 by default)",
        description="Run a whole CKD experiment in one process: split Fashion-MNIST among peers, train each\n"
                    "locally, then for each round every peer teaches every other one with counterfactuals\n"
                    "and all retrain. Writes results.json, accuracy.png and counterfactuals.png to --out.\n"
                    "Defaults are the reference experiment fmnist-10 (10 peers, peer k never sees class k).",
    )
    defaults = {f.name: f.default for f in fields(ExperimentConfig)}
    for name, help in DEMO_OPTIONS:
        _add(demo, name, defaults[name], help)
    _add(demo, "out", "runs/demo", "output directory (replaced only when the run succeeds)")
    _add(demo, "threads", 2, "torch CPU threads")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    from peer.netcli import add_commands

    add_commands(sub, EnvDefaultsFormatter)
    return parser


def cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from peer.data import load_fashion_mnist
    from peer.experiment import ExperimentConfig, run_experiment
    from peer.report import staged_output, summarise, table, write_figures, write_json

    if args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    values = {name: getattr(args, name) for name, _ in DEMO_OPTIONS}
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    values, data = with_data(values, set(getattr(args, "_given", ())))
    cfg = ExperimentConfig(**values)
    data = data or load_fashion_mnist(cfg.data_dir)
    exp = run_experiment(cfg, quiet=args.quiet, data=data)
    summary = summarise(exp)
    with staged_output(out) as stage:
        write_json(stage / "results.json", summary)
        figures = write_figures(exp, summary, stage)
    print(table(summary))
    print(f"results: {out / 'results.json'}, figures: {', '.join(str(out / f) for f in figures)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args._given = _given_options(sys.argv[1:] if argv is None else argv)
    try:
        if args.command == "demo":
            return cmd_demo(args)
        from peer.netcli import COMMANDS

        if args.command in COMMANDS:
            return COMMANDS[args.command](args)
    except UsageError as exc:
        print(f"ckd: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ckd: interrupted; nothing written", file=sys.stderr)
        return 130
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
