"""Peer: one party's private data, its learner, and the examples it received.

The four verbs of a round, free of any transport: `train`, `snapshot`, `teach`, `absorb`.
"""

from __future__ import annotations

import copy
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from peer.core.augment import AugmentConfig, augment_images, augment_vectors, class_mixes
from peer.core.blob import EXAMPLE_LEVELS, ExampleBatch, InvalidPayload, ModelBlob, quantise_proba
from peer.core.consult import distill_targets, qualified_beliefs
from peer.core.counterfactual import (
    CounterfactualConfig,
    dedupe,
    gradient_counterfactuals,
    qualified_mask,
    search_counterfactuals,
    soft_targets,
)
from peer.core.fanout import PROFILE_KEY, Profile
from peer.core.features import map_columns, shared
from peer.core.gate import (
    GateConfig,
    GateReport,
    carve_validation,
    improved,
    label_agreement,
    lacking_credit,
    paired_harm,
)
from peer.core.precision import PRECISIONS, compact
from peer.core.store import ExampleStore
from peer.errors import UsageError
from peer.learners import Learner, learner_from_blob
from peer.learners.forest import ForestLearner
from peer.learners.neural import TorchLearner
from peer.privacy.measures import LeakageStats, RatioIndex, measure_leakage, nearest
from peer.privacy.release import push_out, release_noise, start_points

LEAKAGE_SAMPLE = 512  # examples per pair whose distances and SSIM are measured and reported


SAMPLED = {"to_source": "to_source", "to_nearest": "to_nearest", "ratio": "ratio", "ssim": "ssim_nearest"}


def _class_names(batch: ExampleBatch, classes: tuple[str, ...]) -> set[str]:
    """The names of `classes` that `batch` holds examples of."""
    return {classes[i] for i in np.unique(batch.labels_for(classes))}


