"""ExampleStore: the synthetic examples a peer received, stored once per batch id, and what the
peer's validation gate decided about them."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping

import numpy as np

from peer.core.blob import ExampleBatch
from peer.core.counterfactual import dedupe


class ExampleStore:
    """Exactly-once by batch id `(sender, round, seq)`: a batch seen before is not stored twice.

    Training data comes out in id order, so the order batches arrived in never changes what
    a peer learns.

    A judgement (the validation gate's, `Peer.train`) names, per teacher and round, the classes
    whose examples were refused: those never come out for training again (rolled back for good,
    not kept for a later round). Batches of a (teacher, round) not judged yet come out whole.
    """

    def __init__(self) -> None:
        self._batches: dict[tuple[str, int, int], ExampleBatch] = {}
        self._judged: dict[tuple[str, int], tuple[str, ...]] = {}
        self._judged_at: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()

    def add(self, batch: ExampleBatch) -> bool:
        """Store the batch; False if a batch with this id was already stored."""
        with self._lock:
            if batch.id in self._batches:
                return False
            self._batches[batch.id] = batch
            return True

    def __contains__(self, batch_id: tuple[str, int, int]) -> bool:
        return batch_id in self._batches

    def __len__(self) -> int:
        return sum(len(b) for b in self._batches.values())

    def batches(self) -> list[ExampleBatch]:
        with self._lock:
            return [self._batches[k] for k in sorted(self._batches)]

    def count_by_sender(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for b in self.batches():
            counts[b.sender] = counts.get(b.sender, 0) + len(b)
        return counts

    # -- judgements of the validation gate ------------------------------------------------------
    def judge(self, sender: str, round: int, refused: Iterable[str] = (), at: int | None = None) -> None:
        """Record the gate's decision on `sender`'s examples of `round`: the class names refused.
        `at`: the round whose training made the decision (None: unknown, never forgotten)."""
        with self._lock:
            self._judged[(sender, int(round))] = tuple(sorted(set(refused)))
            self._judged_at[(sender, int(round))] = -1 if at is None else int(at)

    def forget_judgements(self, after: int) -> int:
        """Drop the decisions made by training rounds after `after`: a peer resumed after round
        `after` trains those rounds again and judges their examples afresh. Returns how many."""
        with self._lock:
            gone = [k for k, at in self._judged_at.items() if at > after]
            for k in gone:
                del self._judged[k], self._judged_at[k]
            return len(gone)

    def judgements(self) -> dict[tuple[str, int], tuple[str, ...]]:
        """(sender, round) -> refused class names, for every judged (sender, round)."""
        with self._lock:
            return dict(self._judged)

    def training_arrays(
        self,
        classes: tuple[str, ...],
        input_shape: tuple[int, ...],
        skip: Mapping[tuple[str, int], Iterable[str]] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """All distinct received (x, y) not refused, inputs as float32, labels as indices into `classes`.

        `skip` leaves out more: (sender, round) -> class names, as a judgement would refuse them.
        """
        x, y, _ = self.training_rows(classes, input_shape, skip, targets=False)
        return x, y

    def training_rows(
        self,
        classes: tuple[str, ...],
        input_shape: tuple[int, ...],
        skip: Mapping[tuple[str, int], Iterable[str]] | None = None,
        targets: bool = True,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`training_arrays` with each row's target over `classes` beside it (ExampleBatch.targets_for:
        its sender's probabilities where the batch carries them, else its label's one-hot); with
        `targets` False those are not built and come back with no columns."""
        refused = {k: set(v) for k, v in self.judgements().items()}
        for k, v in (skip or {}).items():
            refused.setdefault(k, set()).update(v)
        xs, ys, ts = [], [], []
        for b in self.batches():
            labels = b.labels_for(classes)
            rows = b.targets_for(classes) if targets else np.zeros((len(labels), 0), np.float32)
            out = refused.get((b.sender, b.round))
            # every row as a view where nothing of the batch is refused, else a copy of those kept
            keep_rows = ~np.isin(b.y, [i for i, name in enumerate(b.classes) if name in out]) if out else slice(None)
            xs.append(b.inputs()[keep_rows])
            ys.append(labels[keep_rows])
            ts.append(rows[keep_rows])
        if not xs:
            return (
                np.zeros((0, *input_shape), np.float32),
                np.zeros(0, np.int64),
                np.zeros((0, len(classes) if targets else 0), np.float32),
            )
        x, y, t = np.concatenate(xs), np.concatenate(ys), np.concatenate(ts)
        keep = dedupe(x, y)
        keep = keep[y[keep] >= 0]
        return x[keep], y[keep], t[keep]
