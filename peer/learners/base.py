"""The learner interface every peer model implements, and the learner registry."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from peer.core.blob import InvalidPayload, ModelBlob
from peer.core.fanout import profile_of
from peer.core.features import COLUMN_ARRAYS, ColumnModel
from peer.core.precision import expand
from peer.errors import UsageError


@dataclass(frozen=True)
class TrainConfig:
    """How a learner trains: epochs of a pass, batch size, learning rate, seed, device."""

    epochs: int = 3
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    device: str = "auto"  # "auto" picks CUDA when present


class Learner(ABC):
    """scikit-learn-like: `fit`, `predict_proba`, plus a pickle-free `to_blob` / `from_blob`.

    Inputs are float32 arrays shaped (N, *input_shape) with values in [0, 1]; outputs are
    probabilities over `classes`, all of them, also those the learner never saw in training.
    """

    kind: ClassVar[str]
    differentiable: ClassVar[bool] = False
    soft_targets: ClassVar[bool] = False  # whether fit(targets=...) trains toward class probabilities

    def __init__(self, input_shape: tuple[int, ...], classes: tuple[str, ...], train: TrainConfig):
        self.input_shape = tuple(input_shape)
        self.classes = tuple(classes)
        self.train_config = train
        self.features: tuple[str, ...] = ()  # column names of a feature-vector input
        self.neutral = np.zeros(0, np.float32)  # per column: the value a peer lacking it fills in
        self.columns: ColumnModel | None = None  # how the columns vary together, per class

    def set_features(self, features: tuple[str, ...], x: np.ndarray, y: np.ndarray | None = None) -> None:
        """Name the input columns and fit what the model needs to run on them, from private `x`.

        The neutral value of each column is its median in `x`; with labels `y`, the columns' mean
        and covariance per class and pooled (`ColumnModel`), from which a teacher lacking some
        columns fills them given those it has; neural learners also fit their input scaling here.
        Only these statistics travel in the blob, never the data.
        """
        if len(self.input_shape) != 1 or len(features) != self.input_shape[0]:
            raise ValueError(f"{len(features)} feature names for input shape {self.input_shape}")
        self.features = tuple(features)
        self.neutral = np.median(np.asarray(x, dtype=np.float64), axis=0).astype(np.float32)
        if y is not None:
            self.columns = ColumnModel.fit(x, np.asarray(y), len(self.classes))
        self.fit_scaling(np.asarray(x, dtype=np.float32))

    def column_arrays(self) -> dict[str, np.ndarray]:
        """The column model's arrays for the blob (none for images or when not fitted)."""
        return self.columns.arrays() if self.columns is not None and self.features else {}

    def fit_scaling(self, x: np.ndarray) -> None:  # noqa: B027 (optional hook, a no-op by default)
        """Fit input scaling on private data (learners that are scale-invariant need none)."""

    @abstractmethod
    def fit(
        self,
        x: np.ndarray,
        y: np.ndarray,
        *,
        epochs: int | None = None,
        progress: Callable[[int], None] | None = None,
        seed: int | None = None,
        targets: np.ndarray | None = None,
    ) -> Learner:
        """Train on (x, y); neural learners continue from their current weights.

        `seed` fixes this fit's randomness (shuffling, bootstrap) on its own, so a learner rebuilt
        from its blob in another process trains exactly as the original would have. `targets`
        (N, len(classes)): class probabilities to train toward instead of y's one-hot, for
        learners whose `soft_targets` is True; the others train on y and ignore them.
        """

    @abstractmethod
    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """(N, len(classes)) float32 probabilities."""

    @abstractmethod
    def to_blob(self) -> ModelBlob:
        """The learner as spec plus named arrays."""

    @classmethod
    @abstractmethod
    def from_blob(cls, blob: ModelBlob, device: str = "auto") -> Learner:
        """Rebuild a learner from a (validated) blob on `device` (torch learners; "auto": CUDA when
        present); raise InvalidPayload if it does not fit."""

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.predict_proba(x).argmax(axis=1)

    def base_spec(self) -> dict:
        spec = {"kind": self.kind, "input_shape": list(self.input_shape), "classes": list(self.classes), "format": 1}
        if self.features:
            spec["features"] = list(self.features)
            spec["neutral"] = [float(v) for v in self.neutral]
        return spec


_REGISTRY: dict[str, type[Learner]] = {}


def register(cls: type[Learner]) -> type[Learner]:
    _REGISTRY[cls.kind] = cls
    return cls


def learner_kinds() -> list[str]:
    return sorted(_REGISTRY)


def make_learner(
    kind: str, input_shape: tuple[int, ...], classes: tuple[str, ...], train: TrainConfig | None = None
) -> Learner:
    if kind not in _REGISTRY:
        raise UsageError(f"unknown learner kind {kind!r}; choose from {', '.join(learner_kinds())}")
    return _REGISTRY[kind](input_shape, classes, train or TrainConfig())


def learner_from_blob(blob: ModelBlob, device: str = "auto") -> Learner:
    """Validate an untrusted blob and rebuild its learner, a torch one on `device` (a peer passes
    its own --device, so a model it receives runs where its own does)."""
    blob.validate()
    profile_of(blob.spec)  # a malformed profile is refused with the model
    blob = expand(blob)  # a compacted blob (float16 or 8-bit weights) back in float32
    if blob.kind not in _REGISTRY:
        raise InvalidPayload(f"model blob has unknown learner kind {blob.kind!r}")
    columns = {k: v for k, v in blob.arrays.items() if k in COLUMN_ARRAYS}
    if columns:
        if not blob.features:
            raise InvalidPayload("model blob declares a column model but names no feature columns")
        blob = ModelBlob(blob.spec, {k: v for k, v in blob.arrays.items() if k not in COLUMN_ARRAYS})
    learner = _REGISTRY[blob.kind].from_blob(blob, device)
    if blob.features:
        learner.features = blob.features
        learner.neutral = np.asarray(blob.spec["neutral"], dtype=np.float32)
        if columns:
            learner.columns = ColumnModel.from_arrays(columns, len(learner.classes), len(learner.features))
    return learner


def expect_arrays(blob: ModelBlob, expected: dict[str, tuple[tuple[int, ...], str]]) -> None:
    """Refuse a blob whose arrays differ from `expected` (name -> (shape, dtype))."""
    names, want = set(blob.arrays), set(expected)
    if names != want:
        missing, extra = sorted(want - names), sorted(names - want)
        raise InvalidPayload(f"{blob.kind} blob arrays don't match its spec: missing {missing}, unexpected {extra}")
    for name, (shape, dtype) in expected.items():
        arr = blob.arrays[name]
        if tuple(arr.shape) != tuple(shape) or arr.dtype.name != dtype:
            raise InvalidPayload(
                f"{blob.kind} blob array {name!r} is {arr.dtype.name}{list(arr.shape)}, spec needs {dtype}{list(shape)}"
            )
