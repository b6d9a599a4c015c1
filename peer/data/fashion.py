"""Datasets: the Dataset type, and Fashion-MNIST from IDX files (find, read, validate)."""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from peer.errors import UsageError

FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MAX_IDX_BYTES = 8 << 30  # one IDX file's data; a header promising more is refused before allocating
_IDX_DTYPES: dict[int, npt.DTypeLike] = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


@dataclass(frozen=True)
class Dataset:
    """Inputs and int64 labels (N,) indexing `classes`, the class names.

    Images are uint8 (N, H, W) or (N, C, H, W) and `features` is empty; a table is float32
    (N, D) in its own units and `features` names its D columns (categorical columns one-hot
    encoded as "column=value"), so peers with different columns can map them by name.
    """

    x: np.ndarray
    y: np.ndarray
    classes: tuple[str, ...]
    features: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"{len(self.x)} inputs but {len(self.y)} labels")
        if self.features and (self.x.ndim != 2 or self.x.shape[1] != len(self.features)):
            raise ValueError(f"inputs {self.x.shape} do not fit {len(self.features)} feature names")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def tabular(self) -> bool:
        return bool(self.features)

    def subset(self, idx: np.ndarray) -> Dataset:
        return Dataset(self.x[idx], self.y[idx], self.classes, self.features)

    def columns(self, names: tuple[str, ...]) -> Dataset:
        """This table restricted to the named columns, in that order."""
        lookup = {name: i for i, name in enumerate(self.features)}
        missing = [n for n in names if n not in lookup]
        if missing:
            raise UsageError(f"unknown column(s) {', '.join(missing)}")
        idx = [lookup[n] for n in names]
        return Dataset(np.ascontiguousarray(self.x[:, idx]), self.y, self.classes, tuple(names))

    def float_inputs(self) -> np.ndarray:
        """Inputs as the learners take them: images scaled to [0, 1], tables as they are."""
        if self.x.dtype == np.uint8:
            return self.x.astype(np.float32) / 255.0
        return self.x.astype(np.float32)


def read_idx(path: Path, rows: np.ndarray | None = None, count: int | None = None) -> np.ndarray:
    """Read one IDX file (optionally gzipped); raise UsageError on anything malformed.

    The data is read straight into the array it becomes (no whole-file buffer beside it), so a
    peer's memory peaks at the data set's size, not at two or three times it. With `rows` (indices
    along the first axis, any order) only those rows are kept: the file is still read and checked
    whole, a block at a time, but memory holds the rows asked for, not the file. `count`, where
    given, is the number of rows the header must promise (images beside their labels)."""
    try:
        with path.open("rb") as probe:
            gz = probe.read(2) == b"\x1f\x8b"
        with gzip.open(path, "rb") if gz else path.open("rb") as f:
            return _read_idx_stream(f, path, rows, count)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise UsageError(f"cannot read IDX file {path}: {exc}") from exc


ROWS_PER_BLOCK = 4096  # rows read at a time when only some are kept: 3 MB of 28x28 images


