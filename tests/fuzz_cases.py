"""Hostile inputs as hypothesis strategies, shared by the fuzz tests and bench/fuzz.py.

Every case carries at least one defect that makes it invalid (a forged sender, a shape that does
not fit, NaN, a truncated stream, bytes that do not parse, ...), so a receiver must refuse every
one of them: none may be stored. Cases are raw serialized messages, as a hostile client sends them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import grpc
import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from peer.core.blob import ExampleBatch, Limits, ModelBlob
from peer.grpc.wire import encode_batch, encode_blob
from protos.ckd.v1 import coordinator_pb2 as cpb
from protos.ckd.v1 import peer_pb2, wire_pb2

# what a service answers when it refuses a hostile message
REFUSALS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.FAILED_PRECONDITION,
}

CLASSES = ("c0", "c1", "c2", "c3")
SHAPE = (8, 8)
RECEIVER, SENDER, OTHER = "peer-0", "peer-1", "peer-2"
# small caps, so oversized cases are cheap to make and a refusal by size is exercised
LIMITS = Limits(
    max_message_bytes=64 << 10,
    max_blob_bytes=1 << 20,
    max_batch_bytes=256 << 10,
    max_batch_examples=200,
    max_arrays=64,
    max_spec_bytes=8 << 10,
)
# reproducible in CI: the same examples every run; CKD_FUZZ_EXAMPLES=N runs N per property and
# CKD_FUZZ_RANDOM=1 draws new ones each run (to explore; a failure prints how to reproduce it)
FUZZ = settings(
    max_examples=int(os.environ.get("CKD_FUZZ_EXAMPLES", "150")),
    derandomize=not os.environ.get("CKD_FUZZ_RANDOM"),
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)
INT64 = st.integers(-(2**63), 2**63 - 1)
TEXT = st.text(max_size=12)
WEIRD = st.one_of(
    st.none(),
    st.booleans(),
    INT64,
    st.floats(allow_nan=True),
    TEXT,
    st.lists(st.integers(), max_size=3),
    st.dictionaries(TEXT, st.integers(), max_size=2),
)


def good_batch(n: int, seed: int, float_x: bool = False) -> ExampleBatch:
    rng = np.random.default_rng(seed)
    x = rng.random((n, *SHAPE), dtype=np.float32) if float_x else rng.integers(0, 256, (n, *SHAPE), dtype=np.uint8)
    return ExampleBatch(
        SENDER, RECEIVER, 1, seed, x, rng.integers(0, 4, n).astype(np.int64), CLASSES, rng.random(n).astype(np.float32)
    )


def _raw(msgs) -> list[bytes]:
    return [m.SerializeToString() for m in msgs]


# -- PushExamples ------------------------------------------------------------------------------
def _set_info(info: wire_pb2.ArrayInfo, dtype=None, shape=None) -> None:
    if dtype is not None:
        info.dtype = dtype
    if shape is not None:
        del info.shape[:]
        info.shape.extend(shape)


def _header_defect(draw, h: wire_pb2.BatchHeader, n: int) -> str:
    kind = draw(
        st.sampled_from(
            [
                "sender",
                "receiver",
                "no sender",
                "negative",
                "dtype",
                "x shape",
                "y shape",
                "distance shape",
                "classes",
                "duplicate classes",
                "huge",
                "too many",
                "input shape",
                "features",
                "missing array",
            ]
        )
    )
    if kind == "sender":
        h.sender = draw(st.sampled_from([OTHER, "mallory", RECEIVER]))
    elif kind == "receiver":
        h.receiver = draw(st.sampled_from([OTHER, SENDER, "x" * 40]))
    elif kind == "no sender":
        h.sender = ""
    elif kind == "negative":
        if draw(st.booleans()):
            h.round = draw(st.integers(-(2**63), -1))
        else:
            h.seq = draw(st.integers(-(2**63), -1))
    elif kind == "dtype":
        info = draw(st.sampled_from([h.x, h.y, h.distance]))
        _set_info(info, dtype=draw(st.sampled_from(["object", "complex128", "float16", "<U4", "V8", "", "int64x"])))
    elif kind == "x shape":
        _set_info(
            h.x,
            shape=draw(
                st.lists(st.integers(-3, 2**40), max_size=4).filter(
                    lambda s: s[:1] != [n] or len(s) < 2 or any(d < 0 for d in s)
                )
            ),
        )
    elif kind == "y shape":
        _set_info(h.y, shape=draw(st.lists(st.integers(-3, 2**40), max_size=3).filter(lambda s: s != [n])))
    elif kind == "distance shape":
        _set_info(h.distance, shape=draw(st.lists(st.integers(-3, 50), max_size=3).filter(lambda s: s != [n])))
    elif kind == "classes":
        del h.classes[:]
        h.classes.extend(draw(st.lists(TEXT, max_size=1)))
    elif kind == "duplicate classes":
        h.classes.append(h.classes[0])
    elif kind == "huge":
        m = draw(st.integers(10**6, 2**40))
        _set_info(h.x, shape=[m, 10**6, 10**6])
        _set_info(h.y, shape=[m])
        _set_info(h.distance, shape=[m])
    elif kind == "too many":
        m = LIMITS.max_batch_examples + draw(st.integers(1, 10**6))
        _set_info(h.x, shape=[m, 1])
        _set_info(h.y, shape=[m])
        _set_info(h.distance, shape=[m])
    elif kind == "input shape":
        _set_info(h.x, shape=[n, *draw(st.sampled_from([(7, 8), (8, 9), (64,), (1, 8, 8)]))])
    elif kind == "features":
        h.features.extend(draw(st.lists(TEXT, min_size=1, max_size=3)))
    elif kind == "missing array":
        h.ClearField(draw(st.sampled_from(["x", "y", "distance"])))
    return kind


def _stream_defect(draw, msgs: list, batch: ExampleBatch) -> tuple[list, str]:
    kind = draw(
        st.sampled_from(
            [
                "truncated",
                "extra bytes",
                "second header",
                "data first",
                "empty",
                "empty chunk",
                "garbage",
                "chunk over cap",
            ]
        )
    )
    head, data = msgs[:1], msgs[1:]
    if kind == "truncated":
        if data:
            cut = draw(st.integers(0, len(data[-1].data) - 1))
            data = data[:-1] + ([wire_pb2.ExampleChunk(data=data[-1].data[:cut])] if cut else [])
        else:  # nothing to cut: claim one more example than is sent
            kind = "extra bytes"
    if kind == "extra bytes":
        data = data + [wire_pb2.ExampleChunk(data=draw(st.binary(min_size=1, max_size=64)))]
    elif kind == "second header":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + head + data[at:]
    elif kind == "data first":
        return data[:1] + head + data[1:] if data else [wire_pb2.ExampleChunk(data=b"\0")] + head, kind
    elif kind == "empty":
        return [], kind
    elif kind == "empty chunk":
        data = data + [wire_pb2.ExampleChunk()]
    elif kind == "garbage":
        at = draw(st.integers(0, len(data) + 1))
        junk = draw(st.sampled_from([b"\xff\xff\xff\x01", b"\x0a\xff\xff", b"\x12\x05ab", b"\x7a"]))
        out = _raw(head + data)
        return out[:at] + [junk + draw(st.binary(max_size=16))] + out[at:], kind
    elif kind == "chunk over cap":
        data = [wire_pb2.ExampleChunk(data=b"\0" * (LIMITS.max_message_bytes + 1))]
    return head + data, kind


def _value_defect(draw, batch: ExampleBatch) -> tuple[ExampleBatch, str]:
    kind = draw(st.sampled_from(["nan x", "inf distance", "label range", "float labels", "x range"]))
    fields = dict(batch.__dict__)
    n = len(batch)
    if kind == "nan x":
        x = batch.inputs().copy()
        x.flat[draw(st.integers(0, x.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        fields["x"] = x
    elif kind == "inf distance":
        d = batch.distance.copy()
        d[draw(st.integers(0, n - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        fields["distance"] = d
    elif kind == "label range":
        y = batch.y.copy()
        y[draw(st.integers(0, n - 1))] = draw(st.one_of(st.integers(len(CLASSES), 2**62), st.integers(-(2**62), -1)))
        fields["y"] = y
    elif kind == "float labels":
        fields["y"] = batch.y.astype(np.float32)
    elif kind == "x range":
        x = batch.inputs().copy()
        x.flat[draw(st.integers(0, x.size - 1))] = draw(st.sampled_from([-0.5, 1.5, 255.0]))
        fields["x"] = x
    return ExampleBatch(**fields), kind


@st.composite
def hostile_push(draw) -> tuple[list[bytes], str]:
    """A PushExamples request stream (raw messages) and what is wrong with it."""
    n = draw(st.integers(1, 12))
    batch = good_batch(n, draw(st.integers(0, 2**16)), float_x=draw(st.booleans()))
    family = draw(st.sampled_from(["header", "stream", "values", "bytes"]))
    if family == "bytes":
        return draw(
            st.lists(st.binary(min_size=1, max_size=200), min_size=1, max_size=4).filter(
                lambda ms: not _parses_as_a_header(ms[0])
            )
        ), "random bytes"
    if family == "values":
        batch, kind = _value_defect(draw, batch)
        return _raw(encode_batch(batch, chunk=draw(st.sampled_from([7, 100, 1 << 20])))), kind
    msgs = list(encode_batch(batch, chunk=draw(st.sampled_from([7, 100, 1 << 20]))))
    if family == "header":
        kind = _header_defect(draw, msgs[0].header, n)
        return _raw(msgs), kind
    msgs, kind = _stream_defect(draw, msgs, batch)
    return (msgs if msgs and isinstance(msgs[0], bytes) else _raw(msgs)), kind


def _parses_as_a_header(raw: bytes) -> bool:
    """Random bytes that happen to be a well-formed batch header are no defect on their own."""
    try:
        return wire_pb2.ExampleChunk.FromString(raw).WhichOneof("part") == "header"
    except Exception:  # noqa: BLE001
        return False


# -- GetModel and Status -----------------------------------------------------------------------
@st.composite
def hostile_get_model(draw) -> tuple[bytes, str]:
    """A GetModel request that must be refused: bytes that do not parse, another requester, a
    round never published (the server publishes round 1 only)."""
    kind = draw(st.sampled_from(["bytes", "requester", "round"]))
    if kind == "bytes":
        return b"\x0a" + draw(st.binary(min_size=1, max_size=64)).replace(b"\x00", b"\xff") + b"\xff", kind
    if kind == "requester":
        req = peer_pb2.GetModelRequest(requester=draw(st.sampled_from([OTHER, "mallory", RECEIVER, "Peer-1"])), round=1)
    else:
        req = peer_pb2.GetModelRequest(
            requester=draw(st.sampled_from([SENDER, ""])), round=draw(INT64.filter(lambda r: r != 1))
        )
    return req.SerializeToString(), kind


# -- the coordinator ---------------------------------------------------------------------------
COORD_METHODS = ("Register", "Heartbeat", "ListPeers", "WaitRound", "ReportMetrics")


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@st.composite
def hostile_coordinator(draw) -> tuple[str, bytes, str]:
    """(method, raw request, defect) for a caller holding SENDER's certificate, registered, in a run
    that expects RECEIVER and SENDER and has 2 rounds."""
    method = draw(st.sampled_from(COORD_METHODS))
    if method == "ListPeers":  # no fields; only bytes that do not parse are hostile
        return method, b"\x0a\x05" + draw(st.binary(max_size=3)), "bytes"
    kind = draw(
        st.sampled_from(
            ["bytes", "claims another", "unexpected", "no name"]
            + {
                "Register": ["no address", "bad address"],
                "WaitRound": ["stage", "round"],
                "ReportMetrics": ["not json", "not an object", "nested", "round", "oversize"],
            }.get(method, [])
        )
    )
    if kind == "bytes":
        return method, b"\x0a\x09" + draw(st.binary(max_size=4)), kind
    peer = {"claims another": RECEIVER, "unexpected": "mallory", "no name": ""}.get(kind, SENDER)
    if method == "Register":
        address = draw(TEXT) + ":1"
        if kind == "no address":
            address = ""
        elif kind == "bad address":
            address = draw(
                st.one_of(
                    st.just("x" * 301 + ":1"),
                    st.just("host"),
                    st.just(":80"),
                    st.builds(
                        lambda h, p: f"{h}:{p}",
                        TEXT.filter(bool),
                        st.one_of(st.integers(65536, 10**9), st.just("http"), st.just("")),
                    ),
                )
            )
        msg = cpb.RegisterRequest(peer=peer, address=address)
    elif method == "Heartbeat":
        msg = cpb.HeartbeatRequest(peer=peer)
    elif method == "WaitRound":
        stage = (
            draw(st.integers(-(2**31), 2**31 - 1).filter(lambda s: s not in (1, 2, 3, 4)))
            if kind == "stage"
            else draw(st.integers(1, 4))
        )
        rnd = (
            draw(st.one_of(st.integers(-(2**63), -1), st.integers(3, 2**63 - 1)))
            if kind == "round"
            else draw(st.integers(0, 2))
        )
        msg = cpb.WaitRoundRequest(peer=peer, round=rnd, stage=stage)
    else:
        text = json.dumps({"accuracy": 0.5})
        if kind == "not json":
            text = draw(st.text(max_size=30).filter(lambda t: not _is_json(t)))
        elif kind == "not an object":
            text = json.dumps(draw(st.one_of(st.integers(), st.lists(st.integers(), max_size=3), TEXT, st.none())))
        elif kind == "nested":
            text = _nested(draw(st.integers(2_000, 30_000)))
        elif kind == "oversize":
            text = " " * (LIMITS.max_message_bytes * 2)
        rnd = (
            draw(st.one_of(st.integers(-(2**63), -1), st.integers(3, 2**63 - 1)))
            if kind == "round"
            else draw(st.integers(0, 2))
        )
        msg = cpb.MetricsRequest(peer=peer, round=rnd, json=text)
    return method, msg.SerializeToString(), kind


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


# -- forged model blobs ------------------------------------------------------------------------
def real_blobs() -> dict[str, ModelBlob]:
    """A small blob of every learner kind, none with the default arch (the forest fitted on random
    data, two shallow trees)."""
    from peer.learners import TrainConfig
    from peer.learners.forest import ForestLearner
    from peer.learners.neural import CNNLearner, LinearLearner, MLPLearner

    train = TrainConfig(epochs=1, seed=0)
    forest = ForestLearner(SHAPE, CLASSES, train, {"trees": 2, "max_depth": 3})
    rng = np.random.default_rng(0)
    forest.fit(rng.random((40, *SHAPE), dtype=np.float32), np.arange(40) % 4)
    return {
        "mlp": MLPLearner(SHAPE, CLASSES, train, {"hidden": [8]}).to_blob(),
        "cnn": CNNLearner(SHAPE, CLASSES, train, {"width": 4, "hidden": 8}).to_blob(),
        "linear": LinearLearner((6,), CLASSES, train).to_blob(),
        "forest": forest.to_blob(),
    }


def _forest_defect(draw, arrays: dict[str, np.ndarray], spec: dict) -> str:
    a = {k: v.copy() for k, v in arrays.items()}
    inner = np.flatnonzero(a["left"] >= 0)
    n = len(a["feature"])
    kind = draw(
        st.sampled_from(
            [
                "loop",
                "back edge",
                "child out of range",
                "root out of range",
                "feature out of range",
                "value shape",
                "negative right",
            ]
        )
    )
    i = int(inner[draw(st.integers(0, len(inner) - 1))])
    side = draw(st.sampled_from(["left", "right"]))
    if kind == "loop":
        a[side][i] = i
    elif kind == "back edge":
        a[side][i] = draw(st.integers(0, i))
    elif kind == "child out of range":
        a[side][i] = draw(st.integers(n, 2**31 - 1))
    elif kind == "root out of range":
        a["roots"][draw(st.integers(0, len(a["roots"]) - 1))] = draw(
            st.one_of(st.integers(n, 2**31 - 1), st.integers(-(2**31), -1))
        )
    elif kind == "feature out of range":
        a["feature"][i] = draw(
            st.one_of(st.integers(int(np.prod(spec["input_shape"])), 2**31 - 1), st.integers(-(2**31), -1))
        )
    elif kind == "value shape":
        a["value"] = np.zeros((n, len(CLASSES) + draw(st.integers(1, 3))), np.float32)
    elif kind == "negative right":
        a["right"][i] = draw(st.integers(-(2**31), -1))
    arrays.clear()
    arrays.update(a)
    return kind


@st.composite
def forged_blob(draw, blobs: dict[str, ModelBlob]) -> tuple[ModelBlob, str]:
    """A real blob of some kind with one defect: it must be refused by decode_blob or learner_from_blob."""
    kind = draw(st.sampled_from(sorted(blobs)))
    blob = blobs[kind]
    spec, arrays = json.loads(blob.spec_json()), {k: v.copy() for k, v in blob.arrays.items()}
    names = sorted(arrays)
    choices = ["array shape", "dtype", "nan", "missing array", "extra array", "kind", "classes", "input shape", "arch"]
    if kind == "forest":
        choices += ["forest"] * 4
    defect = draw(st.sampled_from(choices))
    # a forest with fewer roots is still a forest: its roots' length is no defect
    name = draw(
        st.sampled_from([n for n in names if not (kind == "forest" and defect == "array shape" and n == "roots")])
    )
    if defect == "array shape":
        arr = arrays[name]
        new = draw(st.lists(st.integers(0, 9), min_size=1, max_size=3).filter(lambda s: tuple(s) != arr.shape))
        arrays[name] = np.zeros(new, arr.dtype)
    elif defect == "dtype":
        arrays[name] = arrays[name].astype(
            draw(
                st.sampled_from(
                    [
                        d
                        for d in ("float64", "float32", "int32", "int64", "uint8", "bool")
                        if d != arrays[name].dtype.name
                    ]
                )
            )
        )
    elif defect == "nan":
        arr = arrays[name].astype(np.float32 if arrays[name].dtype.kind != "f" else arrays[name].dtype)
        if arr.size == 0:
            arr = np.zeros(1, np.float32)
        arr.flat[draw(st.integers(0, arr.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        arrays[name] = arr
    elif defect == "missing array":
        del arrays[name]
    elif defect == "extra array":
        arrays[draw(TEXT.filter(lambda t: t not in arrays))] = np.zeros(2, np.float32)
    elif defect == "kind":
        spec["kind"] = draw(st.one_of(st.sampled_from(["", "pickle", "rnn"]), st.integers()))
    elif defect == "classes":
        spec["classes"] = draw(
            st.one_of(
                st.just(["c0"]),
                st.just(["c0", "c0"]),
                st.lists(st.integers(), max_size=4),
                st.just([["c0"], ["c1"]]),
                WEIRD,
            )
        )
    elif defect == "input shape":
        spec["input_shape"] = draw(
            st.one_of(
                st.just([]),
                st.just([True, 8]),
                st.just([0, 8]),
                st.just([-8, 8]),
                st.just([10**6, 10**6]),
                st.just([1, 1, 1, 1, 1]),
                st.lists(st.floats(), min_size=1, max_size=2),
                WEIRD.filter(lambda v: not isinstance(v, list) or not all(isinstance(d, int) and d > 0 for d in v)),
            )
        )
    elif defect == "arch":
        if kind == "forest":  # the forest's arch only shapes training, so forge its trees instead
            defect = "forest " + _forest_defect(draw, arrays, spec)
        else:
            spec["arch"] = draw(
                st.one_of(
                    st.just({"hidden": [4096, 4096, 4096]}),
                    st.just({"width": 4096, "hidden": 4096}),
                    st.just({"hidden": [0]}),
                    st.just({"hidden": "8"}),
                    st.just({"width": -1, "hidden": 2}),
                    st.just({"hidden": 8, "width": 5}) if kind == "cnn" else st.just({"hidden": [9]}),
                    WEIRD.filter(lambda v: not isinstance(v, dict) or v),
                )
            )
            if kind == "linear" and isinstance(spec["arch"], dict):  # linear ignores arch: change its input instead
                spec["input_shape"] = [7]
    elif defect == "forest":
        defect = "forest " + _forest_defect(draw, arrays, spec)
    return ModelBlob(spec, arrays), f"{kind}: {defect}"


def blob_stream(blob: ModelBlob, peer: str, round: int) -> list[bytes]:
    """A ModelBlob's GetModel stream, raw; the spec as given, even when it would not serialize cleanly."""
    msgs = list(encode_blob(ModelBlob({}, blob.arrays), peer, round, chunk=4096))
    msgs[0].header.spec_json = json.dumps(blob.spec)
    return _raw(msgs)


def target_peer(store: Path):
    """The peer every hostile client attacks: RECEIVER with an untrained mlp on 8 random inputs
    and a SQLite store at `store`; returns (peer, learner)."""
    from peer.core.peer import Peer
    from peer.core.sqlstore import SqliteExampleStore
    from peer.learners import TrainConfig, make_learner

    learner = make_learner("mlp", SHAPE, CLASSES, TrainConfig(epochs=1, seed=0))
    rng = np.random.default_rng(0)
    x = rng.random((8, *SHAPE), dtype=np.float32)
    return Peer(RECEIVER, x, np.arange(8) % 4, CLASSES, learner, store=SqliteExampleStore(store)), learner
