"""Every option of an experiment, declared once: name, type, default and help.

`ExperimentConfig`'s fields are the options. The command line (`--name`), the environment
(`CKD_NAME`) and the Flower run config (`name` with dashes, in pyproject's
[tool.flwr.app.config]) are all derived from these fields; nothing else lists them.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import Field, asdict, dataclass, field, fields
from typing import Any

from peer.core.augment import AugmentConfig
from peer.core.counterfactual import CounterfactualConfig
from peer.core.gate import GateConfig
from peer.core.peer import SOFT_LABELS, TeachConfig
from peer.data.partition import SPLITS
from peer.errors import UsageError
from peer.learners import TrainConfig, learner_kinds


def option(default: Any, help: str, parse: Callable[[Any], Any] | None = None) -> Any:
    """A config field with its help text (the one place an option is declared). `parse` takes
    a value that is not of the default's type: a flag's or variable's text, a run-config value."""
    return field(default=default, metadata={"help": help, "parse": parse})


AUTO = "auto"


def parse_rounds(value: Any) -> int | str:
    """--rounds: a number of rounds >= 0, or "auto" (text as on a command line, or an int)."""
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise UsageError(f"--rounds must be >= 0 or auto, got {value!r}")


@dataclass(frozen=True)
class ExperimentConfig:
    """Every knob of a run. Defaults are the reference experiment fmnist-10."""

    peers: int = option(10, "number of peers")
    rounds: int | str = option(
        2,
        "rounds of teach and retrain after local training, or auto: rounds until one in which no peer "
        "improved on its own validation slice (--validation-share; beyond --gate-z noise), at most --max-rounds",
        parse=parse_rounds,
    )
    max_rounds: int = option(10, "with --rounds auto: the most rounds run")
    learners: str = option(
        "cnn", "learner kind for all peers, or a list such as 'cnn*4,mlp*3,forest*3' (kinds: cnn, mlp, linear, forest)"
    )
    split: str = option(
        "miss-class",
        "how to split the training set: miss-class (peer k never sees class k), keep-fraction, dirichlet, iid",
    )
    keep_fraction: float = option(0.1, "with --split keep-fraction: the share of its weak class each peer keeps")
    beta: float = option(0.5, "with --split dirichlet: concentration; smaller means more label skew")
    split_seed: int = option(0, "seed of the split (fmnist-10 fixes it to 0)")
    seed: int = option(0, "seed of training, the counterfactual search and augmentation")
    epochs: int = option(
        12,
        "epochs of local training before the first round (a one-off probe, fmnist-10's CNN peers on their "
        "own validation slices, mean of 4: 84.2%% after 4 epochs, 86.4%% after 8, 87.2%% after 12, 87.6%% "
        "after 16)",
    )
    retrain_epochs: int = option(2, "epochs of training after each round (neural learners continue from their weights)")
    batch_size: int = option(64, "training batch size")
    lr: float = option(1e-3, "training learning rate (Adam)")
    alpha: float = option(
        0.15,
        "target y' = f(x) + alpha (onehot(y) - f(x)); in [0, 1]: larger searches deeper into the class "
        "(the paper: 0.5, what --privacy paper sets)",
    )
    lam: float = option(1e-4, "lambda, the weight of the L1 distance ||x' - x|| (adam and the gradient-free search)")
    cf_method: str = option(
        "newton", "counterfactual search of differentiable teachers: newton (Gauss-Newton in logit space) or adam"
    )
    cf_lr: float = option(0.02, "step size of the adam counterfactual search")
    cf_steps: int = option(20, "most steps of the counterfactual search")
    cf_min_steps: int = option(1, "fewest steps before an example may stop")
    cf_forest_search: str = option(
        "leaf-box",
        "counterfactual search of forest teachers: leaf-box (a line search toward the class prototype, then "
        "the forest's own leaf boxes, the gradient-free search for what is left) or sampling (the "
        "gradient-free search alone)",
    )
    cf_fallback_steps: int = option(
        6,
        "forest teachers: steps in all of the gradient-free search for what the line search and the leaf boxes "
        "miss (at most --cf-steps); on fmnist-10's forest 20 made 5%% more counterfactuals at 0.67x the rate "
        "(bench/results/cf_speed.json)",
    )
    cf_rel_tol: float = option(
        0.3, "an example has reached its target when its gap max|f(x') - y'| is this fraction of its start"
    )
    privacy: str = option(
        "guarded",
        "preset of what a teacher may release: guarded (the default: the search starts at the mean of 4 "
        "instances of the class and nothing nearer a private example than its nearest other one is sent, "
        "augmented copies judged with the x' they come from; an x' that near is pushed away from that "
        "example, out of every private example's reach, and sent if the teacher still gives it its class, "
        "else searched again from a new mix, up to 4 searches), paper (the search starts at the private "
        "instance, nothing filtered: sends near-copies of private data) or custom; a preset sets "
        "--cf-start, --cf-start-k, --cf-start-cross, --cf-start-pool, --min-distance, --min-distance-action, "
        "--noise-scale, --release-tries, --soft-labels, --own-mix, --own-mix-cross, --peer-distill and --alpha "
        "unless given (paper: labels alone, no own mixes and nothing learnt back from pulled models, as the "
        "paper's students train, and its alpha 0.5)",
    )
    cf_start: str = option(
        "mix",
        "where the counterfactual search starts: instance (the private x, the paper), mix (mean of x and k-1 "
        "others of its class), prototype (class mean plus jitter), noise (steered uniform noise, data-free)",
    )
    cf_start_k: int = option(4, "with --cf-start mix: instances averaged (>= 2)")
    cf_start_cross: int = option(
        1,
        "with --cf-start mix: how many of the k-1 others come from the class the student takes the instance "
        "for, so that the start sits between the two classes, where the student errs; at most (k-1)/2, the "
        "instance's class keeps the majority (0: all of the instance's class)",
    )
    cf_start_pool: str = option(
        "alike",
        "with --cf-start mix: where the others of the instance's class come from: alike (those the student "
        "takes for the same class as the instance, where there are enough: a mix of instances it errs on the "
        "same way, not the class's middle) or class (any the teacher gets right)",
    )
    min_distance: float = option(
        1.0,
        "send nothing closer to a private example p than this fraction of p's distance to its nearest other "
        "private example (0: off; 1: no near-copies)",
    )
    release_tries: int = option(
        4,
        "with --min-distance and a random start (mix, prototype, noise): searches per instance; an instance "
        "whose x' the filter dropped is searched again from a fresh start (a new mix), up to this many times",
    )
    cf_starts: int = option(
        1,
        "with a random start (mix, prototype, noise): starts searched per qualified instance, each a fresh "
        "draw (a new mix), so that each teacher sends more; for a student taught by few teachers (--fanout)",
    )
    min_distance_action: str = option(
        "push",
        "with --min-distance: what happens to a counterfactual nearer a private example p than allowed: drop "
        "(searched again per --release-tries) or push (moved away from p, out of every private example's "
        "ball, and sent if the teacher still gives it its class; dropped otherwise)",
    )
    noise_scale: float = option(
        0.0,
        "std of Gaussian noise added to every input sent (pixels in [0, 1]; tables: their [min, max] scaled to [0, 1])",
    )
    column_fill: str = option(
        "conditional",
        "tables: a column the student has and the teacher lacks is drawn from the student's declared per-class "
        "column statistics given the shared columns (conditional) or set to the student's median (median)",
    )
    blob_precision: str = option(
        "float32",
        "precision of the model a peer publishes for its teachers: float32, float16 (half the bytes) or int8 "
        "(a quarter: 8 bits per weight with a scale per array); the peer's own model stays float32",
    )
    blob_rank: int = option(
        0,
        "send each weight matrix of the published model as its best rank-r approximation, two factors, where "
        "they are smaller (0: whole); teachers use it only to find what the student gets wrong (fmnist-10's "
        "CNN at rank 16: a sixth of the weights, the same predictions on 99%% of another peer's images)",
    )
    example_precision: str = option(
        "uint8",
        "images sent to students: uint8 (256 gray levels) or uint4 (16 levels, two pixels a byte: half the "
        "bytes); rounded before the min-distance filter and the leakage measures, so they judge what is sent; "
        "tables are sent as float32 either way",
    )
    augment_copies: int = option(1, "augmented copies (shift, rotation, noise) sent with each counterfactual")
    fanout: int = option(
        0,
        "each student is taught by its K most useful teachers for the classes it is weak on, judged from the "
        "per-class validation accuracy every published model carries (0: every peer teaches every other); "
        "a round then costs peers * K pulls and searches instead of peers * (peers - 1)",
    )
    max_per_student: int = option(0, "most instances a teacher teaches one student per round (0: all qualified)")
    validation_share: float = option(
        0.1,
        "share of each peer's private data (per class, seeded) kept aside to check what it absorbs: a round's "
        "received examples are kept only where they cost no accuracy on this slice beyond noise; never sent, "
        "trained on or taught from (0: no check)",
    )
    gate_z: float = option(
        2.0,
        "the check's noise bound: with b validation rows right before the round and wrong after, c the "
        "reverse, the round is harmful when b - c > z sqrt(b + c)",
    )
    soft_labels: str = option(
        "held",
        "what a received example trains a neural student toward: held (of a class the student's own data "
        "holds, the probabilities its teacher's model gives it, which every batch carries, about 10 bytes an "
        "example; of a class it lacks, its label) or off (its label always)",
    )
    own_mix: int = option(
        4,
        "a student that received examples also trains on means of this many of its own rows of a class, one "
        "per row, so that a mix release's blur is no cue for the classes it learns from teachers (0: off; "
        "a --privacy preset sets it: guarded 4, as its mixes, paper 0)",
    )
    own_mix_cross: int = option(
        1,
        "with --own-mix: how many of a mix's k-1 others come from another class the student holds (the mix "
        "keeps its row's label), so that the trace of a second class a mix release's starts carry (see "
        "--cf-start-cross) is no cue either; at most (k-1)/2 are taken (a --privacy preset sets it: guarded 1, "
        "paper 0)",
    )
    peer_distill: float = option(
        1.0,
        "a neural peer also learns from the models it pulled to teach: each of its own rows trains toward "
        "its label with W of what those models that get the row right believe of the classes its data "
        "lacks moved onto those classes (where none is right, its label), which shows it on its own images "
        "where the classes it lacks lie; in [0, 1], 0: off (a --privacy preset sets it: guarded 1, paper 0)",
    )
    train_per_peer: int = option(0, "use only this many examples of each peer's part (0: all)")
    test_limit: int = option(0, "evaluate on the first N test images (0: all)")
    data_dir: str | None = option(
        None,
        "directory with the Fashion-MNIST IDX files "
        "(default: Debian's dataset-fashion-mnist, else torchvision's download)",
    )
    device: str = option("auto", "torch device: auto (CUDA when present), cpu, cuda, cuda:1, ...")
    data: str | None = option(
        None,
        "your own data instead of Fashion-MNIST: a CSV or Parquet table, an .npz with x and y, "
        "or a folder with one sub-folder of images per class; options not set then default to 3 peers "
        "and --split iid, and for a table to mlp learners, 40 epochs and 20 retrain epochs",
    )
    data_kind: str | None = option(None, "kind of --data: csv, parquet, npz or images (default: from the path)")
    label: str | None = option(None, "with a table: the label column")
    test_data: str | None = option(
        None, "a separate test set in the same form as --data (default: hold out 20%% of --data)"
    )
    class_map: str | None = option(
        None,
        "with --data: this data's spelling of classes -> the names peers share, e.g. 'M=malignant,B=benign' "
        "(peers match classes by name; two spellings may map to one class)",
    )
    classes: str | None = option(
        None,
        "with --data: class names to predict beyond those in the data (comma-separated), to learn them from "
        "peers whose data has them",
    )
    peer_features: str = option(
        "",
        "with a table: each peer's columns, peers separated by ';', e.g. 'age,income;income,city' "
        "(default: every peer has every column)",
    )

    def __post_init__(self) -> None:
        if self.peers < 2:
            raise UsageError(f"--peers must be at least 2, got {self.peers}")
        object.__setattr__(self, "rounds", parse_rounds(self.rounds))
        if self.max_rounds < 1:
            raise UsageError(f"--max-rounds must be >= 1, got {self.max_rounds}")
        if self.auto_rounds and self.validation_share <= 0:
            raise UsageError(
                "--rounds auto stops after a round in which no peer improved on its validation slice; "
                "give --validation-share > 0 (e.g. 0.1), or a number of rounds"
            )
        if self.epochs < 1 or self.retrain_epochs < 0:
            raise UsageError("--epochs must be >= 1 and --retrain-epochs >= 0")
        if self.split not in SPLITS:
            raise UsageError(f"unknown --split {self.split!r}; choose from {', '.join(SPLITS)}")
        if self.batch_size < 1 or self.lr <= 0:
            raise UsageError("--batch-size must be >= 1 and --lr > 0")
        if self.soft_labels not in SOFT_LABELS:
            raise UsageError(f"unknown --soft-labels {self.soft_labels!r}; choose from {', '.join(SOFT_LABELS)}")
        if self.release_tries < 1:
            raise UsageError(f"--release-tries must be >= 1, got {self.release_tries}")
        if self.own_mix < 0 or self.own_mix == 1:
            raise UsageError(f"--own-mix must be 0 (off) or >= 2, got {self.own_mix}")
        if not 0.0 <= self.peer_distill <= 1.0:
            raise UsageError(f"--peer-distill must be in [0, 1], got {self.peer_distill}")
        if self.own_mix_cross < 0:
            raise UsageError(f"--own-mix-cross must be >= 0, got {self.own_mix_cross}")
        if self.cf_starts < 1:
            raise UsageError(f"--cf-starts must be >= 1, got {self.cf_starts}")
        if self.fanout < 0:
            raise UsageError(f"--fanout must be 0 (every peer teaches every other) or >= 1, got {self.fanout}")
        if self.augment_copies < 0 or self.max_per_student < 0 or self.train_per_peer < 0 or self.test_limit < 0:
            raise UsageError("--augment-copies, --max-per-student, --train-per-peer and --test-limit must be >= 0")
        if self.privacy not in PRIVACY_PRESETS and self.privacy != "custom":
            raise UsageError(
                f"unknown --privacy {self.privacy!r}; choose from {', '.join([*PRIVACY_PRESETS, 'custom'])}"
            )
        self.learner_list()
        self.teach()
        self.gate()

    @property
    def auto_rounds(self) -> bool:
        """--rounds auto: the run stops after a round in which no peer improved (peer.round.stop_after)."""
        return self.rounds == AUTO

    def round_limit(self) -> int:
        """The most rounds this run takes: --rounds, or --max-rounds with --rounds auto."""
        return self.max_rounds if isinstance(self.rounds, str) else self.rounds

    def learner_list(self) -> list[str]:
        kinds: list[str] = []
        for item in self.learners.split(","):
            name, _, count = item.strip().partition("*")
            if name not in learner_kinds():
                raise UsageError(f"unknown learner kind {name!r}; choose from {', '.join(learner_kinds())}")
            if count and (not count.isdigit() or int(count) < 1):
                raise UsageError(f"bad learner count in {item!r}; write KIND*N, e.g. cnn*4")
            kinds += [name] * (int(count) if count else 1)
        if len(kinds) == 1:
            kinds *= self.peers
        if len(kinds) != self.peers:
            raise UsageError(f"--learners names {len(kinds)} learners for {self.peers} peers")
        return kinds

    def counterfactual(self) -> CounterfactualConfig:
        return CounterfactualConfig(
            alpha=self.alpha,
            method=self.cf_method,
            lam=self.lam,
            lr=self.cf_lr,
            max_steps=self.cf_steps,
            min_steps=self.cf_min_steps,
            rel_tol=self.cf_rel_tol,
            forest_search=self.cf_forest_search,
            fallback_steps=self.cf_fallback_steps,
            start=self.cf_start,
            start_k=self.cf_start_k,
            start_cross=self.cf_start_cross,
            start_pool=self.cf_start_pool,
        )

    def teach(self) -> TeachConfig:
        return TeachConfig(
            self.counterfactual(),
            AugmentConfig(copies=self.augment_copies),
            max_per_student=self.max_per_student,
            min_distance=self.min_distance,
            min_distance_action=self.min_distance_action,
            noise_scale=self.noise_scale,
            release_tries=self.release_tries,
            starts=self.cf_starts,
            column_fill=self.column_fill,
            blob_precision=self.blob_precision,
            blob_rank=self.blob_rank,
            example_precision=self.example_precision,
        )

    def gate(self) -> GateConfig:
        return GateConfig(self.validation_share, self.gate_z)

    def train(self, peer_index: int) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            seed=self.seed * 1000 + peer_index,
            device=self.device,
        )