def _read_idx_stream(f: Any, path: Path, rows: np.ndarray | None = None, count: int | None = None) -> np.ndarray:
    magic = f.read(4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_DTYPES:
        raise UsageError(f"{path} is not an IDX file (bad magic number)")
    ndim = magic[3]
    dims = f.read(4 * ndim)
    if ndim == 0 or len(dims) < 4 * ndim:
        raise UsageError(f"{path} is truncated: header cut short")
    shape = tuple(int.from_bytes(dims[4 * i : 4 * i + 4], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[magic[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if expected > MAX_IDX_BYTES:
        raise UsageError(f"{path}: header promises shape {shape} ({expected} bytes), over the cap of {MAX_IDX_BYTES}")
    if count is not None and shape[0] != count:
        raise UsageError(f"{path} holds {shape[0]} rows (shape {shape}) but {count} were expected")
    if rows is None:
        out = np.empty(shape, dtype=dtype)
        got = f.readinto(memoryview(out).cast("B")) if expected else 0  # type: ignore[arg-type]
    else:
        out, got = _read_rows(f, path, shape, dtype, np.asarray(rows))
    extra = len(f.read(1 << 20))
    if got != expected or extra:
        held = got + extra if extra < (1 << 20) else f"over {got + extra}"
        raise UsageError(f"{path} is corrupt: header promises shape {shape} ({expected} bytes) but holds {held} bytes")
    return out.astype(dtype.newbyteorder("="), copy=False)


def _read_rows(f: Any, path: Path, shape: tuple[int, ...], dtype: np.dtype, rows: np.ndarray) -> tuple[np.ndarray, int]:
    """The rows `rows` of an IDX array of `shape`, read a block at a time; and the bytes read."""
    if rows.ndim != 1 or (rows.size and (rows.min() < 0 or rows.max() >= shape[0])):
        raise ValueError(f"rows must index the {shape[0]} rows of {path}")
    wanted, order = np.unique(rows, return_inverse=True)
    out = np.empty((len(wanted), *shape[1:]), dtype=dtype)
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    block = np.empty((max(1, min(ROWS_PER_BLOCK, shape[0])), *shape[1:]), dtype=dtype)
    got, filled = 0, 0
    for start in range(0, shape[0], len(block)):
        n = min(len(block), shape[0] - start)
        view = memoryview(block).cast("B")[: n * row_bytes]  # type: ignore[arg-type]
        read = f.readinto(view)
        got += read
        if read < n * row_bytes:
            break  # cut short: the caller reports the size
        hit = wanted[filled:][: np.searchsorted(wanted[filled:], start + n)]
        out[filled : filled + len(hit)] = block[hit - start]
        filled += len(hit)
    return out[order], got


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx") + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def find_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """The directory holding Fashion-MNIST: the one given, else Debian's, else a torchvision download."""
    if data_dir is not None:
        path = Path(data_dir)
        if not path.is_dir():
            raise UsageError(f"--data-dir {path} does not exist or is not a directory")
        missing = [s for pair in _FILES.values() for s in pair if _find(path, s) is None]
        if missing:
            raise UsageError(
                f"--data-dir {path} lacks Fashion-MNIST file(s) {', '.join(missing)} "
                "(expected the four IDX files, gzipped or not)"
            )
        return path
    if all(_find(DEBIAN_DIR, s) for pair in _FILES.values() for s in pair):
        return DEBIAN_DIR
    return _download()


def _download() -> Path:
    cache = Path(os.environ.get("CKD_CACHE_DIR", Path.home() / ".cache" / "ckd"))
    try:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(cache), train=True, download=True)
        FashionMNIST(str(cache), train=False, download=True)
    except Exception as exc:  # network errors come in many types
        raise UsageError(
            "Fashion-MNIST not found: pass --data-dir, install Debian's dataset-fashion-mnist, "
            f"or allow torchvision to download it ({exc})"
        ) from exc
    return cache / "FashionMNIST" / "raw"


def load_fashion_mnist(
    data_dir: str | os.PathLike | None = None, rows: Callable[[str, np.ndarray], np.ndarray | None] | None = None
) -> tuple[Dataset, Dataset]:
    """(train, test) Fashion-MNIST, validated.

    `rows(split, labels)`, where given, names the rows of "train" or "test" to keep (None: all)
    from that split's labels: only those images are held in memory. A peer process that needs its
    own part of the training set and a slice of the test set then holds those, not 55 MB of images."""
    directory = find_data_dir(data_dir)
    parts = []
    for split, (img_stem, lbl_stem) in _FILES.items():
        y = read_idx(_find(directory, lbl_stem))  # type: ignore[arg-type]
        if y.ndim != 1:
            raise UsageError(f"{directory}: {split} labels have shape {y.shape}, not one label per image")
        if y.size and (y.min() < 0 or y.max() >= len(FASHION_CLASSES)):
            raise UsageError(f"{directory}: {split} labels outside 0..{len(FASHION_CLASSES) - 1}")
        keep = rows(split, y) if rows else None
        x = read_idx(_find(directory, img_stem), keep, count=len(y))  # type: ignore[arg-type]
        if x.ndim != 3:
            raise UsageError(f"{directory}: {split} images have shape {x.shape}, not (N, height, width)")
        if keep is not None:
            y = y[np.asarray(keep)]
        parts.append(Dataset(x.astype(np.uint8, copy=False), y.astype(np.int64), FASHION_CLASSES))
    return parts[0], parts[1]
