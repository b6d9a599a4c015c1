"""ModelBlob and ExampleBatch to and from chunk streams, with explicit size caps.

A stream is one header (names, dtypes, shapes) followed by the arrays' raw bytes in chunks of
about 1 MiB. Decoding trusts nothing: a missing or repeated header, a truncated or overlong
stream, a dtype off the list, a shape that does not fit, NaN or infinite values and anything over
a cap each raise InvalidPayload (or PayloadTooLarge) naming the problem.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from peer.core.blob import (
    EXAMPLE_LEVELS,
    WIRE_DTYPES,
    ExampleBatch,
    InvalidPayload,
    Limits,
    ModelBlob,
    PayloadTooLarge,
    pack_nibbles,
    unpack_nibbles,
)
from protos.ckd.v1 import wire_pb2

CHUNK_BYTES = 1 << 20


class Malformed:
    """What a tolerant deserializer returns for bytes that do not parse as the expected message."""

    def __init__(self, kind: str, nbytes: int) -> None:
        self.kind, self.nbytes = kind, nbytes

    def problem(self, what: str) -> str:
        return f"{what}: malformed message, {self.nbytes} bytes that do not parse as {self.kind}"


def tolerant(message_class):
    """A request deserializer that yields Malformed instead of failing inside gRPC (status INTERNAL)."""

    def deserialize(raw: bytes):
        try:
            return message_class.FromString(raw)
        except Exception:  # noqa: BLE001  (protobuf's DecodeError and friends)
            return Malformed(message_class.__name__, len(raw))

    return deserialize


def _info(name: str, arr: np.ndarray) -> wire_pb2.ArrayInfo:
    return wire_pb2.ArrayInfo(name=name, dtype=arr.dtype.name, shape=list(arr.shape))


def _le(arr: np.ndarray) -> bytes:
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()


def _chunks(parts: Iterable[bytes], chunk: int) -> Iterator[bytes]:
    buf = bytearray()
    for raw in parts:
        view = memoryview(raw)
        while len(view):
            take = min(chunk - len(buf), len(view))
            buf += view[:take]
            view = view[take:]
            if len(buf) == chunk:
                yield bytes(buf)
                buf.clear()
    if buf:
        yield bytes(buf)


def encode_blob(blob: ModelBlob, peer: str, round: int, chunk: int = CHUNK_BYTES) -> Iterator[wire_pb2.ModelChunk]:
    names = list(blob.arrays)
    header = wire_pb2.BlobHeader(
        peer=peer, round=round, spec_json=blob.spec_json(), arrays=[_info(n, blob.arrays[n]) for n in names]
    )
    yield wire_pb2.ModelChunk(header=header)
    for data in _chunks((_le(blob.arrays[n]) for n in names), chunk):
        yield wire_pb2.ModelChunk(data=data)


def encode_batch(batch: ExampleBatch, chunk: int = CHUNK_BYTES) -> Iterator[wire_pb2.ExampleChunk]:
    header = wire_pb2.BatchHeader(
        sender=batch.sender,
        receiver=batch.receiver,
        round=batch.round,
        seq=batch.seq,
        classes=list(batch.classes),
        features=list(batch.features),
        x=_info("x", batch.x),
        y=_info("y", batch.y),
        distance=_info("distance", batch.distance),
        levels=batch.levels,
    )
    if batch.proba is not None:
        header.proba.CopyFrom(_info("proba", batch.proba))
    x = pack_nibbles(batch.x) if _packed(batch.levels) else batch.x
    arrays = (x, batch.y, batch.distance) + (() if batch.proba is None else (batch.proba,))
    yield wire_pb2.ExampleChunk(header=header)
    for data in _chunks((_le(a) for a in arrays), chunk):
        yield wire_pb2.ExampleChunk(data=data)


def _packed(levels: int) -> bool:
    """Whether images of `levels` gray levels travel two pixels to a byte."""
    return levels < 16


def _layout(infos: list[wire_pb2.ArrayInfo], cap: int, what: str) -> list[tuple[str, np.dtype, tuple[int, ...], int]]:
    """(name, dtype, shape, nbytes) of each array, checked against the dtype list and `cap`."""
    out, total = [], 0
    for info in infos:
        if info.dtype not in WIRE_DTYPES:
            raise InvalidPayload(
                f"{what}: array {info.name!r} has dtype {info.dtype!r}, not one of {sorted(WIRE_DTYPES)}"
            )
        shape = tuple(int(d) for d in info.shape)
        if any(d < 0 for d in shape):
            raise InvalidPayload(f"{what}: array {info.name!r} has a negative dimension in shape {shape}")
        dtype = np.dtype(info.dtype).newbyteorder("<")
        count = 1
        for d in shape:
            count *= d  # Python ints: no overflow, however large the claimed shape
        nbytes = count * dtype.itemsize
        total += nbytes
        if total > cap:
            raise PayloadTooLarge(f"{what}: arrays of {total} bytes exceed the cap of {cap} bytes")
        out.append((info.name, dtype, shape, nbytes))
    return out


def _collect(chunks: Iterator, expected: int, limits: Limits, what: str) -> bytearray:
    buf = bytearray()
    for msg in chunks:
        if isinstance(msg, Malformed):
            raise InvalidPayload(msg.problem(what))
        part = msg.WhichOneof("part")
        if part != "data" or not msg.data:
            raise InvalidPayload(f"{what}: malformed stream, a second header or an empty chunk after the header")
        if len(msg.data) > limits.max_message_bytes:
            raise PayloadTooLarge(f"{what}: chunk of {len(msg.data)} bytes over the cap of {limits.max_message_bytes}")
        if len(buf) + len(msg.data) > expected:
            raise InvalidPayload(f"{what}: malformed stream, more bytes than its header's arrays hold ({expected})")
        buf += msg.data
    if len(buf) != expected:
        raise InvalidPayload(f"{what}: truncated stream, {len(buf)} of {expected} bytes")
    return buf


def _arrays(buf: bytearray, layout) -> dict[str, np.ndarray]:
    out, at = {}, 0
    for name, dtype, shape, nbytes in layout:
        arr = np.frombuffer(buf, dtype=dtype, count=nbytes // dtype.itemsize if dtype.itemsize else 0, offset=at)
        out[name] = arr.reshape(shape).astype(dtype.newbyteorder("="), copy=False)
        at += nbytes
    return out


def _first(chunks: Iterator, part: str, what: str):
    try:
        msg = next(chunks)
    except StopIteration:
        raise InvalidPayload(f"{what}: empty stream, no header") from None
    if isinstance(msg, Malformed):
        raise InvalidPayload(msg.problem(what))
    if msg.WhichOneof("part") != part:
        raise InvalidPayload(f"{what}: malformed stream, it does not start with a header")
    return getattr(msg, part)


def _blob_header(chunks: Iterator[wire_pb2.ModelChunk], limits: Limits) -> tuple[wire_pb2.BlobHeader, dict, str]:
    header = _first(chunks, "header", "model blob")
    what = f"model blob of {header.peer!r} round {header.round}"
    if len(header.arrays) > limits.max_arrays:
        raise PayloadTooLarge(f"{what}: {len(header.arrays)} arrays, over the cap of {limits.max_arrays}")
    if len(header.spec_json) > limits.max_spec_bytes:
        raise PayloadTooLarge(f"{what}: spec of {len(header.spec_json)} bytes over the cap of {limits.max_spec_bytes}")
    names = [a.name for a in header.arrays]
    if len(set(names)) != len(names):
        raise InvalidPayload(f"{what}: array names repeat")
    try:
        spec = json.loads(header.spec_json)
    except ValueError as exc:
        raise InvalidPayload(f"{what}: spec is not JSON ({exc})") from None
    if not isinstance(spec, dict):
        raise InvalidPayload(f"{what}: spec is not a JSON object")
    return header, spec, what


def decode_blob_header(
    chunks: Iterable[wire_pb2.ModelChunk], limits: Limits = Limits()
) -> tuple[dict[str, Any], str, int]:
    """(spec, publishing peer, round) from a header-only model stream (GetModel with header_only);
    a stream that carries weights after its header is refused."""
    chunks = iter(chunks)
    header, spec, what = _blob_header(chunks, limits)
    if next(chunks, None) is not None:
        raise InvalidPayload(f"{what}: header-only reply carries data after its header")
    return spec, header.peer, int(header.round)


def decode_blob(chunks: Iterable[wire_pb2.ModelChunk], limits: Limits = Limits()) -> tuple[ModelBlob, str, int]:
    """(blob, publishing peer, round) from a model stream; validated, or InvalidPayload."""
    chunks = iter(chunks)
    header, spec, what = _blob_header(chunks, limits)
    layout = _layout(list(header.arrays), limits.max_blob_bytes, what)
    buf = _collect(chunks, sum(item[3] for item in layout), limits, what)
    blob = ModelBlob(spec, _arrays(buf, layout))
    blob.validate()
    return blob, header.peer, int(header.round)


def decode_batch(chunks: Iterable[wire_pb2.ExampleChunk], limits: Limits = Limits()) -> ExampleBatch:
    """An ExampleBatch from a stream, its arrays checked for dtype, shape, size and finite values.

    Whether it fits the receiver (input shape, class names, label range) is `ExampleBatch.validate`.
    """
    chunks = iter(chunks)
    h = _first(chunks, "header", "example batch")
    what = f"example batch ({h.sender!r}, {h.round}, {h.seq})"
    if not h.sender or not h.receiver:
        raise InvalidPayload(f"{what}: sender and receiver must be named")
    if h.round < 0 or h.seq < 0:
        raise InvalidPayload(f"{what}: round and seq must be >= 0")
    if not h.HasField("x") or not h.HasField("y") or not h.HasField("distance"):
        raise InvalidPayload(f"{what}: header lacks the x, y or distance array")
    if len(h.classes) < 2 or len(set(h.classes)) != len(h.classes):
        raise InvalidPayload(f"{what}: must name two or more distinct classes")
    n = int(h.y.shape[0]) if len(h.y.shape) == 1 else -1
    if n < 0 or len(h.x.shape) < 2 or h.x.shape[0] != n or list(h.distance.shape) != [n]:
        raise InvalidPayload(
            f"{what}: shapes do not fit, x {list(h.x.shape)}, y {list(h.y.shape)}, distance {list(h.distance.shape)}"
        )
    if n > limits.max_batch_examples:
        raise PayloadTooLarge(f"{what}: {n} examples, over the cap of {limits.max_batch_examples}")
    levels = int(h.levels) or 255
    if levels not in EXAMPLE_LEVELS.values() or (levels != 255 and h.x.dtype != "uint8"):
        raise InvalidPayload(f"{what}: {levels} gray levels, expected 255, or 15 with uint8 inputs")
    x_info = h.x
    if _packed(levels):  # x's bytes: ceil(m / 2) for each example of m pixels
        m = 1
        for d in h.x.shape[1:]:
            m *= int(d)
        x_info = wire_pb2.ArrayInfo(name="x", dtype="uint8", shape=[n, (m + 1) // 2])
    infos = [x_info, h.y, h.distance]
    if h.HasField("proba"):
        if list(h.proba.shape) != [n, len(h.classes)] or h.proba.dtype != "uint8":
            raise InvalidPayload(
                f"{what}: proba must be uint8 of shape [{n}, {len(h.classes)}], "
                f"got {h.proba.dtype} {list(h.proba.shape)}"
            )
        infos.append(h.proba)
    # by position, under fixed names: a sender's own names for them (even one name twice) change nothing
    layout = [
        (name, *item[1:])
        for name, item in zip(("x", "y", "distance", "proba"), _layout(infos, limits.max_batch_bytes, what))
    ]
    buf = _collect(chunks, sum(item[3] for item in layout), limits, what)
    arrays = list(_arrays(buf, layout).values())
    x = arrays[0]
    if _packed(levels):
        x = unpack_nibbles(x, tuple(int(d) for d in h.x.shape))
    batch = ExampleBatch(
        h.sender,
        h.receiver,
        int(h.round),
        int(h.seq),
        x,
        arrays[1],
        tuple(h.classes),
        arrays[2],
        tuple(h.features),
        levels,
        arrays[3] if len(arrays) > 3 else None,
    )
    if batch.y.dtype.kind not in "iu":
        raise InvalidPayload(f"{what}: labels are {batch.y.dtype}, expected integers")
    if n and (batch.y.min() < 0 or batch.y.max() >= len(batch.classes)):
        raise InvalidPayload(f"{what}: label index out of range 0..{len(batch.classes) - 1}")
    for name, arr in (("x", batch.x), ("distance", batch.distance)):
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise InvalidPayload(f"{what}: array {name!r} holds NaN or infinite values")
    return batch


def payload_bytes_blob(blob: ModelBlob) -> int:
    return sum(a.nbytes for a in blob.arrays.values())


def payload_bytes_batch(batch: ExampleBatch) -> int:
    return batch.nbytes()