# --privacy: named settings of the knobs that bound what a teacher releases. A preset sets each of
# its knobs the user did not give; "custom" sets none.
PRIVACY_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "cf_start": "instance",
        "cf_start_k": 4,
        "cf_start_cross": 0,
        "cf_start_pool": "class",
        "min_distance": 0.0,
        "min_distance_action": "drop",
        "noise_scale": 0.0,
        "release_tries": 1,
        # the paper's students retrain on (x', label) pairs. Its starts are private instances, never
        # between two classes, so the teacher's probabilities would only soften the labels of typical
        # examples (fmnist-10 under paper: median 87.0% toward them for held classes, 87.7% on labels)
        "soft_labels": "off",
        "own_mix": 0,  # its examples are private instances, not means: nothing to match
        "own_mix_cross": 0,
        "peer_distill": 0.0,  # the paper's students learn from examples alone
        "alpha": 0.5,  # the paper's
    },
    # the default: starts at the mean of 4 same-class instances, sends nothing nearer a private example
    # than its nearest other one (an augmented copy judged with its x'): an x' that near is pushed out
    # of every private example's reach, away from the one it was nearest, and kept if the teacher still
    # gives it its class; else searched again from a new mix, up to 4 searches (fmnist-10, 1 round,
    # bench/results/privacy.json: no near-copies, 2.0% shifted ones in a sample, best attack AUC 0.520
    # and 1.4% TPR at 1% FPR, 87% of the paper setting's one-round gain; dropping such an x' instead
    # kept 62%). A mix of 2 can be unmixed: 2 x' - p is an image for p a source
    # (bench/results/unmix.json: 5% of members found at 1% FPR, none under a mix of 4). One of the 3
    # others comes from the class the student takes the instance for: a start between the two classes,
    # where the student errs (fmnist-10: every missing class learnt better, 27-92% -> 36-94%, median
    # 85.0% -> 85.6%, what is sent no nearer private data: median distance 4.32 -> 4.39). The others
    # of the instance's class are those the student errs on the same way (alike): the mix stays where
    # the student errs instead of at the class's middle
    "guarded": {
        "cf_start": "mix",
        "cf_start_k": 4,
        "cf_start_cross": 1,
        "cf_start_pool": "alike",
        "min_distance": 1.0,
        "min_distance_action": "push",
        "noise_scale": 0.0,
        "release_tries": 4,
        "soft_labels": "held",
        "own_mix": 4,
        # as its mix starts: one of the 3 others of another class (fmnist-10: see README, own mixes)
        "own_mix_cross": 1,
        # a student learns a class it lacks from blurred mixes alone, so the models it pulls to teach
        # also show it, on its own sharp images, where that class lies (peer.core.consult). fmnist-10,
        # 2 rounds: see README, learning back from pulled models
        "peer_distill": 1.0,
        # a mix start is no typical member of its class: a target halfway to the label (the paper's 0.5)
        # moves it 1.5x as far (mean L1 to the start 5.4 against 3.7) toward what the teacher's model
        # alone calls the class. fmnist-10, 2 rounds, one run each: alpha 0.8 / 0.5 / 0.3 / 0.15 / 0.05,
        # median 86.0 / 86.4 / 86.6 / 86.6 / 86.5%, missing classes 75.1 / 80.7 / 83.3 / 84.7 / 84.7%
        # (Shirt 36.3 / 45.1 / 56.9 / 61.5 / 60.3%), what is sent as far from private data (median
        # 4.41 / 4.38 / 4.38 / 4.37 / 4.37, no near-copies): the gain levels off below 0.15
        "alpha": 0.15,
    },
}
DEFAULT_PRIVACY = "guarded"


