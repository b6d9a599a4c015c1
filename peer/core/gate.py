"""The validation gate: a peer keeps a round's update only where it does not cost accuracy on a
slice of its own private data beyond noise.

A peer's validation slice is carved from its private data (stratified by class, seeded, never
sent, never trained on, never taught from). It holds only the classes the peer holds, so it can
judge what received examples of those classes do to the model, and what any example does to
those classes, but not what examples of a class the peer lacks bring: that class is the point
of teaching and cannot be validated locally. Hence the gate refuses a round's examples only for
the harm it can see on held classes:

    fit on everything received (the round's examples not judged yet, with all accepted before)
    harmful?  paired test on the same validation rows before and after the round:
              b = right before and wrong after, c = wrong before and right after,
              harm when b - c - e > z sqrt(b + c) (a McNemar-style test; z = 2 by default),
              e = rows flipped into a class I lack (or hold too scarcely for the slice to weigh
              it), up to the rows it lacks to an average held class (learning such a class
              takes some held rows; the slice cannot see its gain)
    if harm:  refit without the most suspect teacher (all its examples of the round),
    if harm:  refit with only the examples of classes the peer lacks (still without that teacher),
    if harm:  keep the model of before the round and refuse all of the round's examples.

The most suspect teacher is the one whose examples of held classes agree least with the label
of their nearest row in the peer's own training data: a teacher with wrong labels (or columns
filled so that its examples land among another class) stands out there, without a refit per
teacher. Refused examples are refused for good (the store keeps the judgement), so no later
round trains on them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from peer.errors import UsageError


@dataclass(frozen=True)
class GateConfig:
    validation_share: float = 0.0  # share of each held class kept aside for validation (0: no gate)
    z: float = 2.0  # harm when b - c > z sqrt(b + c)

    def __post_init__(self) -> None:
        if not 0.0 <= self.validation_share < 1.0:
            raise UsageError(f"validation share must be in [0, 1), got {self.validation_share}")
        if self.z < 0:
            raise UsageError(f"the gate's z must be >= 0, got {self.z}")


def carve_validation(y: np.ndarray, share: float, seed: int) -> np.ndarray:
    """A stratified, seeded mask of rows kept for validation: round(share * n) of each class,
    never a class's last row (a class the peer holds stays in its training data)."""
    mask = np.zeros(len(y), dtype=bool)
    if share <= 0:
        return mask
    rng = np.random.default_rng([seed, 13])
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        k = min(int(math.floor(share * len(rows) + 0.5)), len(rows) - 1)
        if k > 0:
            mask[rng.choice(rows, k, replace=False)] = True
    return mask


def paired_harm(right_before: np.ndarray, right_after: np.ndarray, z: float, excused: int = 0) -> tuple[int, int, bool]:
    """(b, c, harmful): b rows went right -> wrong, c wrong -> right; harmful when
    b - c - excused > z sqrt(b + c), `excused` the flips the validation slice cannot weigh."""
    b = int((right_before & ~right_after).sum())
    c = int((~right_before & right_after).sum())
    return b, c, b - c - excused > z * math.sqrt(b + c)


def improved(b: int, c: int, z: float) -> bool:
    """Did the model get better on the validation slice beyond noise? The gate's paired test the
    other way round: c (wrong -> right) - b (right -> wrong) > z sqrt(b + c). `--rounds auto`
    stops after a round in which this held for no peer and no peer kept the first examples of a
    class it lacks (GateReport.new_classes: a gain its slice, which holds none of that class,
    cannot show)."""
    return c - b > z * math.sqrt(b + c)


