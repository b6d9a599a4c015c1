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
    ("learners", "learner kind for all peers, or a list such as 'cnn*4,mlp*3,forest*3' (kinds: cnn, mlp, forest)"),
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
    ("train_per_peer", "use only this many examples of each peer's part (0: all)"),
    ("test_limit", "evaluate on the first N test images (0: all)"),
    ("data_dir", "directory with the Fashion-MNIST IDX files (default: Debian's dataset-fashion-mnist, "
                 "else torchvision's download)"),
    ("device", "torch device: auto (CUDA when present), cpu, cuda, cuda:1, ..."),
]


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
    cfg = ExperimentConfig(**{name: getattr(args, name) for name, _ in DEMO_OPTIONS})
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    data = load_fashion_mnist(cfg.data_dir)
    exp = run_experiment(cfg, quiet=args.quiet, data=data)
    summary = summarise(exp)
    with staged_output(out) as stage:
        write_json(stage / "results.json", summary)
        write_figures(exp, summary, stage)
    print(table(summary))
    print(f"results: {out / 'results.json'}, figures: {out / 'accuracy.png'}, {out / 'counterfactuals.png'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