def with_privacy(values: dict[str, Any], given: set[str]) -> dict[str, Any]:
    """`values` (option values) with the --privacy preset's knobs where the user gave none."""
    preset = PRIVACY_PRESETS.get(values.get("privacy") or DEFAULT_PRIVACY, {})
    return {**values, **{k: v for k, v in preset.items() if k not in given}}


_dataclass_init = ExperimentConfig.__init__


def _init_with_preset(self: ExperimentConfig, *args: Any, **kwargs: Any) -> None:
    """ExperimentConfig(...) as the command line builds it: the --privacy preset sets each knob
    the caller did not pass, so ExperimentConfig(privacy="paper") is the paper's setting, not its
    name over the guarded knobs. dataclasses.replace passes every field, so a copy keeps its knobs."""
    kwargs.update(zip((f.name for f in fields(ExperimentConfig) if f.init), args))
    _dataclass_init(self, **with_privacy(kwargs, set(kwargs)))


ExperimentConfig.__init__ = _init_with_preset  # type: ignore[method-assign]


def options() -> list[Field]:
    """The experiment's options, in declaration order."""
    return list(fields(ExperimentConfig))


def env_name(name: str) -> str:
    return "CKD_" + name.upper().replace("-", "_")


def run_config_key(name: str) -> str:
    """An option's key in the Flower run config: the field name with dashes."""
    return name.replace("_", "-")


