"""Compact model blobs for the wire: float32 weights as float16, or 8-bit with a scale per array.

A peer's own model stays float32; only the copy it publishes for teachers to evaluate is
compacted (`compact`), and a receiver turns it back into float32 before rebuilding the learner
(`expand`). Only float32 arrays are touched: a forest's float64 split thresholds and integer
node indices travel as they are, so its decisions do not move.

int8: each array a is sent as q = round((a - low) / scale) in uint8 with scale = (high - low) /
255, and `low`, `scale` in the spec's "quantized" map; the receiver reads low + q * scale.
"""

from __future__ import annotations

import math

import numpy as np

from peer.core.blob import InvalidPayload, ModelBlob

PRECISIONS = ("float32", "float16", "int8")


def compact(blob: ModelBlob, precision: str) -> ModelBlob:
    """`blob` with its float32 arrays in `precision` (float32: the blob itself)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown blob precision {precision!r}; choose from {', '.join(PRECISIONS)}")
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
    """A compacted blob back in float32 (a float32 blob unchanged); InvalidPayload when its
    precision, quantisation map or array dtypes do not agree."""
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