def lacking_credit(
    pred_after: np.ndarray, right_before: np.ndarray, right_after: np.ndarray, rows: np.ndarray, held: np.ndarray
) -> tuple[int, int]:
    """(flips into classes my slice cannot weigh, credit). `rows[c]`: validation rows of class c;
    `held[c]`: whether I hold class c at all. My slice cannot weigh a class I lack, nor one I hold
    so scarcely that it has under half an average held class's rows there (a label-skewed peer
    holding a few rows of a class joins to learn it as much as a class it lacks). Validation rows
    that went right -> such a class are the price of learning it, whose gain my slice cannot see;
    they are excused up to the rows it lacks to an average held class: len(slice) / held - rows[c]
    each (len(slice) * lacking / held in all when only lacking classes count)."""
    n, h = len(pred_after), int(held.sum())
    if h == 0:
        return 0, 0
    unseen = ~held | (rows * 2 * h < n)  # rows[c] < (n / h) / 2
    into = int((right_before & ~right_after & np.isin(pred_after, np.flatnonzero(unseen))).sum())
    most = int(int((n - h * rows[unseen]).sum()) // h)
    return into, min(into, most)


def label_agreement(x: np.ndarray, y: np.ndarray, own_x: np.ndarray, own_y: np.ndarray) -> float | None:
    """Share of examples (x, y) whose nearest row of my own data has label y (None if none)."""
    if len(y) == 0 or len(own_y) == 0:
        return None
    from peer.privacy.measures import nearest

    _, index = nearest(x.reshape(len(x), -1), own_x.reshape(len(own_x), -1))
    return float((own_y[index] == y).mean())


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {value!r}")
    return value


@dataclass
class GateReport:
    """What the gate of one peer decided in one round: the fits it tried, validation accuracy
    before the round and of the model kept, and per teacher the examples accepted and refused."""

    round: int
    validation: int = 0  # validation rows
    accuracy_before: float = 0.0
    accuracy_after: float = 0.0
    outcome: str = "no examples"  # accepted | without <teacher> | lacking classes only | rolled back
    # each fit tried: {without, b, c, into_lacking, excused, harmful, accuracy}
    tries: list[dict[str, Any]] = field(default_factory=list)
    teachers: dict[str, dict[str, Any]] = field(default_factory=dict)  # {accepted, refused, agreement}
    # the model kept beat the one of before the round on the slice beyond noise (gate.improved),
    # or it kept the first examples of a class its data lacks (new_classes), which no slice can judge
    improved: bool = False
    new_classes: list[str] = field(default_factory=list)
    # my own rows trained toward the beliefs of models I pulled that get them right (--peer-distill)
    distilled: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "validation": self.validation,
            "accuracy_before": round(self.accuracy_before, 4),
            "accuracy_after": round(self.accuracy_after, 4),
            "outcome": self.outcome,
            "improved": self.improved,
            "new_classes": list(self.new_classes),
            "distilled": self.distilled,
            "tries": [dict(t) for t in self.tries],
            "teachers": {k: dict(v) for k, v in self.teachers.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GateReport:
        """The report back from to_dict, every field converted (ValueError, TypeError, KeyError if malformed)."""
        report = cls(
            int(data["round"]),
            int(data["validation"]),
            float(data["accuracy_before"]),
            float(data["accuracy_after"]),
            str(data["outcome"]),
            improved=_flag(data.get("improved", False)),
        )
        new_classes = data.get("new_classes", [])
        if not isinstance(new_classes, list) or not all(isinstance(c, str) for c in new_classes):
            raise TypeError(f"new_classes must be a list of class names, got {new_classes!r}")
        report.new_classes = list(new_classes)
        report.distilled = int(data.get("distilled", 0))
        report.tries = [
            {
                "without": [str(w) for w in t["without"]],
                "b": int(t["b"]),
                "c": int(t["c"]),
                "into_lacking": int(t["into_lacking"]),
                "excused": int(t["excused"]),
                "harmful": bool(t["harmful"]),
                "accuracy": float(t["accuracy"]),
            }
            for t in data["tries"]
        ]
        report.teachers = {
            str(k): {
                "accepted": int(v["accepted"]),
                "refused": int(v["refused"]),
                "agreement": None if v.get("agreement") is None else float(v["agreement"]),
            }
            for k, v in dict(data["teachers"]).items()
        }
        return report

    @property
    def accepted(self) -> int:
        return sum(int(v["accepted"]) for v in self.teachers.values())

    @property
    def refused(self) -> int:
        return sum(int(v["refused"]) for v in self.teachers.values())