def kind_of(f: Field) -> type:
    """The option's value type: the default's (an optional path or name, default None, is str)."""
    return str if f.default is None else type(f.default)


def add_option(
    parser: argparse.ArgumentParser, name: str, default: Any, help: str, parse: Callable[[Any], Any] | None = None
) -> None:
    """--name (dashes), defaulting to $CKD_NAME when set, else `default`; the help names the variable.
    A variable set to the empty string counts as unset (as compose files pass `${CKD_NAME:-}`).
    `parse` turns the flag's or variable's text into the value (default: the default's type)."""
    flag = "--" + name.replace("_", "-")
    env = env_name(name)
    kind = type(default) if default is not None else str
    from_env = os.environ.get(env) or None
    if kind is bool:
        value = default if from_env is None else from_env.lower() in ("1", "true", "yes")
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=value, help=f"{help} [env {env}]")
    else:
        parser.add_argument(
            flag,
            type=kind if parse is None else _argument_type(parse),
            default=default if from_env is None else from_env,
            help=f"{help} [env {env}]",
        )


def _argument_type(parse: Callable[[Any], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except UsageError:  # refused where the command checks its options, in one line
            return text

    return convert


def add_experiment_option(parser: argparse.ArgumentParser, name: str) -> None:
    """One experiment option, as ExperimentConfig declares it (for commands that take only a few)."""
    f = next(f for f in options() if f.name == name)
    add_option(parser, f.name, f.default, f.metadata["help"], f.metadata.get("parse"))


def add_experiment_options(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    for f in options():
        if f.name not in skip:
            add_experiment_option(parser, f.name)


def from_args(args: argparse.Namespace, **override: Any) -> dict[str, Any]:
    """The experiment options' values from parsed arguments (options the parser lacks keep defaults)."""
    values = {f.name: getattr(args, f.name) for f in options() if hasattr(args, f.name)}
    return {**values, **override}


def to_argv(cfg: ExperimentConfig, skip: tuple[str, ...] = ()) -> list[str]:
    """Flags that rebuild `cfg` in another ckd process (options left at None are omitted)."""
    argv: list[str] = []
    for f in options():
        value = getattr(cfg, f.name)
        if f.name in skip or value is None:
            continue
        argv += ["--" + f.name.replace("_", "-"), str(value)]
    return argv


def from_run_config(run_config: dict[str, Any], **override: Any) -> ExperimentConfig:
    """ExperimentConfig from a Flower run config (keys are the options with dashes), types checked."""
    kwargs: dict[str, Any] = {}
    for f in options():
        key = run_config_key(f.name)
        if f.name in override or key not in run_config:
            continue
        value = run_config[key]
        if f.default is None:  # an optional path or name: "" in the run config means none
            if not isinstance(value, str):
                raise UsageError(f"run config {key} = {value!r} should be a string")
            kwargs[f.name] = value or None
            continue
        kind = kind_of(f)
        parse = f.metadata.get("parse")
        if parse is not None and isinstance(value, str) and not value.strip().isdigit():
            try:  # a word such as rounds = "auto"; a number is written as one
                kwargs[f.name] = parse(value)
            except UsageError as exc:
                raise UsageError(f"run config {key} = {value!r}: {exc}") from None
            continue
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
            raise UsageError(f"run config {key} = {value!r} should be {kind.__name__}")
        kwargs[f.name] = value
    # Flower fills every key from the app config: a knob counts as given where it differs from its default
    defaults = {f.name: f.default for f in options()}
    kwargs = with_privacy(kwargs, {k for k, v in kwargs.items() if v != defaults[k]})
    return ExperimentConfig(**{**kwargs, **override})


def config_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    return asdict(cfg)
