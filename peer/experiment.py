"""Peers from one config: load the data, split it, build each peer with its part and learner."""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field

import numpy as np

from peer.config import ExperimentConfig
from peer.core.features import shared
from peer.core.peer import Peer
from peer.data.fashion import FASHION_CLASSES, Dataset, load_fashion_mnist
from peer.data.partition import split
from peer.errors import UsageError
from peer.learners import learner_kinds, make_learner
from peer.round import RunLog


def as_float(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float32) / 255.0


def peer_ids(n: int) -> list[str]:
    return [f"peer-{k}" for k in range(n)]


def partition(cfg: ExperimentConfig, train: Dataset) -> list[np.ndarray]:
    return split_labels(cfg, train.y, len(train.classes))


def split_labels(cfg: ExperimentConfig, labels: np.ndarray, n_classes: int) -> list[np.ndarray]:
    """Each peer's rows (sorted) of a data set with these labels: the split needs nothing else."""
    parts = split(cfg.split, labels, cfg.peers, n_classes, cfg.split_seed, fraction=cfg.keep_fraction, beta=cfg.beta)
    if cfg.train_per_peer:
        parts = [p[: cfg.train_per_peer] for p in parts]
    return parts


HOLDOUT = 0.2  # share of --data held out for testing when no --test-data is given


def limit_test(cfg: ExperimentConfig, test: Dataset) -> Dataset:
    """The test set cut to --test-limit examples (all when 0)."""
    return test.subset(np.arange(min(cfg.test_limit, len(test)))) if cfg.test_limit else test


def load_data(cfg: ExperimentConfig) -> tuple[Dataset, Dataset]:
    """(train, test): the user's --data (and --test-data, else a seeded 20% held out), else Fashion-MNIST."""
    if not cfg.data:
        return load_fashion_mnist(cfg.data_dir)
    from peer.data.sources import holdout, load_source, name_classes, parse_class_map

    mapping = parse_class_map(cfg.class_map)
    extra = tuple(dict.fromkeys(c.strip() for c in (cfg.classes or "").split(",") if c.strip()))
    # a --test-data file may hold the classes named by --classes, spelled as this peer's files spell them
    spelled = tuple(dict.fromkeys([*(m for m, s in mapping.items() if s in extra), *extra]))
    train, test = load_source(cfg.data, cfg.data_kind, cfg.label, cfg.test_data, spelled if cfg.test_data else ())
    if test is None:  # held out by the file's own classes: a --class-map does not move the test slice
        train, test = holdout(train, HOLDOUT, cfg.split_seed)
    train = name_classes(train, mapping, extra, f"--data {cfg.data}")
    test = name_classes(test, mapping, extra, f"--test-data {cfg.test_data}", check=False)
    return train, test


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
            raise UsageError(
                f"--peer-features: {pid}'s columns share none with any other peer's; "
                "a peer can only learn from peers it shares a column with"
            )
    return sets


def build_peer(
    cfg: ExperimentConfig, k: int, kind: str, train: Dataset, part: np.ndarray, features: tuple[str, ...] = ()
) -> Peer:
    """Peer k of the experiment: its part of the data (its own columns of a table) and a fresh learner."""
    data = train.subset(part)
    if features:
        data = data.columns(features)
    return _peer(cfg, peer_ids(cfg.peers)[k], k, kind, data, train.classes)


def _peer(cfg: ExperimentConfig, peer_id: str, k: int, kind: str, data: Dataset, classes: tuple[str, ...]) -> Peer:
    """A peer on `data` with a fresh learner of `kind`, seeded by its index k."""
    try:
        learner = make_learner(kind, data.x.shape[1:], classes, cfg.train(k))
    except ValueError as exc:
        raise UsageError(f"{peer_id}: learner {kind} cannot take this data: {exc}") from exc
    return Peer(
        peer_id,
        data.float_inputs(),
        data.y,
        classes,
        learner,
        cfg.teach(),
        seed=cfg.seed * 1000 + k,
        image=True,
        features=data.features,
        gate=cfg.gate(),
        soft_labels=cfg.soft_labels,
        own_mix=cfg.own_mix,
        own_mix_cross=cfg.own_mix_cross,
        peer_distill=cfg.peer_distill,
    )


