"""A peer's own data from one path: a CSV or Parquet table, an .npz, or an image folder.

`load_source(path)` infers the kind from the path (overridable) and returns a validated
Dataset. Tables keep numeric columns in their own units and one-hot encode categorical columns
into named columns "column=value" (categories fitted on the training file), so peers holding
different columns can map them by name. Every problem is a UsageError naming the file and the
column, row or folder at fault.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from peer.data.fashion import Dataset
from peer.errors import UsageError

KINDS = ("csv", "parquet", "npz", "images")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"})
MISSING = frozenset({"", "nan", "na", "n/a", "null", "none", "?"})


def infer_kind(path: Path) -> str:
    """The source kind a path names: a directory is an image folder, files go by suffix."""
    if path.is_dir():
        return "images"
    suffix = path.suffix.lower()
    kinds = {".csv": "csv", ".tsv": "csv", ".txt": "csv", ".parquet": "parquet", ".pq": "parquet", ".npz": "npz"}
    if suffix not in kinds:
        raise UsageError(
            f"--data {path}: cannot tell its kind from the suffix {suffix!r}; pass --data-kind ({', '.join(KINDS)})"
        )
    return kinds[suffix]


def load_source(
    path: str | os.PathLike,
    kind: str | None = None,
    label: str | None = None,
    test_path: str | os.PathLike | None = None,
    extra: tuple[str, ...] = (),
) -> tuple[Dataset, Dataset | None]:
    """(train, test or None) from `path` (and `test_path`, read the same way and encoded alike).
    `extra`: class names (as the files spell them) beyond those in `path`, which the test set may hold."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"--data {path} does not exist")
    kind = kind or infer_kind(path)
    if kind not in KINDS:
        raise UsageError(f"unknown --data-kind {kind!r}; choose from {', '.join(KINDS)}")
    test = Path(test_path) if test_path else None
    if test is not None and not test.exists():
        raise UsageError(f"--test-data {test} does not exist")
    if kind in ("csv", "parquet"):
        read = read_csv if kind == "csv" else read_parquet
        table = read(path)
        encoding = TableEncoding.fit(table, label, path)
        encoding = replace(encoding, classes=encoding.classes + tuple(c for c in extra if c not in encoding.classes))
        train = encoding.encode(table, path)
        return train, (encoding.encode(read(test), test) if test else None)
    load = load_npz if kind == "npz" else load_image_folder
    train = load(path)
    train = Dataset(train.x, train.y, train.classes + tuple(c for c in extra if c not in train.classes), train.features)
    return train, (align_classes(load(test, min_classes=1), train, test) if test else None)


