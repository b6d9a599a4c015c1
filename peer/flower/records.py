"""ModelBlob, ExampleBatch and peer metrics as Flower records, and back; never pickle.

Arrays travel as Flower `Array`s (numpy's own format, read with allow_pickle=False); everything
else as `ConfigRecord` scalars and lists. Decoding checks types and shapes and raises
InvalidPayload with the record's name, so a malformed message fails with a clear error. The size
caps are the gRPC path's (`Limits`): a blob or batch over them raises PayloadTooLarge before its
arrays are read.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from peer.core.blob import EXAMPLE_LEVELS, InvalidPayload, Limits, ModelBlob, PayloadTooLarge, _check_array

MODEL = "model"  # key prefixes inside a RecordDict
BATCH = "batch"
REPORT = "report"


def _arrays(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def _numpy(record: Any, what: str, cap: int, max_arrays: int) -> dict[str, np.ndarray]:
    """The record's arrays, refused before reading if there are more than `max_arrays` or their
    serialized bytes exceed `cap`."""
    if not isinstance(record, ArrayRecord):
        raise InvalidPayload(f"{what}: expected an ArrayRecord, got {type(record).__name__}")
    if len(record) > max_arrays:
        raise PayloadTooLarge(f"{what}: {len(record)} arrays, over the cap of {max_arrays}")
    total = 0
    for name, arr in record.items():
        if not isinstance(arr, Array) or not isinstance(arr.data, bytes):
            raise InvalidPayload(f"{what}: array {name!r} is not a Flower Array")
        total += len(arr.data)
        if total > cap:
            raise PayloadTooLarge(f"{what}: arrays of over {total} bytes exceed the cap of {cap} bytes")
    try:
        out = {k: a.numpy() for k, a in record.items()}
    except Exception as exc:  # noqa: BLE001  (numpy's reader raises many kinds on forged bytes)
        raise InvalidPayload(f"{what}: unreadable array: {type(exc).__name__}: {exc}") from None
    for name, value in out.items():
        _check_array(f"{what}/{name}", value)
        if value.nbytes > cap:
            raise PayloadTooLarge(f"{what}: array {name!r} of {value.nbytes} bytes exceeds the cap of {cap} bytes")
    return out


def _config(record: Any, what: str) -> ConfigRecord:
    if not isinstance(record, ConfigRecord):
        raise InvalidPayload(f"{what}: expected a ConfigRecord, got {type(record).__name__}")
    return record


def _get(cfg: ConfigRecord, key: str, kind: type | tuple, what: str) -> Any:
    if key not in cfg:
        raise InvalidPayload(f"{what}: missing field {key!r}")
    value = cfg[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidPayload(f"{what}: field {key!r} is {type(value).__name__}")
    return value


def put_arrays(content: RecordDict, name: str, arrays: dict[str, np.ndarray]) -> None:
    """Plain named arrays under `name` (e.g. a peer's own state between messages)."""
    content[name] = _arrays(arrays)


def get_arrays(content: RecordDict, name: str, limits: Limits = Limits()) -> dict[str, np.ndarray]:
    """The arrays put_arrays stored under `name` ({} when there are none)."""
    if name not in content:
        return {}
    return _numpy(content[name], name, limits.max_blob_bytes, limits.max_arrays)


# -- ModelBlob ---------------------------------------------------------------------------------
def put_blob(content: RecordDict, name: str, blob: ModelBlob) -> None:
    """Store `blob` under `model.<name>` (arrays) and `model.<name>.spec` (JSON spec)."""
    content[f"{MODEL}.{name}"] = _arrays(blob.arrays)
    content[f"{MODEL}.{name}.spec"] = ConfigRecord({"spec": blob.spec_json()})


def get_blob(content: RecordDict, name: str, limits: Limits = Limits()) -> ModelBlob:
    what = f"model {name!r}"
    if f"{MODEL}.{name}" not in content or f"{MODEL}.{name}.spec" not in content:
        raise InvalidPayload(f"{what}: not in the message")
    text = _get(_config(content[f"{MODEL}.{name}.spec"], what), "spec", str, what)
    if len(text) > limits.max_spec_bytes:
        raise PayloadTooLarge(f"{what}: spec of {len(text)} characters over the cap of {limits.max_spec_bytes}")
    arrays = _numpy(content[f"{MODEL}.{name}"], what, limits.max_blob_bytes, limits.max_arrays)
    try:
        spec = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise InvalidPayload(f"{what}: spec is not JSON: {type(exc).__name__}: {exc}") from None
    if not isinstance(spec, dict):
        raise InvalidPayload(f"{what}: spec is not a JSON object")
    blob = ModelBlob(spec, arrays)
    blob.validate()
    return blob


def blob_names(content: RecordDict) -> list[str]:
    return sorted(
        k[len(MODEL) + 1 : -len(".spec")] for k in content if k.startswith(MODEL + ".") and k.endswith(".spec")
    )


# -- ExampleBatch ------------------------------------------------------------------------------
def batch_key(batch) -> str:
    return f"{BATCH}.{batch.receiver}.{batch.sender}.{batch.round}.{batch.seq}"


def put_batch(content: RecordDict, batch) -> str:
    key = batch_key(batch)
    arrays = {"x": batch.x, "y": np.asarray(batch.y, np.int64), "distance": np.asarray(batch.distance, np.float32)}
    if batch.proba is not None:
        arrays["proba"] = batch.proba
    content[key] = _arrays(arrays)
    content[key + ".meta"] = ConfigRecord(
        {
            "sender": batch.sender,
            "receiver": batch.receiver,
            "round": int(batch.round),
            "seq": int(batch.seq),
            "classes": list(batch.classes),
            "features": list(batch.features),
            "levels": int(batch.levels),
        }
    )
    return key


def batch_keys(content: RecordDict, receiver: str | None = None) -> list[str]:
    prefix = f"{BATCH}." if receiver is None else f"{BATCH}.{receiver}."
    return sorted(k[: -len(".meta")] for k in content if k.startswith(prefix) and k.endswith(".meta"))


def get_batch(content: RecordDict, key: str, limits: Limits = Limits()):
    """The batch stored under `key`, checked as the gRPC path checks a pushed one (names, shapes,
    caps, label range, finite values); whether it fits its receiver is `ExampleBatch.validate`."""
    from peer.core.blob import ExampleBatch, check_proba

    what = f"example batch {key!r}"
    if key not in content or key + ".meta" not in content:
        raise InvalidPayload(f"{what}: arrays or metadata missing")
    meta = _config(content[key + ".meta"], what)
    classes = _get(meta, "classes", list, what)
    features = _get(meta, "features", list, what)
    if not all(isinstance(c, str) for c in classes + features):
        raise InvalidPayload(f"{what}: class and feature names must be strings")
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise InvalidPayload(f"{what}: must name two or more distinct classes")
    sender, receiver = _get(meta, "sender", str, what), _get(meta, "receiver", str, what)
    round_, seq = _get(meta, "round", int, what), _get(meta, "seq", int, what)
    if not sender or not receiver:
        raise InvalidPayload(f"{what}: sender and receiver must be named")
    if round_ < 0 or seq < 0:
        raise InvalidPayload(f"{what}: round and seq must be >= 0")
    arrays = _numpy(content[key], what, limits.max_batch_bytes, 4)
    if set(arrays) - {"proba"} != {"x", "y", "distance"}:
        raise InvalidPayload(f"{what}: arrays {sorted(arrays)}, expected distance, x, y and optionally proba")
    x, y, distance, proba = arrays["x"], arrays["y"], arrays["distance"], arrays.get("proba")
    n = len(y) if y.ndim == 1 else -1
    if n < 0 or x.ndim < 2 or x.shape[0] != n or distance.shape != (n,):
        raise InvalidPayload(
            f"{what}: shapes do not fit, x {list(x.shape)}, y {list(y.shape)}, distance {list(distance.shape)}"
        )
    if n > limits.max_batch_examples:
        raise PayloadTooLarge(f"{what}: {n} examples, over the cap of {limits.max_batch_examples}")
    if y.dtype.kind not in "iu":
        raise InvalidPayload(f"{what}: labels are {y.dtype}, expected integers")
    if n and (y.min() < 0 or y.max() >= len(classes)):
        raise InvalidPayload(f"{what}: label index out of range 0..{len(classes) - 1}")
    levels = _get(meta, "levels", int, what) if "levels" in meta else 255
    if levels not in EXAMPLE_LEVELS.values() or (levels != 255 and x.dtype != np.uint8):
        raise InvalidPayload(f"{what}: {levels} gray levels, expected 255, or 15 with uint8 inputs")
    if levels != 255 and n and int(x.max()) > levels:
        raise InvalidPayload(f"{what}: input values above its {levels} gray levels")
    if proba is not None:
        check_proba(proba, n, len(classes), what)
    return ExampleBatch(sender, receiver, round_, seq, x, y, tuple(classes), distance, tuple(features), levels, proba)


def move_batches(src: RecordDict, dst: RecordDict, keys: list[str]) -> None:
    """Copy the records of batches `keys` from one RecordDict to another (no decoding)."""
    for key in keys:
        dst[key] = src[key]
        dst[key + ".meta"] = src[key + ".meta"]


# -- round records ----------------------------------------------------------------------------
RECORD = "record"
MAX_RECORD_CHARS = 64 << 20


def put_record(content: RecordDict, record) -> None:
    """A peer.round.PeerRound as JSON text in a ConfigRecord (the schema every runtime reports)."""
    content[RECORD] = ConfigRecord({"json": json.dumps(record.to_dict())})


def get_record(content: RecordDict, what: str):
    """The PeerRound a reply carries; InvalidPayload naming `what` if it is missing or malformed."""
    from peer.round import PeerRound

    if RECORD not in content:
        raise InvalidPayload(f"{what}: no round record")
    text = _get(_config(content[RECORD], what), "json", str, what)
    if len(text) > MAX_RECORD_CHARS:
        raise InvalidPayload(f"{what}: round record of {len(text)} characters is over the cap")
    try:
        return PeerRound.from_dict(json.loads(text))
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise InvalidPayload(f"{what}: malformed round record: {type(exc).__name__}: {exc}") from exc
