"""ModelBlob, ExampleBatch and peer metrics as Flower records, and back; never pickle.

Arrays travel as Flower `Array`s (numpy's own format, read with allow_pickle=False); everything
else as `ConfigRecord` scalars and lists. Decoding checks types and shapes and raises
InvalidPayload with the record's name, so a malformed message fails with a clear error.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from peer.core.blob import InvalidPayload, ModelBlob, _check_array

MODEL = "model"        # key prefixes inside a RecordDict
BATCH = "batch"
REPORT = "report"


def _arrays(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def _numpy(record: Any, what: str) -> dict[str, np.ndarray]:
    if not isinstance(record, ArrayRecord):
        raise InvalidPayload(f"{what}: expected an ArrayRecord, got {type(record).__name__}")
    try:
        out = {k: a.numpy() for k, a in record.items()}
    except (TypeError, ValueError) as exc:
        raise InvalidPayload(f"{what}: unreadable array: {exc}") from exc
    for name, arr in out.items():
        _check_array(f"{what}/{name}", arr)
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


# -- ModelBlob ---------------------------------------------------------------------------------
def put_blob(content: RecordDict, name: str, blob: ModelBlob) -> None:
    """Store `blob` under `model.<name>` (arrays) and `model.<name>.spec` (JSON spec)."""
    content[f"{MODEL}.{name}"] = _arrays(blob.arrays)
    content[f"{MODEL}.{name}.spec"] = ConfigRecord({"spec": blob.spec_json()})


def get_blob(content: RecordDict, name: str) -> ModelBlob:
    what = f"model {name!r}"
    if f"{MODEL}.{name}" not in content or f"{MODEL}.{name}.spec" not in content:
        raise InvalidPayload(f"{what}: not in the message")
    arrays = _numpy(content[f"{MODEL}.{name}"], what)
    try:
        spec = json.loads(_get(_config(content[f"{MODEL}.{name}.spec"], what), "spec", str, what))
    except json.JSONDecodeError as exc:
        raise InvalidPayload(f"{what}: spec is not JSON: {exc}") from exc
    blob = ModelBlob(spec, arrays)
    blob.validate()
    return blob


def blob_names(content: RecordDict) -> list[str]:
    return sorted(k[len(MODEL) + 1:-len(".spec")] for k in content if k.startswith(MODEL + ".") and k.endswith(".spec"))


# -- ExampleBatch ------------------------------------------------------------------------------
def batch_key(batch) -> str:
    return f"{BATCH}.{batch.receiver}.{batch.sender}.{batch.round}.{batch.seq}"


def put_batch(content: RecordDict, batch) -> str:
    key = batch_key(batch)
    content[key] = _arrays({"x": batch.x, "y": np.asarray(batch.y, np.int64),
                            "distance": np.asarray(batch.distance, np.float32)})
    content[key + ".meta"] = ConfigRecord({
        "sender": batch.sender, "receiver": batch.receiver, "round": int(batch.round), "seq": int(batch.seq),
        "classes": list(batch.classes), "features": list(batch.features)})
    return key


def batch_keys(content: RecordDict, receiver: str | None = None) -> list[str]:
    prefix = f"{BATCH}." if receiver is None else f"{BATCH}.{receiver}."
    return sorted(k[:-len(".meta")] for k in content if k.startswith(prefix) and k.endswith(".meta"))


def get_batch(content: RecordDict, key: str):
    from peer.core.blob import ExampleBatch

    what = f"example batch {key!r}"
    if key not in content:
        raise InvalidPayload(f"{what}: arrays missing")
    arrays = _numpy(content[key], what)
    if set(arrays) != {"x", "y", "distance"}:
        raise InvalidPayload(f"{what}: arrays {sorted(arrays)}, expected distance, x, y")
    meta = _config(content[key + ".meta"], what)
    classes = _get(meta, "classes", list, what)
    features = _get(meta, "features", list, what)
    if not all(isinstance(c, str) for c in classes + features):
        raise InvalidPayload(f"{what}: class and feature names must be strings")
    return ExampleBatch(_get(meta, "sender", str, what), _get(meta, "receiver", str, what),
                        _get(meta, "round", int, what), _get(meta, "seq", int, what),
                        arrays["x"], arrays["y"], tuple(classes), arrays["distance"], tuple(features))


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
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidPayload(f"{what}: malformed round record: {type(exc).__name__}: {exc}") from exc