def build_peers(cfg: ExperimentConfig, train: Dataset) -> list[Peer]:
    parts = partition(cfg, train)
    sets = peer_feature_sets(cfg, train)
    return [
        build_peer(cfg, k, kind, train, part, sets[k]) for k, (kind, part) in enumerate(zip(cfg.learner_list(), parts))
    ]


def own_part(cfg: ExperimentConfig, k: int, train: Dataset) -> Dataset:
    """Part k of `train` as build_peers gives it to peer k: its rows and, of a table, its columns."""
    own = train.subset(partition(cfg, train)[k])
    features = peer_feature_sets(cfg, train)[k]
    return own.columns(features) if features else own


def load_own_part(cfg: ExperimentConfig, k: int) -> tuple[Dataset, Dataset]:
    """(part k of the split, the test set cut to --test-limit) as a peer process alone needs them.

    Of Fashion-MNIST only those rows' images are held: the split needs the labels alone, so a
    peer process does not hold the 55 MB of the whole data set to keep its 6,000 (or 500) images.
    The part is the same rows, in the same order, that partition() gives peer k of the whole set;
    of a --data file the whole file is loaded and cut (own_part)."""
    if cfg.data:
        train, test = load_data(cfg)
        return own_part(cfg, k, train), limit_test(cfg, test)

    def rows(split_name: str, labels: np.ndarray) -> np.ndarray:
        if split_name == "train":
            return split_labels(cfg, labels, len(FASHION_CLASSES))[k]
        return np.arange(min(cfg.test_limit, len(labels)) if cfg.test_limit else len(labels))

    return load_fashion_mnist(cfg.data_dir, rows)


def build_part_peer(cfg: ExperimentConfig, k: int, kind: str, own: Dataset) -> Peer:
    """Peer k on its part of the split (load_own_part, own_part: its rows, its columns)."""
    return _peer(cfg, peer_ids(cfg.peers)[k], k, kind, own, own.classes)


def build_own_peer(cfg: ExperimentConfig, k: int, kind: str, train: Dataset) -> Peer:
    """Peer k alone, as a process of its own builds it (gRPC peer, Flower ClientApp): the same
    part of the split and, of a table, the same columns that build_peers gives it."""
    return build_part_peer(cfg, k, kind, own_part(cfg, k, train))


def seed_index(peer_id: str) -> int:
    """A peer on its own data has no part number: its seeds come from its id. The id peer-K, which
    part K of a split has in every runtime, gives K, so a peer on its own file named peer-K seeds
    as part K does (the same rows give the same run); any other id a number hashed from it (0..999)."""
    match = re.fullmatch(r"peer-(0|[1-9][0-9]{0,2})", peer_id)
    return int(match.group(1)) if match else zlib.crc32(peer_id.encode()) % 1000


def whole_peer_kind(cfg: ExperimentConfig, learner: str, flag: str = "--learner") -> str:
    """The learner kind of a peer on its own data: `learner` if given, else the one kind --learners names."""
    kinds = sorted(set(cfg.learner_list()))
    if learner:
        if learner not in learner_kinds():
            raise UsageError(f"unknown {flag} {learner!r}; choose from {', '.join(learner_kinds())}")
        return learner
    if len(kinds) > 1:
        raise UsageError(f"--learners names several kinds ({', '.join(kinds)}); give this peer's {flag}")
    return kinds[0]


def build_whole_peer(cfg: ExperimentConfig, peer_id: str, kind: str, train: Dataset) -> Peer:
    """A peer whose private data is the whole of `train` (its own file, its test slice held out):
    its own columns and its own class names, matched to other peers' by name. --train-per-peer
    still caps its rows."""
    data = train.subset(np.arange(min(cfg.train_per_peer, len(train)))) if cfg.train_per_peer else train
    return _peer(cfg, peer_id, seed_index(peer_id), kind, data, data.classes)


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
    # peers on their own data: each peer's class names where they differ from `classes` (their union)
    peer_classes: dict[str, tuple[str, ...]] = field(default_factory=dict)
