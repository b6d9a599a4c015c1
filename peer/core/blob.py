"""What travels between peers: ModelBlob (a learner's spec and weights) and ExampleBatch.

Both are plain data (JSON-able spec, numpy arrays); nothing here ever unpickles. A blob or a
batch from another peer is untrusted: `validate()` checks every field before use.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from peer.errors import UsageError

# dtypes allowed on the wire; anything else (object, void, ...) is refused.
WIRE_DTYPES = frozenset({"uint8", "int8", "int32", "int64", "float16", "float32", "float64", "bool"})
MAX_INPUT_VALUES = 1 << 24  # values in one input example a model blob may declare
# images on the wire: uint8 (256 gray levels, x / 255) or uint4 (16 levels, x / 15, two pixels a byte)
EXAMPLE_LEVELS = {"uint8": 255, "uint4": 15}


class InvalidPayload(UsageError):
    """A model blob or example batch that does not match its own description."""


class PayloadTooLarge(InvalidPayload):
    """A blob or batch over one of the size caps."""


@dataclass(frozen=True)
class Limits:
    """Caps on what a peer accepts, the same over gRPC and Flower; a sender over them is refused
    before anything is stored."""

    max_message_bytes: int = 4 << 20  # one gRPC message (a chunk plus its framing)
    max_blob_bytes: int = 256 << 20  # all arrays of one model blob
    max_batch_bytes: int = 64 << 20  # all arrays of one example batch
    max_batch_examples: int = 65536
    max_arrays: int = 4096
    max_spec_bytes: int = 1 << 20


def _check_array(name: str, arr: Any) -> None:
    if not isinstance(arr, np.ndarray):
        raise InvalidPayload(f"array {name!r} is {type(arr).__name__}, not an ndarray")
    if arr.dtype.name not in WIRE_DTYPES:
        raise InvalidPayload(f"array {name!r} has dtype {arr.dtype}, not one of {sorted(WIRE_DTYPES)}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise InvalidPayload(f"array {name!r} holds NaN or infinite values")


@dataclass(frozen=True)
class ModelBlob:
    """A learner as data: `spec` says how to rebuild it, `arrays` hold its parameters by name."""

    spec: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return str(self.spec.get("kind", ""))

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.spec.get("classes", ()))

    @property
    def features(self) -> tuple[str, ...]:
        """Column names of a feature-vector input (empty for images)."""
        return tuple(self.spec.get("features", ()))

    def spec_json(self) -> str:
        return json.dumps(self.spec, sort_keys=True)

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values()) + len(self.spec_json())

    def validate(self) -> None:
        if not isinstance(self.spec, dict) or not self.kind:
            raise InvalidPayload("model blob spec has no learner kind")
        classes = self.spec.get("classes")
        if (
            not isinstance(classes, list)
            or len(classes) < 2
            or not all(isinstance(c, str) for c in classes)
            or len(set(classes)) != len(classes)
        ):
            raise InvalidPayload("model blob spec must list two or more distinct class names")
        shape = self.spec.get("input_shape")
        if (
            not isinstance(shape, list)
            or not shape
            or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
        ):
            raise InvalidPayload(f"model blob input_shape {shape!r} is not a list of positive ints")
        if len(shape) > 4 or math.prod(shape) > MAX_INPUT_VALUES:
            raise InvalidPayload(
                f"model blob input_shape {shape!r} is over the cap of 4 dimensions and {MAX_INPUT_VALUES} values"
            )
        for name, arr in self.arrays.items():
            _check_array(name, arr)
        if "features" in self.spec or "neutral" in self.spec:
            features, neutral = self.spec.get("features"), self.spec.get("neutral")
            if (
                not isinstance(features, list)
                or not all(isinstance(f, str) and f for f in features)
                or len(set(features)) != len(features)
                or shape != [len(features)]
            ):
                raise InvalidPayload(f"model blob features must be distinct names, one per input column {shape}")
            if (
                not isinstance(neutral, list)
                or len(neutral) != len(features)
                or not all(isinstance(v, (int, float)) and np.isfinite(v) for v in neutral)
            ):
                raise InvalidPayload("model blob must declare one finite neutral value per feature")


@dataclass(frozen=True)
class ExampleBatch:
    """Synthetic examples from one teacher to one student; `(sender, round, seq)` is its id.

    `x` holds inputs in wire form: uint8 for images in [0, 1] (value / `levels`: 255, or 15 where
    the sender chose 16 gray levels, two pixels to a byte on the wire), float32 otherwise.
    `y` holds class indices into `classes`, the sender's class names, so the receiver can map
    labels by name. `distance` is each example's L1 distance to the private example it came from.
    `features` names the columns of a feature-vector `x` in the receiver's feature space (empty
    for images), so a receiver can check that the sender mapped them into its own columns.
    `proba` (optional) holds the sender's class probabilities for each example as it is sent, over
    `classes`, as uint8 (value / 255): what the sender's published model says of it, nothing more,
    so a student can learn how typical of its class each example is, not only its label.
    """

    sender: str
    receiver: str
    round: int
    seq: int
    x: np.ndarray
    y: np.ndarray
    classes: tuple[str, ...]
    distance: np.ndarray
    features: tuple[str, ...] = ()
    levels: int = 255
    proba: np.ndarray | None = None

    @property
    def id(self) -> tuple[str, int, int]:
        return (self.sender, self.round, self.seq)

    def __len__(self) -> int:
        return len(self.y)

    def nbytes(self) -> int:
        """Bytes of its arrays as they travel (16-level images: two pixels a byte)."""
        x = (self.x[:1].size + 1) // 2 * len(self.x) if self.levels < 16 else self.x.nbytes
        return x + self.y.nbytes + self.distance.nbytes + (0 if self.proba is None else self.proba.nbytes)

    def inputs(self) -> np.ndarray:
        """Inputs as float32 in the learner's range."""
        if self.x.dtype == np.uint8:
            return self.x.astype(np.float32) / np.float32(self.levels)
        return self.x.astype(np.float32)

    def validate(self, input_shape: tuple[int, ...], classes: tuple[str, ...], features: tuple[str, ...] = ()) -> None:
        """Refuse a batch that does not fit a receiver with this input shape, classes and feature names."""
        for name, arr in (("x", self.x), ("y", self.y), ("distance", self.distance)):
            _check_array(name, arr)
        if self.x.dtype not in (np.uint8, np.float32):
            raise InvalidPayload(f"batch {self.id}: inputs are {self.x.dtype}, expected uint8 or float32")
        if self.levels not in EXAMPLE_LEVELS.values() or (self.levels != 255 and self.x.dtype != np.uint8):
            raise InvalidPayload(f"batch {self.id}: {self.levels} gray levels, expected 255, or 15 with uint8 inputs")
        if self.x.dtype == np.uint8 and len(self.x) and int(self.x.max()) > self.levels:
            raise InvalidPayload(f"batch {self.id}: input values above its {self.levels} gray levels")
        if tuple(self.x.shape[1:]) != tuple(input_shape):
            raise InvalidPayload(
                f"batch {self.id}: input shape {tuple(self.x.shape[1:])} does not fit {tuple(input_shape)}"
            )
        n = len(self.x)
        if self.y.shape != (n,) or self.distance.shape != (n,):
            raise InvalidPayload(
                f"batch {self.id}: {n} inputs but labels {self.y.shape}, distances {self.distance.shape}"
            )
        if self.proba is not None:
            check_proba(self.proba, n, len(self.classes), f"batch {self.id}")
        if self.y.dtype.kind not in "iu":
            raise InvalidPayload(f"batch {self.id}: labels are {self.y.dtype}, expected integers")
        if n and (self.y.min() < 0 or self.y.max() >= len(self.classes)):
            raise InvalidPayload(f"batch {self.id}: label index out of range 0..{len(self.classes) - 1}")
        unknown = set(self.classes[i] for i in np.unique(self.y)) - set(classes)
        if unknown:
            raise InvalidPayload(f"batch {self.id}: unknown class name(s) {sorted(unknown)}")
        if tuple(self.features) != tuple(features):
            raise InvalidPayload(
                f"batch {self.id}: its feature columns are not the receiver's "
                f"({len(self.features)} named, {len(features)} expected, matched by name)"
            )
        if features:
            if self.x.dtype != np.float32:
                raise InvalidPayload(f"batch {self.id}: feature vectors must be float32")
        elif self.x.dtype == np.float32 and n and (self.x.min() < 0.0 or self.x.max() > 1.0):
            raise InvalidPayload(f"batch {self.id}: inputs outside the valid range [0, 1]")

    def labels_for(self, classes: tuple[str, ...]) -> np.ndarray:
        """This batch's labels as indices into the receiver's `classes` (matched by name)."""
        lookup = {name: i for i, name in enumerate(classes)}
        mapping = np.array([lookup.get(name, -1) for name in self.classes], dtype=np.int64)
        return mapping[self.y]

    def targets_for(self, classes: tuple[str, ...]) -> np.ndarray:
        """(n, len(classes)) float32 training targets over the receiver's `classes`: the sender's
        probabilities matched by class name and renormalised over the classes both know; a row
        without them (no `proba`, or no mass on the receiver's classes) is its label's one-hot
        (all zero where the label is not a class of the receiver)."""
        labels = self.labels_for(classes)
        out = np.zeros((len(labels), len(classes)), np.float32)
        known = labels >= 0
        out[np.flatnonzero(known), labels[known]] = 1.0
        if self.proba is None or not len(labels):
            return out
        lookup = {name: i for i, name in enumerate(self.classes)}
        shared = [(j, lookup[name]) for j, name in enumerate(classes) if name in lookup]
        p = np.zeros_like(out)
        for j, i in shared:
            p[:, j] = self.proba[:, i]
        mass = p.sum(axis=1)
        ok = mass > 0
        out[ok] = p[ok] / mass[ok, None]
        return out


