"""An experiment from one config: load data, split it, build peers, run rounds, summarise."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from peer.augment import AugmentConfig
from peer.counterfactual import CounterfactualConfig
from peer.data import Dataset, load_fashion_mnist
from peer.engine import RunLog, run_rounds
from peer.errors import UsageError
from peer.features import shared
from peer.learners import TrainConfig, learner_kinds, make_learner
from peer.partition import SPLITS, split
from peer.peer import Peer, TeachConfig
from peer.transport import InProcessTransport


# --privacy: named settings of the knobs that bound what a teacher releases (docs: DESIGN.md,
# "What leaves a peer"). A preset sets each of its knobs the user did not give; "custom" none.
PRIVACY_PRESETS: dict[str, dict] = {
    "paper": {"cf_start": "instance", "cf_start_k": 4, "min_distance": 0.0, "noise_scale": 0.0},
    # starts at the mean of 4 same-class instances, sends nothing nearer a private example than its
    # nearest other one (reduced-scale fmnist-10: no near-copies, attack AUC 0.53, ~80% of the gain)
    "guarded": {"cf_start": "mix", "cf_start_k": 4, "min_distance": 1.0, "noise_scale": 0.0},
}


def with_privacy(values: dict, given: set[str]) -> dict:
    """`values` (ExperimentConfig fields) with the --privacy preset's knobs where not in `given`."""
    preset = PRIVACY_PRESETS.get(values.get("privacy") or "paper", {})
    return {**values, **{k: v for k, v in preset.items() if k not in given}}


@dataclass(frozen=True)
class ExperimentConfig:
    """Every knob of a run. Defaults are the reference experiment fmnist-10."""

    peers: int = 10
    rounds: int = 2
    learners: str = "cnn"        # one kind for all, or a list: "cnn*4,mlp*3,forest*3"
    split: str = "miss-class"
    keep_fraction: float = 0.1   # for split keep-fraction
    beta: float = 0.5            # for split dirichlet
    split_seed: int = 0          # fmnist-10 fixes this to 0
    seed: int = 0                # training, search and augmentation randomness
    epochs: int = 4              # local training before the first round
    retrain_epochs: int = 2      # training after each round (neural learners continue)
    batch_size: int = 64
    lr: float = 1e-3
    alpha: float = 0.5
    lam: float = 1e-4
    cf_method: str = "newton"
    cf_lr: float = 0.02
    cf_steps: int = 20
    cf_min_steps: int = 1
    cf_rel_tol: float = 0.3
    augment_copies: int = 1
    max_per_student: int = 0
    privacy: str = "paper"       # preset of the four knobs below: paper, guarded, or custom (set them yourself)
    cf_start: str = "instance"   # where the search starts: instance (paper), mix, prototype, noise
    cf_start_k: int = 4          # with cf_start mix: instances averaged
    min_distance: float = 0.0    # release nothing nearer a private p than this x p's nearest-other distance
    noise_scale: float = 0.0     # std of Gaussian noise added to what is sent
    train_per_peer: int = 0      # use only this many examples of each peer's part (0: all)
    test_limit: int = 0          # evaluate on the first N test images (0: all 10,000)
    data_dir: str | None = None
    device: str = "auto"
    data: str | None = None          # a peer's own data: CSV, Parquet, .npz or an image folder
    data_kind: str | None = None     # csv, parquet, npz, images (default: from the path)
    label: str | None = None         # the label column of a table
    test_data: str | None = None     # a separate test set (default: hold out 20% of --data)
    peer_features: str = ""          # tables: each peer's columns, "a,b;b,c;..." (default: all)

    def __post_init__(self) -> None:
        if self.peers < 2:
            raise UsageError(f"--peers must be at least 2, got {self.peers}")
        if self.rounds < 0:
            raise UsageError(f"--rounds must be >= 0, got {self.rounds}")
        if self.epochs < 1 or self.retrain_epochs < 0:
            raise UsageError("--epochs must be >= 1 and --retrain-epochs >= 0")
        if self.split not in SPLITS:
            raise UsageError(f"unknown --split {self.split!r}; choose from {', '.join(SPLITS)}")
        if self.batch_size < 1 or self.lr <= 0:
            raise UsageError("--batch-size must be >= 1 and --lr > 0")
        if self.augment_copies < 0 or self.max_per_student < 0 or self.train_per_peer < 0 or self.test_limit < 0:
            raise UsageError("--augment-copies, --max-per-student, --train-per-peer and --test-limit must be >= 0")
        if self.privacy not in PRIVACY_PRESETS and self.privacy != "custom":
            raise UsageError(f"unknown --privacy {self.privacy!r}; choose from "
                             f"{', '.join([*PRIVACY_PRESETS, 'custom'])}")
        self.learner_list()
        self.teach()

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
        return CounterfactualConfig(alpha=self.alpha, method=self.cf_method, lam=self.lam, lr=self.cf_lr,
                                    max_steps=self.cf_steps,
                                    min_steps=self.cf_min_steps, rel_tol=self.cf_rel_tol,
                                    start=self.cf_start, start_k=self.cf_start_k)

    def teach(self) -> TeachConfig:
        return TeachConfig(self.counterfactual(), AugmentConfig(copies=self.augment_copies),
                           max_per_student=self.max_per_student, min_distance=self.min_distance,
                           noise_scale=self.noise_scale)

    def train(self, peer_index: int) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                           seed=self.seed * 1000 + peer_index, device=self.device)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def as_float(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float32) / 255.0


