"""ExampleStore: the synthetic examples a peer received, stored once per batch id."""

from __future__ import annotations

import threading

import numpy as np

from peer.core.blob import ExampleBatch
from peer.core.counterfactual import dedupe


class ExampleStore:
    """Exactly-once by batch id `(sender, round, seq)`: a batch seen before is not stored twice.

    Training data comes out in id order, so the order batches arrived in never changes what
    a peer learns.
    """

    def __init__(self) -> None:
        self._batches: dict[tuple[str, int, int], ExampleBatch] = {}
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

    def training_arrays(self, classes: tuple[str, ...], input_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """All distinct received (x, y), inputs as float32, labels as indices into `classes`."""
        batches = self.batches()
        if not batches:
            return np.zeros((0, *input_shape), np.float32), np.zeros(0, np.int64)
        x = np.concatenate([b.inputs() for b in batches])
        y = np.concatenate([b.labels_for(classes) for b in batches])
        keep = dedupe(x, y)
        keep = keep[y[keep] >= 0]
        return x[keep], y[keep]