def check_proba(proba: np.ndarray, n: int, classes: int, what: str) -> None:
    """Refuse a batch's `proba` that is not uint8 of shape (examples, classes)."""
    if not isinstance(proba, np.ndarray) or proba.dtype != np.uint8 or proba.shape != (n, classes):
        shape = getattr(proba, "shape", None)
        raise InvalidPayload(f"{what}: proba must be uint8 of shape ({n}, {classes}), got {shape}")


def quantise_proba(p: np.ndarray) -> np.ndarray:
    """Probabilities (n, classes) in [0, 1] as the uint8 a batch carries (value / 255)."""
    return np.round(np.clip(p, 0.0, 1.0) * 255).astype(np.uint8)


def pack_nibbles(x: np.ndarray) -> np.ndarray:
    """uint8 values 0..15, (n, ...) -> (n, ceil(m / 2)) with m values per row: two to a byte, the
    first in the high nibble, an odd row's last byte padded with 0."""
    rows = x.reshape(len(x), math.prod(x.shape[1:]))
    if rows.shape[1] % 2:
        rows = np.concatenate([rows, np.zeros((len(rows), 1), np.uint8)], axis=1)
    return ((rows[:, 0::2] << 4) | rows[:, 1::2]).astype(np.uint8)


def unpack_nibbles(packed: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """`pack_nibbles` undone: (n, ceil(m / 2)) uint8 -> uint8 values 0..15 of `shape` (n, ...)."""
    m = math.prod(shape[1:])
    rows = np.empty((len(packed), 2 * packed.shape[1]), np.uint8)
    rows[:, 0::2], rows[:, 1::2] = packed >> 4, packed & 15
    return rows[:, :m].reshape(shape)
