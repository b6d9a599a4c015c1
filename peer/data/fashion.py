"""Datasets: the Dataset type, and Fashion-MNIST from IDX files (find, read, validate)."""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

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


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped); raise UsageError on anything malformed."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise UsageError(f"cannot read IDX file {path}: {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise UsageError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise UsageError(f"{path} is truncated: header cut short")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise UsageError(
            f"{path} is corrupt: header promises shape {shape} ({expected} bytes) but holds {len(raw) - header} bytes"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


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


def load_fashion_mnist(data_dir: str | os.PathLike | None = None) -> tuple[Dataset, Dataset]:
    """(train, test) Fashion-MNIST, validated."""
    directory = find_data_dir(data_dir)
    parts = []
    for split, (img_stem, lbl_stem) in _FILES.items():
        x = read_idx(_find(directory, img_stem))  # type: ignore[arg-type]
        y = read_idx(_find(directory, lbl_stem))  # type: ignore[arg-type]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise UsageError(f"{directory}: {split} images {x.shape} and labels {y.shape} don't match")
        if y.size and (y.min() < 0 or y.max() >= len(FASHION_CLASSES)):
            raise UsageError(f"{directory}: {split} labels outside 0..{len(FASHION_CLASSES) - 1}")
        parts.append(Dataset(x.astype(np.uint8), y.astype(np.int64), FASHION_CLASSES))
    return parts[0], parts[1]