def peer_ids(n: int) -> list[str]:
    return [f"peer-{k}" for k in range(n)]


def partition(cfg: ExperimentConfig, train: Dataset) -> list[np.ndarray]:
    parts = split(cfg.split, train.y, cfg.peers, len(train.classes), cfg.split_seed,
                  fraction=cfg.keep_fraction, beta=cfg.beta)
    if cfg.train_per_peer:
        parts = [p[: cfg.train_per_peer] for p in parts]
    return parts


HOLDOUT = 0.2  # share of --data held out for testing when no --test-data is given


def load_data(cfg: ExperimentConfig) -> tuple[Dataset, Dataset]:
    """(train, test): the user's --data (and --test-data, else a seeded 20% held out), else Fashion-MNIST."""
    if not cfg.data:
        return load_fashion_mnist(cfg.data_dir)
    from peer.sources import holdout, load_source

    train, test = load_source(cfg.data, cfg.data_kind, cfg.label, cfg.test_data)
    return (train, test) if test is not None else holdout(train, HOLDOUT, cfg.split_seed)


def peer_feature_sets(cfg: ExperimentConfig, train: Dataset) -> list[tuple[str, ...]]:
    """Each peer's columns: from --peer-features ("a,b;b,c", a categorical column by its name), else all."""
    ids = peer_ids(cfg.peers)
    if not cfg.peer_features:
        return [train.features] * cfg.peers
    if not train.tabular:
        raise UsageError("--peer-features applies to tables only; --data is not a table")
    groups = [g for g in cfg.peer_features.split(";")]
    if len(groups) != cfg.peers:
        raise UsageError(f"--peer-features names {len(groups)} column sets for {cfg.peers} peers")
    sets = []
    for pid, group in zip(ids, groups):
        names = [n.strip() for n in group.split(",") if n.strip()]
        chosen: list[str] = []
        for name in names:
            hits = [f for f in train.features if f == name or f.startswith(name + "=")]
            if not hits:
                raise UsageError(f"--peer-features: {pid} names column {name!r}, which {cfg.data} does not have")
            chosen += [f for f in hits if f not in chosen]
        if not chosen:
            raise UsageError(f"--peer-features: {pid} has no columns")
        sets.append(tuple(f for f in train.features if f in chosen))
    for pid, mine in zip(ids, sets):
        if not any(shared(mine, other) for qid, other in zip(ids, sets) if qid != pid):
            raise UsageError(f"--peer-features: {pid}'s columns share none with any other peer's; "
                             "a peer can only learn from peers it shares a column with")
    return sets