def _round4(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _rounded(values: np.ndarray) -> list[float | None]:
    """Values rounded for JSON, None where a measure is missing (NaN: no source, not an image)."""
    return [round(float(v), 4) if np.isfinite(v) else None for v in values]


COLUMN_FILLS = ("conditional", "median")
MIN_DISTANCE_ACTIONS = ("drop", "push")
# what a received example trains toward (Peer.fit_set): its teacher's probabilities where it is of a
# class I hold ("held"), or its label always ("off")
SOFT_LABELS = ("held", "off")


@dataclass(frozen=True)
class TeachConfig:
    counterfactual: CounterfactualConfig = field(default_factory=CounterfactualConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    max_per_student: int = 0  # cap on qualified instances taught per student and round (0: all)
    batch_limit: int = 2048  # examples per ExampleBatch
    measure_leakage: bool = True  # distance of each x' sent to the nearest private example
    min_distance: float = 0.0  # release nothing closer to a private p than this x p's nearest-other distance
    # a candidate nearer a private p than min_distance allows: "drop" it, or "push" it out of p's
    # ball (away from p) and send it if I still give it its class (peer.privacy.release.push_out)
    min_distance_action: str = "drop"
    noise_scale: float = 0.0  # std of Gaussian noise added to every input sent (search-space units)
    # searches per instance: an instance whose x' the min-distance filter dropped is searched again
    # from a fresh random start (a new mix, jitter or noise), up to this many searches in all
    release_tries: int = 1
    # starts searched per qualified instance, each a fresh draw (a new mix): more examples from each
    # teacher, for a student taught by few (--fanout); a random start only (the paper's is the instance)
    starts: int = 1
    # a student's column this teacher lacks: "conditional" (drawn from the student's declared column
    # model given the shared columns and the class) or "median" (the student's median, one constant)
    column_fill: str = "conditional"
    blob_precision: str = "float32"  # of the model I publish: float32, float16 or int8 (peer.core.precision)
    blob_rank: int = 0  # large matrices of the model I publish sent as rank-r factors (0: whole)
    # images I send: uint8 (256 gray levels) or uint4 (16 levels, two pixels a byte); rounded
    # before the min-distance filter and the leakage measures, so they judge what is sent
    example_precision: str = "uint8"

    def __post_init__(self) -> None:
        if self.min_distance < 0 or self.noise_scale < 0:
            raise UsageError(
                f"min_distance and noise_scale must be >= 0, got {self.min_distance} and {self.noise_scale}"
            )
        if self.release_tries < 1:
            raise UsageError(f"release_tries must be >= 1, got {self.release_tries}")
        if self.starts < 1:
            raise UsageError(f"starts (searched per qualified instance) must be >= 1, got {self.starts}")
        if self.min_distance_action not in MIN_DISTANCE_ACTIONS:
            raise UsageError(
                f"unknown min-distance action {self.min_distance_action!r}; "
                f"choose from {', '.join(MIN_DISTANCE_ACTIONS)}"
            )
        if self.blob_rank < 0:
            raise UsageError(f"blob rank must be >= 0, got {self.blob_rank}")
        if self.blob_precision not in PRECISIONS:
            raise UsageError(f"unknown blob precision {self.blob_precision!r}; choose from {', '.join(PRECISIONS)}")
        if self.example_precision not in EXAMPLE_LEVELS:
            raise UsageError(
                f"unknown example precision {self.example_precision!r}; choose from {', '.join(EXAMPLE_LEVELS)}"
            )
        if self.column_fill not in COLUMN_FILLS:
            raise UsageError(f"unknown column fill {self.column_fill!r}; choose from {', '.join(COLUMN_FILLS)}")


@dataclass
class TeachReport:
    """What one teacher did for one student in one round."""

    teacher: str
    student: str
    round: int
    qualified: int = 0
    attempted: int = 0  # searches started: qualified instances (capped) x starts per instance
    failed: int = 0
    duplicates: int = 0
    counterfactuals: int = 0
    sent: int = 0
    mean_steps: float = 0.0
    seconds: float = 0.0
    counterfactual_seconds: float = 0.0
    source_l1: float = 0.0  # mean L1 distance x' to its source x
    near_copies: int = 0  # examples sent closer to some private p than p's nearest other private example
    filtered: int = 0  # examples (counterfactuals and copies) the min-distance filter dropped
    retried: int = 0  # searches again from a fresh start for instances whose x' the filter dropped
    pushed: int = 0  # x' moved out of a private example's min-distance ball and kept (action "push")
    # what was sent against my private data (peer.privacy.measures.LeakageStats.to_dict, near-copies
    # counted over everything sent), and a seeded sample of per-example values for run-level figures
    leakage: dict = field(default_factory=dict)
    leakage_sample: dict[str, list[float | None]] = field(default_factory=dict)
    gallery: list[tuple[np.ndarray, np.ndarray, int]] = field(default_factory=list, repr=False)

    NUMBERS = (
        "qualified",
        "attempted",
        "failed",
        "duplicates",
        "counterfactuals",
        "near_copies",
        "filtered",
        "retried",
        "pushed",
        "sent",
        "mean_steps",
        "seconds",
        "counterfactual_seconds",
        "source_l1",
    )
    OPTIONAL = ("retried", "pushed")  # absent from reports stored before they existed

    def to_dict(self) -> dict:
        """Everything but the gallery (private sources never leave the teacher), JSON-able."""
        return {
            "teacher": self.teacher,
            "student": self.student,
            "round": self.round,
            **{k: getattr(self, k) for k in self.NUMBERS},
            "leakage": dict(self.leakage),
            "leakage_sample": {k: list(v) for k, v in self.leakage_sample.items()},
        }

    @classmethod
    def from_dict(cls, data: dict) -> TeachReport:
        """The report back from to_dict; KeyError or TypeError on a malformed one."""
        report = cls(str(data["teacher"]), str(data["student"]), int(data["round"]))
        for k in cls.NUMBERS:
            if k in cls.OPTIONAL and k not in data:
                continue
            setattr(report, k, type(getattr(report, k))(data[k]))
        report.leakage = dict(data.get("leakage", {}))
        report.leakage_sample = {
            str(k): [None if x is None else float(x) for x in v] for k, v in data.get("leakage_sample", {}).items()
        }
        return report

    def sampled_leakage(self) -> LeakageStats:
        """The measured sample of what was sent, per example (NaN where a measure is missing)."""
        if not self.leakage_sample:
            return LeakageStats()

        def column(key: str) -> np.ndarray:
            return np.array([np.nan if v is None else v for v in self.leakage_sample.get(key, [])], np.float32)

        return LeakageStats(**{name: column(key) for key, name in SAMPLED.items()})

    def summary(self) -> dict:
        """The pair as one row of results.json's "pairs"."""
        return {
            **{
                f: getattr(self, f)
                for f in (
                    "teacher",
                    "student",
                    "round",
                    "qualified",
                    "attempted",
                    "failed",
                    "duplicates",
                    "counterfactuals",
                    "filtered",
                    "retried",
                    "pushed",
                    "near_copies",
                    "sent",
                    "seconds",
                    "counterfactual_seconds",
                )
            },
            "mean_steps": round(self.mean_steps, 2),
            "source_l1": round(self.source_l1, 3),
            "leakage": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.leakage.items()},
        }


@dataclass
class Found:
    """Distinct successful counterfactuals of one search: x', labels, starts, the private instance
    each was searched for, and the steps of every search made (failures included)."""

    x: np.ndarray
    y: np.ndarray
    src: np.ndarray
    instances: np.ndarray
    steps: np.ndarray

    @classmethod
    def empty(cls, space: np.ndarray) -> Found:
        none = np.zeros(0, dtype=np.int64)
        return cls(space[:0], none, space[:0], none, np.zeros(0))


class Peer:
    """One party. `x` holds float32 inputs shaped (N, *input_shape); `y` class indices.

    Images are in [0, 1]. A tabular peer names its columns (`features`), keeps them in their own
    units, and searches counterfactuals inside its own per-feature [min, max]; it evaluates a
    student and sends it examples in the student's columns, mapped by name.
    """

    def __init__(
        self,
        peer_id: str,
        x: np.ndarray,
        y: np.ndarray,
        classes: tuple[str, ...],
        learner: Learner,
        teach: TeachConfig | None = None,
        seed: int = 0,
        store: ExampleStore | None = None,
        image: bool = True,
        features: tuple[str, ...] = (),
        gate: GateConfig | None = None,
        soft_labels: str = "held",
        own_mix: int = 0,
        own_mix_cross: int = 0,
        peer_distill: float = 0.0,
    ):
        if soft_labels not in SOFT_LABELS:
            raise UsageError(f"soft labels must be one of {', '.join(SOFT_LABELS)}, got {soft_labels!r}")
        self.soft_labels = soft_labels
        if own_mix < 0 or own_mix == 1:
            raise UsageError(f"own mix must be 0 (off) or >= 2, got {own_mix}")
        self.own_mix = own_mix
        if own_mix_cross < 0:
            raise UsageError(f"own mix cross must be >= 0, got {own_mix_cross}")
        self.own_mix_cross = own_mix_cross
        if not 0.0 <= peer_distill <= 1.0:
            raise UsageError(f"peer distill must be in [0, 1], got {peer_distill}")
        self.peer_distill = peer_distill
        # round -> student -> its model's probabilities on my own rows, kept from teaching it
        # (peer.core.consult): what my retrain of that round distills from
        self.consulted: dict[int, dict[str, np.ndarray]] = {}
        self.id = peer_id
        x = np.ascontiguousarray(x, dtype=np.float32)
        y = np.asarray(y, dtype=np.int64)
        # the validation slice: part of my private data never trained on, taught from or sent
        self.gate = gate or GateConfig()
        held_out = carve_validation(y, self.gate.validation_share, seed)
        self.x, self.y = x[~held_out], y[~held_out]
        self.val_x, self.val_y = x[held_out], y[held_out]
        self.gates: dict[int, GateReport] = {}  # round -> what the gate decided
        self.classes = tuple(classes)
        self.learner = learner
        self.teach_config = teach or TeachConfig()
        self.store = store if store is not None else ExampleStore()  # an empty store is falsy
        self.features = tuple(features)
        self.image = image and not self.features
        self.levels = 255 if self.image else None  # the grid the search and augmentation work on
        self.wire_levels = EXAMPLE_LEVELS[self.teach_config.example_precision]  # of the images I send
        if self.features:
            if self.x.ndim != 2 or self.x.shape[1] != len(self.features):
                raise ValueError(f"peer {peer_id}: inputs {self.x.shape} do not fit {len(self.features)} features")
            if learner.features != self.features:
                learner.set_features(self.features, self.x, self.y)  # fitted on private data only
            self.low, self.high = self.x.min(axis=0), self.x.max(axis=0)
        self.seed = seed
        self._own_proba: np.ndarray | None = None
        self._space: np.ndarray | None = None
        self._private_nn: np.ndarray | None = None
        self._ratio_index: RatioIndex | None = None
        self._published: dict[int, ModelBlob] = {}

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def missing_classes(self) -> list[int]:
        """Indices of the classes absent from my private data."""
        return [c for c in range(len(self.classes)) if not (self.y == c).any()]

    # -- train -------------------------------------------------------------------------------
    def training_set(self, skip: dict[tuple[str, int], set[str]] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Private training data plus every distinct example received and not refused (nor in `skip`)."""
        rx, ry = self.store.training_arrays(self.classes, self.input_shape, skip)
        if len(ry) == 0:
            return self.x, self.y
        return np.concatenate([self.x, rx]), np.concatenate([self.y, ry])

    def fit_set(
        self, skip: dict[tuple[str, int], set[str]] | None = None, round: int = 0
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """`training_set` with the targets the learner trains toward (None: the labels).

        With soft labels `held` and a learner that takes them, a received example of a class my
        private data holds trains toward its teacher's probabilities (how typical of its class the
        teacher finds it, where a mix start left it between two), one of a class I lack toward its
        label (there the teacher's doubt would only weaken the little I learn of it), and my own
        rows toward their labels.

        Beside received examples it also holds my own mixes (`own_mix`, drawn for `round`): means of
        my rows of a class, trained toward their class.
        """
        soft = self.soft_labels != "off" and self.learner.soft_targets
        rx, ry, rt = self.store.training_rows(self.classes, self.input_shape, skip, targets=soft)
        if not len(ry):
            return self.x, self.y, None
        ox, oy = self.own_mixes(round)
        x = np.concatenate([self.x, ox, rx])
        y = np.concatenate([self.y, oy, ry])
        if not soft:
            return x, y, None
        lacking = ~np.isin(ry, np.unique(self.y))
        rt[lacking] = 0.0
        rt[np.flatnonzero(lacking), ry[lacking]] = 1.0
        mixes = np.zeros((len(oy), len(self.classes)), np.float32)
        mixes[np.arange(len(oy)), oy] = 1.0
        return x, y, np.concatenate([self.own_targets(round), mixes, rt])

    def own_targets(self, round: int) -> np.ndarray:
        """What my own rows train toward in `round`: their labels, with `peer_distill` of what the
        models I pulled this round that get a row right believe of the classes I lack moved onto
        those classes (peer.core.consult)."""
        beliefs, has = qualified_beliefs(self.consulted.get(round, {}).values(), self.y, len(self.classes))
        lacking = np.isin(np.arange(len(self.classes)), self.missing_classes())
        return distill_targets(self.y, len(self.classes), beliefs, has, self.peer_distill, lacking)

    def _distills(self) -> bool:
        """Whether my retrain learns back from pulled models: a learner that trains toward
        probabilities, soft labels on, and --peer-distill above 0."""
        return self.peer_distill > 0 and self.soft_labels != "off" and self.learner.soft_targets

    def distilled_rows(self, round: int) -> int:
        """How many of my own rows `round`'s retrain moves toward the classes I lack."""
        if not self._distills() or not self.consulted.get(round) or not self.missing_classes():
            return 0
        return int(qualified_beliefs(self.consulted[round].values(), self.y, len(self.classes))[1].sum())

    def own_mixes(self, round: int) -> tuple[np.ndarray, np.ndarray]:
        """With `own_mix` k: one mix of k of my own rows per training row, `own_mix_cross` of them of
        another class I hold, labelled with the row's class (peer.core.augment.class_mixes), drawn from
        (seed, round) alone; empty otherwise."""
        rng = np.random.default_rng([self.seed, 13, round])
        return class_mixes(self.x, self.y, self.own_mix, rng, cross=self.own_mix_cross)

    def train(self, epochs: int | None = None, progress: Callable[[int], None] | None = None, round: int = 0) -> int:
        """Fit on private data plus every distinct example received; returns the set's size.

        The fit's randomness comes from (seed, round) alone, so a peer restored from its state in
        a fresh process (gRPC, Flower) trains exactly as one that stayed in memory.
        """
        seed = int(np.random.SeedSequence([self.seed, 11, round]).generate_state(1)[0])
        self._own_proba = None
        if round > 0 and len(self.val_y):
            return self._gated_train(epochs, progress, round, seed)
        x, y, targets = self.fit_set(round=round)
        self.learner.fit(x, y, epochs=epochs, progress=progress, seed=seed, targets=targets)
        return len(y)

    def _gated_train(self, epochs: int | None, progress: Callable[[int], None] | None, round: int, seed: int) -> int:
        """Train with what arrived since the last judgement, keeping it only where my validation
        slice does not lose accuracy beyond noise (peer.core.gate); every fit starts from the
        model of before the round with the same seed. Records a GateReport in self.gates[round]."""
        report = GateReport(round, validation=len(self.val_y), distilled=self.distilled_rows(round))
        judged = self.store.judgements()
        held = {self.classes[c] for c in np.unique(self.y)}
        lacking = set(self.classes) - held
        known = set(held)  # classes my data or examples accepted in earlier rounds hold
        fresh: dict[tuple[str, int], list[ExampleBatch]] = {}
        for b in self.store.batches():
            if (b.sender, b.round) not in judged:
                fresh.setdefault((b.sender, b.round), []).append(b)
            else:
                known |= _class_names(b, self.classes) - set(judged[(b.sender, b.round)])
        teachers = sorted({sender for sender, _ in fresh})
        space = (lambda v: self.to_unit(v)) if self.features else (lambda v: v)
        for t in teachers:
            bs = [b for (sender, _), batches in fresh.items() if sender == t for b in batches]
            bx = np.concatenate([b.inputs() for b in bs])
            by = np.concatenate([b.labels_for(self.classes) for b in bs])
            mine = np.isin(by, [self.classes.index(c) for c in held])
            report.teachers[t] = {
                "accepted": 0,
                "refused": 0,
                "agreement": _round4(label_agreement(space(bx[mine]), by[mine], self.search_space(), self.y)),
            }
        # fits to try, each as what it leaves out: everything; without the teacher whose examples
        # of my classes agree least with my data; only examples of classes I lack (without it too)
        everything = {key: set(self.classes) for key in fresh}
        plans: list[tuple[str, dict[tuple[str, int], set[str]]]] = [("accepted", {})]
        scored = [t for t in teachers if report.teachers[t]["agreement"] is not None]
        suspect = min(scored, key=lambda t: (report.teachers[t]["agreement"], t)) if scored else None
        if suspect is not None and len(teachers) > 1:
            plans.append((f"without {suspect}", {k: v for k, v in everything.items() if k[0] == suspect}))
        if lacking:
            only = {key: (set(self.classes) if key[0] == suspect else set(held)) for key in fresh}
            wanted = [self.classes.index(c) for c in lacking]
            if any(
                np.isin(b.labels_for(self.classes), wanted).any()
                for key, batches in fresh.items()
                if key[0] != suspect
                for b in batches
            ):
                plans.append(("lacking classes only", only))
        val_rows = np.bincount(self.val_y, minlength=len(self.classes))
        held_mask = np.bincount(self.y, minlength=len(self.classes)) > 0
        before = copy.deepcopy(self.learner)
        right_before = before.predict(self.val_x) == self.val_y
        report.accuracy_before = float(right_before.mean())
        kept: dict[tuple[str, int], set[str]] | None = None
        for outcome, skip in plans:
            self.learner = copy.deepcopy(before)
            x, y, targets = self.fit_set(skip, round)
            self.learner.fit(x, y, epochs=epochs, progress=progress, seed=seed, targets=targets)
            pred_after = self.learner.predict(self.val_x)
            right_after = pred_after == self.val_y
            into, excused = lacking_credit(pred_after, right_before, right_after, val_rows, held_mask)
            worse, better, harmful = paired_harm(right_before, right_after, self.gate.z, excused)
            report.tries.append(
                {
                    "without": sorted(
                        f"{t} round {r}: "
                        + ("all" if v == set(self.classes) else "held classes" if v == held else ",".join(sorted(v)))
                        for (t, r), v in skip.items()
                    ),
                    "b": worse,
                    "c": better,
                    "into_lacking": into,
                    "excused": excused,
                    "harmful": harmful,
                    "accuracy": _round4(float(right_after.mean())),
                }
            )
            if not harmful:
                kept, report.outcome, report.accuracy_after = skip, outcome, float(right_after.mean())
                report.improved = improved(worse, better, self.gate.z)
                break
        if kept is None:  # nothing passed: the model of before the round, the round's examples refused
            self.learner, kept, report.outcome = before, everything, "rolled back"
            report.accuracy_after = report.accuracy_before
        if not fresh and report.outcome == "accepted":
            report.outcome = "no examples"
        # a class I lacked whose first examples I kept: my slice cannot judge it, and learning it
        # at all is what a round is for, so it counts as an improvement (--rounds auto goes on)
        accepted: set[str] = set()
        for key, batches in fresh.items():
            for b in batches:
                accepted |= _class_names(b, self.classes) - kept.get(key, set())
        report.new_classes = sorted((accepted & lacking) - known)
        report.improved = report.improved or bool(report.new_classes)
        for (sender, r), batches in fresh.items():
            refused = kept.get((sender, r), set())
            self.store.judge(sender, r, refused, at=round)
            for b in batches:
                out = np.isin(b.y, [i for i, name in enumerate(b.classes) if name in refused])
                report.teachers[sender]["refused"] += int(out.sum())
                report.teachers[sender]["accepted"] += int((~out).sum())
        self.gates[round] = report
        self._own_proba = None
        return len(self.training_set()[1])

    # -- publish -----------------------------------------------------------------------------
    def snapshot(self, round: int = 0) -> ModelBlob:
        """The model as published for `round`; later training does not change it."""
        if round not in self._published:
            self._published = {r: b for r, b in self._published.items() if r >= round - 1}
            # what teachers evaluate; my own model stays float32
            blob = compact(self.learner.to_blob(), self.teach_config.blob_precision, self.teach_config.blob_rank)
            spec = {**blob.spec, PROFILE_KEY: self.profile().to_spec()}
            self._published[round] = ModelBlob(spec, blob.arrays)
        return self._published[round]

    def profile(self) -> Profile:
        """My model's accuracy per class on my validation slice (on my training data when I keep
        none): published with the model, so peers can choose whom to teach (`--fanout`). It says
        no more about my data than the model itself does to anyone who evaluates it."""
        x, y, on = self.val_x, self.val_y, "validation"
        if not len(y):
            x, y, on = self.x, self.y, "training"
        pred = self.learner.predict(x) if len(y) else np.zeros(0, dtype=np.int64)
        accuracy = tuple(
            round(float((pred[y == c] == c).mean()), 4) if (y == c).any() else None for c in range(len(self.classes))
        )
        return Profile(self.classes, accuracy, on)

    # -- teach -------------------------------------------------------------------------------
    def own_proba(self) -> np.ndarray:
        if self._own_proba is None:
            self._own_proba = self.learner.predict_proba(self.x)
        return self._own_proba

    def search_space(self) -> np.ndarray:
        """My private inputs where counterfactuals are searched: images as they are, a table in [0, 1]."""
        if self._space is None:
            self._space = self.to_unit(self.x) if self.features else self.x
        return self._space

    def private_nn(self) -> np.ndarray:
        """Per private example, the L2 distance (search space) to its nearest other private example."""
        if self._private_nn is None:
            space = self.search_space()
            self._private_nn = nearest(space, space, exclude_self=True)[0]
        return self._private_nn

    def ratio_index(self) -> RatioIndex:
        """My private inputs and their nearest-other distances, prepared once for the release's many
        nearest-ratio questions (push out, filter)."""
        if self._ratio_index is None:
            self._ratio_index = RatioIndex(self.search_space(), self.private_nn())
        return self._ratio_index

    def prototypes(self) -> np.ndarray:
        """Per class, the mean of my examples I classify right (all of that class if none)."""
        proba = self.own_proba()
        right = proba.argmax(axis=1) == self.y
        protos = np.zeros((len(self.classes), *self.input_shape), dtype=np.float32)
        for c in range(len(self.classes)):
            pick = (self.y == c) & right
            if not pick.any():
                pick = self.y == c
            if pick.any():
                protos[c] = self.x[pick].mean(axis=0)
        return protos

    # -- feature spaces (tabular peers) -----------------------------------------------------
    def to_unit(self, x: np.ndarray) -> np.ndarray:
        """My columns scaled by my own per-feature [min, max] to [0, 1], where the search runs."""
        span = self.high - self.low
        return ((x - self.low) / np.where(span > 0, span, 1.0)).astype(np.float32)

    def from_unit(self, u: np.ndarray) -> np.ndarray:
        return (self.low + np.clip(u, 0.0, 1.0) * (self.high - self.low)).astype(np.float32)

    def in_student_space(
        self, x: np.ndarray, student: Learner, y: np.ndarray | None = None, rng: np.random.Generator | None = None
    ) -> np.ndarray:
        """My rows in the student's columns, by name. Columns I lack are drawn from the student's
        declared column model given the columns we share and each row's class `y` (my class indices,
        matched to the student's by name), else take the student's neutral values."""
        if not self.features:
            if student.features:
                raise InvalidPayload("student model names feature columns; my inputs have no column names")
            if tuple(student.input_shape) != self.input_shape:
                raise InvalidPayload(f"student model takes inputs {student.input_shape}, mine are {self.input_shape}")
            return x
        if not student.features:
            raise InvalidPayload(f"student model of kind {student.kind} names no feature columns; mine are a table")
        labels = None
        if y is not None:
            index = {name: i for i, name in enumerate(student.classes)}
            labels = np.array([index.get(self.classes[c], -1) for c in y], dtype=np.int64)
        columns = student.columns if self.teach_config.column_fill == "conditional" else None
        return map_columns(x, self.features, student.features, student.neutral, columns, labels, rng)

    def _student_proba(self, student: Learner) -> np.ndarray:
        """The student's predictions on my data, its columns mapped to my class names."""
        # columns I lack filled as the student's own rows of each class would have them (seeded)
        fill_rng = np.random.default_rng([self.seed, 11])
        proba = student.predict_proba(self.in_student_space(self.x, student, self.y, fill_rng))
        if student.classes == self.classes:
            return proba
        cols = {name: i for i, name in enumerate(student.classes)}
        mapped = np.zeros((len(self.x), len(self.classes)), dtype=np.float32)
        for k, name in enumerate(self.classes):
            if name in cols:
                mapped[:, k] = proba[:, cols[name]]
        return mapped

    def teach(self, student_id: str, student_blob: ModelBlob, round: int) -> tuple[list[ExampleBatch], TeachReport]:
        """Counterfactuals of my instances where I am right and the student is wrong, as batches
        in the student's inputs: select, search, release (augment, noise, min-distance), measure,
        encode."""
        start = time.perf_counter()
        report = TeachReport(self.id, student_id, round)
        # randomness from (seed, round, student) alone: the same whatever order students come in
        rng = np.random.default_rng([self.seed, 7, round, zlib.crc32(student_id.encode())])
        student = learner_from_blob(student_blob, self.learner.train_config.device)
        batches: list[ExampleBatch] = []
        if not self.features or shared(self.features, student.features):  # else nothing I know fits its columns
            idx, confused = self._select(student, report, rng)
            released = self._search_and_release(idx, report, rng, confused) if len(idx) else None
            if released is not None:
                batches = self._encode(student_id, round, student, *released, report, rng)
        report.seconds = time.perf_counter() - start
        return batches, report

    def _select(self, student: Learner, report: TeachReport, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """R_{i->j}: my instances I get right and the student gets wrong (capped by
        max_per_student; each `starts` times with a random start), and per private row the class
        the student takes it for."""
        cfg = self.teach_config
        theirs = self._student_proba(student)
        if self._distills() and student.classes == self.classes:
            # kept for my own retrain of this round (own_targets); older rounds are done with
            self.consulted = {r: v for r, v in self.consulted.items() if r >= report.round}
            self.consulted.setdefault(report.round, {})[report.student] = theirs.astype(np.float32)
        idx = np.flatnonzero(qualified_mask(self.own_proba(), theirs, self.y))
        report.qualified = len(idx)
        if cfg.max_per_student and len(idx) > cfg.max_per_student:
            idx = np.sort(rng.choice(idx, cfg.max_per_student, replace=False))
        if cfg.starts > 1 and cfg.counterfactual.start != "instance":
            idx = np.repeat(idx, cfg.starts)  # each row its own draw of a random start
        report.attempted = len(idx)
        return idx, theirs.argmax(axis=1)

    def _search_and_release(
        self, idx: np.ndarray, report: TeachReport, rng: np.random.Generator, confused: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Search and release for instances `idx`; those whose x' the min-distance filter dropped are
        searched again from fresh random starts, up to `release_tries` searches in all. What is sent is
        measured once, over everything released. None when nothing may leave."""
        cfg = self.teach_config
        # a fresh start differs only where it is random: the paper's start is the instance itself
        tries = cfg.release_tries if cfg.min_distance > 0 and cfg.counterfactual.start != "instance" else 1
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        steps: list[np.ndarray] = []
        l1: list[np.ndarray] = []
        pending = idx
        for attempt in range(tries):
            if attempt:
                report.retried += len(pending)
            found = self._search(pending, report, rng, confused)
            steps.append(found.steps)
            if len(found.y) == 0:
                break
            l1.append(np.abs(found.x - found.src).reshape(len(found.y), -1).sum(axis=1))
            out_x, out_y, out_src, ratio, pending = self._release(found, report, rng)
            parts.append((out_x, out_y, out_src, ratio))
            if len(pending) == 0:
                break
        all_steps = np.concatenate(steps)
        report.mean_steps = float(all_steps.mean()) if len(all_steps) else 0.0
        report.source_l1 = float(np.concatenate(l1).mean()) if l1 else 0.0
        if not parts:
            return None
        out_x, out_y, out_src, ratio = (np.concatenate(a) for a in zip(*parts))
        report.near_copies = int((ratio < 1.0).sum())
        if cfg.measure_leakage and len(out_y):
            self._measure(out_x, out_src, ratio, report, rng)
        if len(out_y) == 0:
            return None
        return out_x, out_y, out_src

    def _search(
        self, idx: np.ndarray, report: TeachReport, rng: np.random.Generator, confused: np.ndarray | None = None
    ) -> Found:
        """x' per selected instance from its start point: the distinct successes, each with its start
        and instance, and the steps of every search made. `confused`: per private row the class the
        student takes it for (mix starts with start_cross or start_pool alike)."""
        cc = self.teach_config.counterfactual
        t0 = time.perf_counter()
        # tables: search in [0, 1] = my own per-feature [min, max], so nothing sent leaves that box
        space = self.search_space()
        mine = self.own_proba()
        predict = (
            (lambda u: self.learner.predict_proba(self.from_unit(u))) if self.features else self.learner.predict_proba
        )
        module = None
        if self.learner.differentiable and isinstance(self.learner, TorchLearner):
            module = _FromUnit(self.low, self.high, self.learner.module) if self.features else self.learner.module
        proba0: np.ndarray | None = None
        if cc.start == "instance":  # the paper: the search starts at the instance itself
            x0, proba0 = space[idx], mine[idx]
        else:
            st = start_points(
                cc.start,
                space,
                self.y,
                idx,
                mine.argmax(axis=1) == self.y,
                len(self.classes),
                rng,
                k=cc.start_k,
                module=module,
                predict_proba=predict,
                confused=confused,
                cross=cc.start_cross if confused is not None else 0,
                alike=cc.start_pool == "alike" and confused is not None,
            )
            report.failed += int((~st.ok).sum())
            idx, x0 = idx[st.ok], st.x[st.ok]
        if len(idx) == 0:
            report.counterfactual_seconds += time.perf_counter() - t0
            return Found.empty(space)
        labels = self.y[idx]
        if module is not None:  # y' from my prediction at the start point, read off the search's first pass
            res = gradient_counterfactuals(
                module, x0, lambda p, rows: soft_targets(p, labels[rows], cc.alpha), cc, levels=self.levels
            )
        else:
            # y' from my prediction at the start point: the search's own prediction at x0 where not known
            target = (
                soft_targets(proba0, labels, cc.alpha)
                if proba0 is not None
                else (lambda p: soft_targets(p, labels, cc.alpha))
            )
            protos = self.to_unit(self.prototypes()) if self.features else self.prototypes()
            if cc.start == "noise":  # data-free: no line search toward a prototype of private data
                protos = np.full_like(protos, 0.5)
            boxes = None  # a forest is searched through its own leaf boxes, in my search space
            if isinstance(self.learner, ForestLearner) and cc.forest_search == "leaf-box":
                boxes = self.learner.leaf_boxes(self.low, self.high) if self.features else self.learner.leaf_boxes()
            res = search_counterfactuals(predict, x0, target, protos, cc, rng, levels=self.levels, boxes=boxes)
        report.counterfactual_seconds += time.perf_counter() - t0
        report.failed += res.failed
        good = np.flatnonzero(res.ok)
        keep = good[dedupe(res.x[good], self.y[idx][good])]
        report.duplicates += len(good) - len(keep)
        report.counterfactuals += len(keep)
        # src: the start, where x' was searched from
        found = Found(res.x[keep], self.y[idx][keep], x0[keep], idx[keep], np.asarray(res.steps, np.float64))
        if not report.gallery:
            report.gallery = [(found.src[i], found.x[i], int(found.y[i])) for i in range(min(8, len(found.y)))]
        return found

    def _release(
        self, found: Found, report: TeachReport, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """What may leave of `found`: x' and augmented copies, release noise, nothing nearer a private
        example than min_distance. Returns (inputs, labels, starts, nearest-private ratio) of what
        passed (ratio inf where not measured) and the instances whose x' the filter dropped."""
        cfg = self.teach_config
        cx, cy, src = found.x, found.y, found.src
        pushed_ratio = None  # nearest ratio of each x' as pushed, measured by the push
        if cfg.min_distance > 0 and cfg.min_distance_action == "push" and len(cx):
            cx, pushed_ratio = self._push_out(cx, cy, report)
        if self.image:
            ax, ay = augment_images(cx, cy, cfg.augment, rng, self.levels)
        else:
            ax, ay = augment_vectors(cx, cy, cfg.augment, rng)
        out_x, out_y = np.concatenate([cx, ax]), np.concatenate([cy, ay])
        out_src = np.concatenate([src] + [src] * (len(ay) // max(len(cy), 1)))
        noisy = release_noise(out_x, cfg.noise_scale, rng, self.levels)
        if noisy is not out_x:
            out_x, pushed_ratio = noisy, None
        if self.image and self.wire_levels != self.levels:  # what is sent: judged below as sent
            out_x = (np.round(out_x * self.wire_levels) / self.wire_levels).astype(np.float32)
            pushed_ratio = None
        none_dropped = found.instances[:0]
        if not (cfg.measure_leakage or cfg.min_distance > 0):
            return out_x, out_y, out_src, np.full(len(out_y), np.inf), none_dropped
        index = self.ratio_index()
        # below 1: a near-copy of some private example. An augmented copy reveals what its x'
        # reveals (a public shift or rotation can be undone): it counts as near as its x', so the
        # filter drops x' and all its copies together, and a copy of a dropped x' is not measured
        ratio = np.full(len(out_x), np.inf)
        ratio[: len(cx)] = pushed_ratio if pushed_ratio is not None else index.ratio(out_x[: len(cx)])
        parent = np.arange(len(cx), len(out_x)) % max(len(cx), 1)
        copies = len(cx) + np.flatnonzero(ratio[parent] >= cfg.min_distance)
        ratio[copies] = index.ratio(out_x[copies])
        ratio[len(cx) :] = np.minimum(ratio[len(cx) :], ratio[parent])
        if cfg.min_distance <= 0:
            return out_x, out_y, out_src, ratio, none_dropped
        keep = ratio >= cfg.min_distance
        report.filtered += int((~keep).sum())
        dropped = found.instances[~keep[: len(cx)]]
        return out_x[keep], out_y[keep], out_src[keep], ratio[keep], dropped

    def _push_out(self, cx: np.ndarray, cy: np.ndarray, report: TeachReport) -> tuple[np.ndarray, np.ndarray]:
        """x' moved out of every private example's min-distance ball (push_out); a moved x' I no
        longer give its class stays where it was, for the filter to drop. Returns them and the
        nearest ratio of each as returned."""
        levels = self.wire_levels if self.image else None
        index = self.ratio_index()
        moved, ratio = push_out(
            cx, self.search_space(), self.private_nn(), self.teach_config.min_distance, levels, index=index
        )
        changed = np.flatnonzero(np.any((moved != cx).reshape(len(cx), -1), axis=1))
        if len(changed):
            u = moved[changed]
            proba = self.learner.predict_proba(self.from_unit(u) if self.features else u)
            wrong = changed[proba.argmax(axis=1) != cy[changed]]
            moved[wrong] = cx[wrong]
            if len(wrong):
                ratio[wrong] = index.ratio(cx[wrong])
            report.pushed += len(changed) - len(wrong)
        return moved, ratio

    def _measure(
        self,
        out_x: np.ndarray,
        out_src: np.ndarray,
        ratio: np.ndarray,
        report: TeachReport,
        rng: np.random.Generator,
        sample: int = LEAKAGE_SAMPLE,
    ) -> None:
        """Leakage of what is sent: near-copies over all of it, distances and SSIM on a seeded sample."""
        pick = np.sort(rng.permutation(len(out_x))[:sample]) if len(out_x) > sample else np.arange(len(out_x))
        stats = measure_leakage(
            out_x[pick],
            self.search_space(),
            self.private_nn(),
            sources=out_src[pick],
            image=self.image and out_x.ndim >= 3,
        )
        report.leakage = {
            **stats.to_dict(),
            "count": int(len(out_x)),
            "near_copies": report.near_copies,
            "near_copy_share": report.near_copies / len(out_x),
            "sampled": int(len(pick)),
            "nearest_any_ratio_min": float(ratio.min()),
        }
        report.leakage_sample = {key: _rounded(getattr(stats, name)) for key, name in SAMPLED.items()}

    def _encode(
        self,
        student_id: str,
        round: int,
        student: Learner,
        out_x: np.ndarray,
        out_y: np.ndarray,
        out_src: np.ndarray,
        report: TeachReport,
        rng: np.random.Generator,
    ) -> list[ExampleBatch]:
        """Batches in the student's inputs: uint8 images, or a table in the student's columns by name."""
        cfg = self.teach_config
        distance = np.abs(out_x - out_src).reshape(len(out_x), -1).sum(axis=1).astype(np.float32)
        # my model's probabilities for each example as it is sent (on the grid it travels on)
        if self.image:
            wire_x = np.round(out_x * self.wire_levels).astype(np.uint8)
            proba = self.learner.predict_proba(wire_x.astype(np.float32) / np.float32(self.wire_levels))
        elif self.features:
            proba = self.learner.predict_proba(self.from_unit(out_x))
            wire_x = self.in_student_space(self.from_unit(out_x), student, out_y, rng)
            keep = dedupe(wire_x, out_y)  # rows that differ only in columns the student lacks
            wire_x, out_y, distance, proba = wire_x[keep], out_y[keep], distance[keep], proba[keep]
        else:
            wire_x = out_x.astype(np.float32)
            proba = self.learner.predict_proba(wire_x)
        wire_proba = quantise_proba(proba)
        report.sent = len(out_y)
        return [
            ExampleBatch(
                self.id,
                student_id,
                round,
                seq,
                wire_x[s : s + cfg.batch_limit],
                out_y[s : s + cfg.batch_limit],
                self.classes,
                distance[s : s + cfg.batch_limit],
                student.features,
                self.wire_levels if self.image else 255,
                wire_proba[s : s + cfg.batch_limit],
            )
            for seq, s in enumerate(range(0, len(out_y), cfg.batch_limit))
        ]

    # -- absorb ------------------------------------------------------------------------------
    def absorb(self, batch: ExampleBatch) -> bool:
        """Validate and store a received batch; False if this batch id was stored before."""
        batch.validate(self.input_shape, self.classes, self.features)
        return self.store.add(batch)

    # -- evaluate ----------------------------------------------------------------------------
    def evaluate(self, x: np.ndarray, y: np.ndarray) -> dict:
        pred = self.learner.predict(x)
        per_class = [float((pred[y == c] == c).mean()) if (y == c).any() else None for c in range(len(self.classes))]
        return {"accuracy": float((pred == y).mean()), "per_class": per_class}


class _FromUnit(torch.nn.Module):
    """A torch model fed by [0, 1] coordinates of the teacher's feature box: low + u (high - low)."""

    def __init__(self, low: np.ndarray, high: np.ndarray, module: torch.nn.Module):
        super().__init__()
        device = next(module.parameters()).device
        self.low = torch.from_numpy(low).to(device)
        self.span = torch.from_numpy(high - low).to(device)
        self.module = module

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.module(self.low + u * self.span)
