"""Shared fixtures: the real Fashion-MNIST, small IDX files, torch kept to one thread."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Back to one thread after each test: `ckd demo` run in-process sets its --threads, and a float
    reduction split over another number of threads may differ in the last digits from a run it is
    compared with."""
    yield
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def fmnist():
    """(train, test) of the real Fashion-MNIST (make test installs Debian's package)."""
    from peer.data.fashion import load_fashion_mnist

    return load_fashion_mnist()


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> Path:
    codes = {np.dtype(np.uint8): 0x08}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    raw = header + array.tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


@pytest.fixture
def tiny_idx_dir(tmp_path: Path) -> Path:
    """A data directory with four small, valid Fashion-MNIST-shaped IDX files."""
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 50), ("t10k", 20)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))
    return tmp_path