def build_peer(cfg: ExperimentConfig, k: int, kind: str, train: Dataset, part: np.ndarray,
               features: tuple[str, ...] = ()) -> Peer:
    """Peer k of the experiment: its part of the data (its own columns of a table) and a fresh learner."""
    data = train.subset(part)
    if features:
        data = data.columns(features)
    try:
        learner = make_learner(kind, data.x.shape[1:], train.classes, cfg.train(k))
    except ValueError as exc:
        raise UsageError(f"{peer_ids(cfg.peers)[k]}: learner {kind} cannot take this data: {exc}") from exc
    return Peer(peer_ids(cfg.peers)[k], data.float_inputs(), data.y, train.classes, learner,
                cfg.teach(), seed=cfg.seed * 1000 + k, image=True, features=data.features)


def build_peers(cfg: ExperimentConfig, train: Dataset) -> list[Peer]:
    parts = partition(cfg, train)
    sets = peer_feature_sets(cfg, train)
    return [build_peer(cfg, k, kind, train, part, sets[k])
            for k, (kind, part) in enumerate(zip(cfg.learner_list(), parts))]


def build_own_peer(cfg: ExperimentConfig, k: int, kind: str, train: Dataset) -> Peer:
    """Peer k alone, as a process of its own builds it (gRPC peer, Flower ClientApp): the same
    part of the split and, of a table, the same columns that build_peers gives it."""
    return build_peer(cfg, k, kind, train, partition(cfg, train)[k], peer_feature_sets(cfg, train)[k])


def test_inputs(peer: Peer, test: Dataset) -> np.ndarray:
    """The test inputs a peer is evaluated on: images scaled, a table in the peer's own columns."""
    return test.columns(peer.features).x if test.tabular else test.float_inputs()


def evaluation_inputs(peers: list[Peer], test: Dataset) -> np.ndarray | dict[str, np.ndarray]:
    """The test inputs each peer is evaluated on: images as they are, a table in each peer's columns."""
    if not test.tabular:
        return test.float_inputs()
    return {p.id: test_inputs(p, test) for p in peers}


@dataclass
class Experiment:
    """A finished run: its config, peers' part descriptions, the log and wall time."""

    config: ExperimentConfig
    learners: list[str]
    missing: dict[str, list[int]]
    log: RunLog
    wall_seconds: float
    classes: tuple[str, ...]
    test_y: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    features: dict[str, tuple[str, ...]] = field(default_factory=dict)  # tables: each peer's columns


def run_experiment(cfg: ExperimentConfig, quiet: bool = False,
                   data: tuple[Dataset, Dataset] | None = None, transport=None) -> Experiment:
    """`transport`: a callable peers -> Transport (default in-process); closed after the run if it can be."""
    train, test = data or load_data(cfg)
    if cfg.test_limit:
        test = test.subset(np.arange(min(cfg.test_limit, len(test))))
    peers = build_peers(cfg, train)
    missing = {p.id: [c for c in range(len(train.classes)) if not (p.y == c).any()] for p in peers}
    transport = transport(peers) if transport else InProcessTransport({p.id: p for p in peers})
    start = time.perf_counter()
    try:
        log = run_rounds(peers, transport, evaluation_inputs(peers, test), test.y, cfg.rounds, cfg.epochs,
                         cfg.retrain_epochs, quiet=quiet)
    finally:
        getattr(transport, "close", lambda: None)()
    return Experiment(cfg, cfg.learner_list(), missing, log, time.perf_counter() - start, train.classes, test.y,
                      {p.id: p.features for p in peers})


def config_dict(cfg: ExperimentConfig) -> dict:
    return asdict(cfg)