def holdout(data: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """(rest, held out): a seeded share of each class held out as a test set."""
    if not 0.0 < fraction < 1.0:
        raise UsageError(f"the held-out test share must be in (0, 1), got {fraction}")
    rng = np.random.default_rng([seed, 3])
    held = []
    for c in range(len(data.classes)):
        idx = rng.permutation(np.flatnonzero(data.y == c))
        held.append(idx[: int(round(fraction * len(idx)))])
    test = np.sort(np.concatenate(held))
    rest = np.setdiff1d(np.arange(len(data)), test)
    if len(test) == 0 or len(rest) == 0:
        raise UsageError(f"{len(data)} examples are too few to hold out a test set; pass --test-data")
    return data.subset(rest), data.subset(test)


def align_classes(test: Dataset, train: Dataset, path: Path) -> Dataset:
    """The test set with labels re-indexed into the training set's class names."""
    unknown = sorted(set(test.classes[c] for c in np.unique(test.y)) - set(train.classes))
    if unknown:
        raise UsageError(f"--test-data {path}: class(es) {', '.join(unknown)} not in the training data")
    if test.tabular and test.features != train.features:
        raise UsageError(f"--test-data {path}: columns differ from the training data's")
    if not test.tabular and test.x.shape[1:] != train.x.shape[1:]:
        raise UsageError(f"--test-data {path}: images are {test.x.shape[1:]}, training images {train.x.shape[1:]}")
    lookup = {name: i for i, name in enumerate(train.classes)}
    mapping = np.array([lookup.get(name, -1) for name in test.classes], dtype=np.int64)
    return Dataset(test.x, mapping[test.y], train.classes, test.features)


def parse_class_map(text: str | None) -> dict[str, str]:
    """--class-map 'M=malignant,B=benign': this peer's spelling of a class -> the name peers share."""
    out: dict[str, str] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        mine, sep, shared_name = item.partition("=")
        mine, shared_name = mine.strip(), shared_name.strip()
        if not sep or not mine or not shared_name:
            raise UsageError(f"bad --class-map entry {item.strip()!r}; write MINE=SHARED,MINE=SHARED,...")
        if mine in out:
            raise UsageError(f"--class-map maps class {mine!r} twice")
        out[mine] = shared_name
    return out


def class_order(names: set[str]) -> tuple[str, ...]:
    """Class names in a fixed order: by number when all are numbers, else alphabetically."""
    nums = [_number(n) for n in names]
    if all(v is not None for v in nums):
        return tuple(n for _, n in sorted(zip(nums, names)))
    return tuple(sorted(names))


def name_classes(
    data: Dataset, mapping: dict[str, str], extra: tuple[str, ...], where: str, check: bool = True
) -> Dataset:
    """`data` with its classes renamed by `mapping` (two spellings may become one class), plus the
    `extra` class names it has no examples of, in class_order. `check`: a mapped name must be a class."""
    if check:
        unknown = [m for m in mapping if m not in data.classes]
        if unknown:
            raise UsageError(
                f"--class-map names class(es) {', '.join(repr(u) for u in unknown)}, which {where} "
                f"does not have (its classes: {', '.join(data.classes)})"
            )
    if not mapping and not extra:
        return data
    renamed = [mapping.get(c, c) for c in data.classes]
    classes = class_order(set(renamed) | set(extra))
    lookup = {name: i for i, name in enumerate(classes)}
    index = np.array([lookup[n] for n in renamed], dtype=np.int64)
    return Dataset(data.x, index[data.y] if len(data.y) else data.y, classes, data.features)


# -- tables -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Table:
    """Raw columns by name, in file order; a cell is a string (CSV) or a number/string/None (Parquet)."""

    columns: dict[str, list[Any]]

    @property
    def rows(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0


def read_csv(path: Path) -> Table:
    """A CSV file (comma, semicolon or tab separated) with a header row."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from exc
    if not text.strip():
        raise UsageError(f"{path} is empty")
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    rows = [r for r in csv.reader(text.splitlines(), dialect) if r and any(c.strip() for c in r)]
    header = [h.strip() for h in rows[0]]
    _check_header(header, path)
    if len(rows) < 2:
        raise UsageError(f"{path} has a header but no rows")
    for n, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise UsageError(f"{path}: row {n} has {len(row)} fields, the header {len(header)}")
    return Table({h: [r[i].strip() for r in rows[1:]] for i, h in enumerate(header)})


def read_parquet(path: Path) -> Table:
    """A Parquet file (needs pyarrow)."""
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise UsageError(f"reading Parquet ({path}) needs pyarrow: pip install pyarrow") from exc
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise UsageError(f"cannot read Parquet file {path}: {str(exc).splitlines()[0] if str(exc) else exc}") from exc
    header = [str(n) for n in table.column_names]
    _check_header(header, path)
    if table.num_rows == 0:
        raise UsageError(f"{path} has no rows")
    return Table({h: table.column(i).to_pylist() for i, h in enumerate(header)})


def _check_header(header: list[str], path: Path) -> None:
    if not header or not any(header):
        raise UsageError(f"{path} has no header row")
    if any(not h for h in header):
        raise UsageError(f"{path}: column {header.index('') + 1} has no name")
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise UsageError(f"{path}: duplicate column name(s) {', '.join(dupes)}")


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip().lower() in MISSING
    return isinstance(value, float) and math.isnan(value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _label_name(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


@dataclass(frozen=True)
class TableEncoding:
    """How a table becomes a Dataset, fitted on the training file: label, column kinds, categories."""

    label: str
    numeric: tuple[str, ...]
    categories: dict[str, tuple[str, ...]]  # categorical column -> its values (one-hot order)
    order: tuple[str, ...]  # feature columns in file order
    classes: tuple[str, ...]

    @classmethod
    def fit(cls, table: Table, label: str | None, path: Path) -> TableEncoding:
        names = list(table.columns)
        if not label:
            raise UsageError(f"{path} is a table: pass --label COLUMN (columns: {', '.join(names)})")
        if label not in table.columns:
            raise UsageError(f"{path} has no label column {label!r} (columns: {', '.join(names)})")
        values = table.columns[label]
        for n, v in enumerate(values):
            if _is_missing(v):
                raise UsageError(f"{path}: label column {label!r} has a missing value (NaN or empty) in row {n + 1}")
        seen = sorted({_label_name(v) for v in values})
        if len(seen) < 2:
            raise UsageError(f"{path}: label column {label!r} has only one class ({seen[0]!r}); need two or more")
        nums = [_number(s) for s in seen]
        classes = tuple(s for _, s in sorted(zip(nums, seen))) if all(v is not None for v in nums) else tuple(seen)
        order = tuple(n for n in names if n != label)
        if not order:
            raise UsageError(f"{path} has no feature columns besides the label {label!r}")
        numeric, categories = [], {}
        for name in order:
            col = table.columns[name]
            _refuse_missing(col, name, path)
            parsed = [_number(v) for v in col]
            bad = [i for i, v in enumerate(parsed) if v is None]
            if not bad:
                numeric.append(name)
            elif len(bad) <= len(col) // 2:
                i = bad[0]
                raise UsageError(f"{path}: numeric column {name!r} holds non-numeric value {col[i]!r} in row {i + 1}")
            else:
                categories[name] = tuple(sorted({str(v).strip() for v in col}))
        return cls(label, tuple(numeric), categories, order, classes)

    @property
    def features(self) -> tuple[str, ...]:
        out: list[str] = []
        for name in self.order:
            out += [f"{name}={v}" for v in self.categories[name]] if name in self.categories else [name]
        return tuple(out)

    def encode(self, table: Table, path: Path) -> Dataset:
        missing = [n for n in (self.label, *self.order) if n not in table.columns]
        if missing:
            raise UsageError(f"{path} lacks column(s) {', '.join(missing)}")
        parts = []
        for name in self.order:
            col = table.columns[name]
            _refuse_missing(col, name, path)
            if name in self.categories:
                cats = {v: i for i, v in enumerate(self.categories[name])}
                onehot = np.zeros((len(col), len(cats)), dtype=np.float32)
                for r, v in enumerate(col):
                    k = cats.get(str(v).strip())
                    if k is not None:  # a value unseen in training gets all zeros
                        onehot[r, k] = 1.0
                parts.append(onehot)
                continue
            vals = np.empty(len(col), dtype=np.float64)
            for r, v in enumerate(col):
                num = _number(v)
                if num is None:
                    raise UsageError(f"{path}: numeric column {name!r} holds non-numeric value {v!r} in row {r + 1}")
                if not math.isfinite(num):
                    raise UsageError(f"{path}: column {name!r} holds {v!r} in row {r + 1}; values must be finite")
                vals[r] = num
            if np.abs(vals).max() > np.finfo(np.float32).max:
                raise UsageError(f"{path}: column {name!r} holds values too large for float32")
            parts.append(vals.astype(np.float32)[:, None])
        lookup = {c: i for i, c in enumerate(self.classes)}
        labels = [_label_name(v) for v in table.columns[self.label]]
        for r, (v, name) in enumerate(zip(table.columns[self.label], labels)):
            if _is_missing(v):
                raise UsageError(
                    f"{path}: label column {self.label!r} has a missing value (NaN or empty) in row {r + 1}"
                )
            if name not in lookup:
                raise UsageError(f"{path}: label {name!r} in row {r + 1} is not a class of the training data")
        y = np.array([lookup[n] for n in labels], dtype=np.int64)
        return Dataset(np.ascontiguousarray(np.concatenate(parts, axis=1)), y, self.classes, self.features)


def _refuse_missing(col: list[Any], name: str, path: Path) -> None:
    for r, v in enumerate(col):
        if _is_missing(v):
            raise UsageError(f"{path}: column {name!r} has a missing value (NaN or empty) in row {r + 1}")


# -- arrays -------------------------------------------------------------------------------------


def load_npz(path: Path, min_classes: int = 2) -> Dataset:
    """An .npz with `x` and `y`; optional `features` (column names of a 2-d x) and `classes`.

    A 2-d x is a table (float, its own units); a 3-d or 4-d x is images, uint8 or floats in [0, 1].
    Integer labels index `classes` when given; otherwise every label value is a class name.
    """
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as exc:  # zipfile, ValueError (pickled object arrays), OSError
        raise UsageError(f"cannot read {path} as .npz: {exc}") from exc
    for key in ("x", "y"):
        if key not in arrays:
            raise UsageError(f"{path} has no array {key!r} (it holds {', '.join(sorted(arrays)) or 'nothing'})")
    x, y = arrays["x"], arrays["y"]
    if len(x) == 0:
        raise UsageError(f"{path}: x is empty")
    if y.ndim != 1 or len(y) != len(x):
        raise UsageError(f"{path}: y has shape {y.shape}, expected ({len(x)},)")
    if x.dtype.kind not in "uif" and x.dtype != np.bool_:
        raise UsageError(f"{path}: x has dtype {x.dtype}, expected numbers")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        bad = np.argwhere(~np.isfinite(x))[0]
        raise UsageError(f"{path}: x holds NaN or infinite values (first at index {tuple(int(i) for i in bad)})")
    classes, labels = _npz_labels(arrays, y, path, min_classes)
    if x.ndim == 2:
        features = (
            tuple(str(f) for f in arrays["features"])
            if "features" in arrays
            else tuple(f"x{i}" for i in range(x.shape[1]))
        )
        if len(features) != x.shape[1] or len(set(features)) != len(features):
            raise UsageError(f"{path}: features must be {x.shape[1]} distinct names, got {len(features)}")
        return Dataset(x.astype(np.float32), labels, classes, features)
    if x.ndim not in (3, 4):
        raise UsageError(f"{path}: x has shape {x.shape}; expected (N, D) features or (N, [C,] H, W) images")
    if x.dtype != np.uint8:
        if x.min() < 0 or x.max() > 1:
            raise UsageError(f"{path}: image x must be uint8 or floats in [0, 1], found [{x.min()}, {x.max()}]")
        x = np.round(x.astype(np.float64) * 255)
    return Dataset(x.astype(np.uint8), labels, classes)


def _npz_labels(arrays: dict, y: np.ndarray, path: Path, min_classes: int) -> tuple[tuple[str, ...], np.ndarray]:
    if "classes" in arrays:
        classes = tuple(str(c) for c in arrays["classes"])
        if y.dtype.kind not in "iu":
            raise UsageError(f"{path}: with 'classes' given, y must hold integer indices")
        if len(set(classes)) != len(classes):
            raise UsageError(f"{path}: class names must be distinct")
        if y.min() < 0 or y.max() >= len(classes):
            raise UsageError(f"{path}: y holds indices outside 0..{len(classes) - 1}")
        present = np.unique(y)
    else:
        if y.dtype.kind == "f" and not np.isfinite(y).all():
            raise UsageError(f"{path}: y holds NaN or infinite values")
        values, y = np.unique(y, return_inverse=True)
        classes = tuple(_label_name(v.item()) for v in values)
        present = values
    if len(present) < min_classes:
        raise UsageError(f"{path}: y has only one class; need two or more")
    return classes, y.astype(np.int64)


def load_image_folder(path: Path, min_classes: int = 2) -> Dataset:
    """One sub-folder per class, named after it, holding images; all the same size, read as greyscale."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_dir():
        raise UsageError(f"{path} is not a directory of class sub-folders")
    folders = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    files = {
        d.name: sorted(f for f in d.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES) for d in folders
    }
    if not any(files.values()):
        raise UsageError(
            f"{path} holds no images (expected one sub-folder per class with image files "
            f"{', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    empty = [name for name, fs in files.items() if not fs]
    if empty:
        raise UsageError(f"{path}: class folder(s) {', '.join(empty)} hold no images")
    if len(files) < min_classes:
        raise UsageError(f"{path} has only one class folder ({folders[0].name}); need two or more")
    images, labels, size, first = [], [], None, None
    for c, fs in enumerate(files.values()):
        for f in fs:
            try:
                with Image.open(f) as img:
                    grey = np.asarray(img.convert("L"), dtype=np.uint8)
            except (OSError, UnidentifiedImageError, ValueError) as exc:
                raise UsageError(f"cannot read image {f}: {exc}") from exc
            if size is None:
                size, first = grey.shape, f
            elif grey.shape != size:
                raise UsageError(
                    f"image {f} is {grey.shape[1]}x{grey.shape[0]} but {first} is "
                    f"{size[1]}x{size[0]}; all images must have one size"
                )
            images.append(grey)
            labels.append(c)
    return Dataset(np.stack(images), np.asarray(labels, dtype=np.int64), tuple(files))
