"""Compact model blobs for the wire: float32 weights as float16, or 8-bit with a scale per array.

A peer's own model stays float32; only the copy it publishes for teachers to evaluate is
compacted (`compact`), and a receiver turns it back into float32 before rebuilding the learner
(`expand`). Only float32 arrays are touched: a forest's float64 split thresholds and integer
node indices travel as they are, so its decisions do not move.

int8: each array a is sent as q = round((a - low) / scale) in uint8 with scale = (high - low) /
255, and `low`, `scale` in the spec's "quantized" map; the receiver reads low + q * scale.

rank r (`factor`, before the precision): a float32 weight matrix W (2-d, m x n) larger than its
two factors is sent as A = U_r sqrt(S_r) (m x r) and B = sqrt(S_r) V_r (r x n), its best rank-r
approximation (truncated SVD), under the names "W@a" and "W@b" with W's shape in the spec's
"factored" map; the receiver multiplies them back. A teacher uses a student's model only to find
the instances the student gets wrong, which such an approximation barely moves (fmnist-10's CNN:
its 3136 x 128 layer holds 95% of the weights).
"""

from __future__ import annotations

import math

import numpy as np

from peer.core.blob import InvalidPayload, Limits, ModelBlob, PayloadTooLarge

PRECISIONS = ("float32", "float16", "int8")
FACTOR_A, FACTOR_B = "@a", "@b"  # suffixes of a factored matrix's two factors


def factor(blob: ModelBlob, rank: int) -> ModelBlob:
    """`blob` with each float32 matrix that its rank-`rank` factors make smaller sent as those
    factors (rank 0: the blob itself)."""
    if rank < 0:
        raise ValueError(f"blob rank must be >= 0, got {rank}")
    if rank == 0:
        return blob
    arrays: dict[str, np.ndarray] = {}
    factored: dict[str, list[int]] = {}
    for name, a in blob.arrays.items():
        if a.dtype != np.float32 or a.ndim != 2 or rank * (a.shape[0] + a.shape[1]) >= a.size:
            arrays[name] = a
            continue
        u, s, vt = np.linalg.svd(a.astype(np.float64), full_matrices=False)
        root = np.sqrt(s[:rank])
        arrays[name + FACTOR_A] = (u[:, :rank] * root).astype(np.float32)
        arrays[name + FACTOR_B] = (root[:, None] * vt[:rank]).astype(np.float32)
        factored[name] = [int(d) for d in a.shape]
    if not factored:
        return blob
    return ModelBlob({**blob.spec, "factored": factored}, arrays)


def unfactor(blob: ModelBlob) -> ModelBlob:
    """A factored blob (float32 factors) with each matrix multiplied back; InvalidPayload when the
    map and the factors do not agree."""
    factored = blob.spec.get("factored")
    if factored is None:
        return blob
    if not isinstance(factored, dict) or not factored:
        raise InvalidPayload("model blob factor map is malformed")
    arrays = dict(blob.arrays)
    for name, shape in factored.items():
        a, b = arrays.pop(name + FACTOR_A, None), arrays.pop(name + FACTOR_B, None)
        if (
            a is None
            or b is None
            or not isinstance(shape, list)
            or len(shape) != 2
            or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
            or a.ndim != 2
            or b.ndim != 2
            or a.shape[0] != shape[0]
            or b.shape[1] != shape[1]
            or a.shape[1] != b.shape[0]
            or a.shape[1] < 1
            or a.shape[1] * (shape[0] + shape[1]) >= shape[0] * shape[1]  # factors no smaller than the matrix
            or name in arrays
        ):
            raise InvalidPayload(f"model blob matrix {name!r}: its factors do not fit the shape {shape!r}")
        if shape[0] * shape[1] * 4 > Limits().max_blob_bytes:  # the product, before it is computed
            raise PayloadTooLarge(f"model blob matrix {name!r} of shape {shape} is over the cap of a blob's bytes")
        arrays[name] = (a.astype(np.float32) @ b.astype(np.float32)).astype(np.float32)
    if any(n.endswith((FACTOR_A, FACTOR_B)) for n in arrays):
        raise InvalidPayload("model blob holds factors its factor map does not name")
    return ModelBlob({k: v for k, v in blob.spec.items() if k != "factored"}, arrays)


def compact(blob: ModelBlob, precision: str, rank: int = 0) -> ModelBlob:
    """`blob` with its large matrices factored at `rank` (0: not factored) and its float32 arrays
    in `precision` (float32 and rank 0: the blob itself)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown blob precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    blob = factor(blob, rank)
    if precision == "float32":
        return blob
    arrays: dict[str, np.ndarray] = {}
    quantized: dict[str, list[float]] = {}
    for name, a in blob.arrays.items():
        if a.dtype != np.float32:
            arrays[name] = a
        elif precision == "float16":
            arrays[name] = np.clip(a, -65504, 65504).astype(np.float16)
        else:
            low, high = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
            scale = (high - low) / 255 if high > low else 1.0
            arrays[name] = np.round((a - low) / scale).clip(0, 255).astype(np.uint8)
            quantized[name] = [low, scale]
    spec = {**blob.spec, "precision": precision}
    if quantized:
        spec["quantized"] = quantized
    return ModelBlob(spec, arrays)


def expand(blob: ModelBlob) -> ModelBlob:
    """A compacted blob back in float32 with its factored matrices multiplied back (a float32,
    unfactored blob unchanged); InvalidPayload when its precision, quantisation map, factor map or
    array dtypes do not agree."""
    return unfactor(_dequantize(blob))


def _dequantize(blob: ModelBlob) -> ModelBlob:
    precision = blob.spec.get("precision", "float32")
    if precision not in PRECISIONS:
        raise InvalidPayload(f"model blob precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    quantized = blob.spec.get("quantized", {})
    if not isinstance(quantized, dict) or (quantized and precision != "int8"):
        raise InvalidPayload("model blob quantisation map is malformed or does not fit its precision")
    if precision == "float32":
        return blob
    arrays: dict[str, np.ndarray] = {}
    for name, a in blob.arrays.items():
        if name in quantized:
            pair = quantized[name]
            if (
                a.dtype != np.uint8
                or not isinstance(pair, list)
                or len(pair) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in pair)
                or pair[1] <= 0
            ):
                raise InvalidPayload(f"model blob array {name!r}: quantised values need uint8 and a positive scale")
            arrays[name] = (pair[0] + a.astype(np.float32) * np.float32(pair[1])).astype(np.float32)
        elif a.dtype == np.float16:
            arrays[name] = a.astype(np.float32)
        else:
            arrays[name] = a
    if set(quantized) - set(blob.arrays):
        raise InvalidPayload("model blob quantisation map names arrays it does not hold")
    spec = {k: v for k, v in blob.spec.items() if k not in ("precision", "quantized")}
    return ModelBlob(spec, arrays)
