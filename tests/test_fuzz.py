"""Hostile input, property-based: every RPC of the peer and the coordinator on real loopback servers
with mutual TLS, forged model blobs pulled over gRPC, and every Flower record the apps parse.

Each case carries a defect (see tests/fuzz_cases.py); each must be refused with a clear status or
InvalidPayload, nothing may be stored, and the service must still answer afterwards. CI runs a
fixed set of examples per property (derandomized); CKD_FUZZ_EXAMPLES=N runs more.
"""

from __future__ import annotations

import copy
import json

import grpc
import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import given
from hypothesis import strategies as st

from peer.core.blob import InvalidPayload, ModelBlob
from peer.flower import records as rec
from peer.grpc.service import PeerServicer, grpc_options, serve, serve_peer
from peer.grpc.tls import Security, make_certs
from peer.grpc.transport import GrpcTransport, PeerUnreachable
from peer.grpc.wire import decode_blob
from peer.learners import learner_from_blob
from protos.ckd.v1 import coordinator_pb2 as cpb
from protos.ckd.v1 import coordinator_pb2_grpc, peer_pb2
from server.coordinator import Coordinator, serve_coordinator
from tests import fuzz_cases as fc
from tests.fuzz_cases import CLASSES, FUZZ, LIMITS, RECEIVER, REFUSALS, SENDER, SHAPE

pytestmark = pytest.mark.fuzz


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    make_certs(d, ["coordinator", RECEIVER, SENDER, fc.OTHER])
    return d


@pytest.fixture(scope="module")
def peer_server(certs, tmp_path_factory):
    """peer-0 on loopback (mTLS, the small caps), model published for round 1; a raw channel as peer-1."""
    peer, learner = fc.target_peer(tmp_path_factory.mktemp("store") / "examples.sqlite")
    servicer = PeerServicer(peer, Security.from_dir(RECEIVER, certs, False), LIMITS, known={RECEIVER, SENDER, fc.OTHER})
    servicer.publish(1, learner.to_blob())
    server, port = serve_peer(servicer, "127.0.0.1:0", workers=4)
    channel = Security.from_dir(SENDER, certs, False).channel(f"127.0.0.1:{port}", RECEIVER, grpc_options(LIMITS))
    yield servicer, channel, port
    channel.close()
    server.stop(grace=0).wait()
    peer.store.close()


def _raw(channel, kind: str, path: str):
    return getattr(channel, kind)(path, request_serializer=lambda b: b, response_deserializer=lambda b: b)


def _still_serving(channel, service: str) -> None:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def _refused(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert err.value.code() in REFUSALS, (err.value.code(), err.value.details())
    assert err.value.details(), "a refusal names its reason"
    return err.value


@pytest.mark.grpc
@FUZZ
@given(case=fc.hostile_push())
def test_push_examples_refuses_every_hostile_stream(peer_server, case):
    servicer, channel, _ = peer_server
    messages, defect = case
    refused = len(servicer.refused)
    _refused(lambda: _raw(channel, "stream_unary", "/ckd.v1.PeerService/PushExamples")(iter(messages), timeout=20))
    assert len(servicer.peer.store) == 0 and servicer.peer.store.batch_count() == 0, defect
    assert len(servicer.refused) > refused or defect in ("chunk over cap",), defect  # logged, not silent
    _still_serving(channel, "ckd.v1.PeerService")


@pytest.mark.grpc
@FUZZ
@given(case=fc.hostile_get_model())
def test_get_model_refuses_every_hostile_request(peer_server, case):
    servicer, channel, _ = peer_server
    raw, defect = case
    err = _refused(lambda: list(_raw(channel, "unary_stream", "/ckd.v1.PeerService/GetModel")(raw, timeout=20)))
    if defect == "requester":
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "client certificate is 'peer-1'" in err.details()
    assert len(servicer.peer.store) == 0
    status = peer_pb2.StatusReply.FromString(
        _raw(channel, "unary_unary", "/ckd.v1.PeerService/Status")(b"", timeout=10)
    )
    assert status.peer == RECEIVER and status.batches_stored == 0


@pytest.mark.grpc
@FUZZ
@given(raw=st.binary(max_size=64))
def test_status_answers_or_refuses_any_bytes(peer_server, raw):
    servicer, channel, _ = peer_server
    call = _raw(channel, "unary_unary", "/ckd.v1.PeerService/Status")
    try:
        peer_pb2.StatusRequest.FromString(raw)
    except Exception:  # noqa: BLE001  (bytes that do not parse: refused by name)
        err = _refused(lambda: call(raw, timeout=10))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "StatusRequest" in err.details()
    else:  # unknown fields are ignored, as protobuf does
        assert peer_pb2.StatusReply.FromString(call(raw, timeout=10)).examples_stored == 0


@pytest.fixture(scope="module")
def coordinator(certs):
    c = Coordinator(
        Security.from_dir("coordinator", certs, False),
        rounds=2,
        min_peers=2,
        round_deadline=0.5,
        expected={RECEIVER, SENDER},
    )
    server, port = serve_coordinator(c, "127.0.0.1:0", LIMITS)
    channel = Security.from_dir(SENDER, certs, False).channel(f"127.0.0.1:{port}", "coordinator", grpc_options(LIMITS))
    coordinator_pb2_grpc.CoordinatorServiceStub(channel).Register(
        cpb.RegisterRequest(peer=SENDER, address="127.0.0.1:1"), timeout=10
    )
    yield c, channel
    channel.close()
    server.stop(grace=0).wait()


def _coordinator_state(c: Coordinator):
    return copy.deepcopy((c.peers, c.metrics, sorted(c.barriers), c.participants))


@pytest.mark.grpc
@FUZZ
@given(case=fc.hostile_coordinator())
def test_coordinator_refuses_every_hostile_request(coordinator, case):
    c, channel = coordinator
    method, raw, defect = case
    before = _coordinator_state(c)
    call = _raw(channel, "unary_unary", f"/ckd.v1.CoordinatorService/{method}")
    if method == "ListPeers" and defect == "bytes":
        try:
            cpb.ListPeersRequest.FromString(raw)
        except Exception:  # noqa: BLE001
            _refused(lambda: call(raw, timeout=10))
        else:
            call(raw, timeout=10)
    else:
        err = _refused(lambda: call(raw, timeout=10))
        if defect == "claims another":
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "client certificate" in err.details()
    assert _coordinator_state(c) == before, defect
    reply = coordinator_pb2_grpc.CoordinatorServiceStub(channel).Heartbeat(
        cpb.HeartbeatRequest(peer=SENDER), timeout=10
    )
    assert reply.ok


# -- forged model blobs, pulled from a hostile peer over gRPC -----------------------------------
BLOBS = fc.real_blobs()


class HostilePeer:
    """A PeerService that serves whatever stream it is given, as a hostile peer would."""

    def __init__(self, certs) -> None:
        self.stream: list[bytes] = []
        handler = grpc.unary_stream_rpc_method_handler(
            lambda request, context: iter(self.stream),
            request_deserializer=lambda b: b,
            response_serializer=lambda b: b,
        )
        service = grpc.method_handlers_generic_handler("ckd.v1.PeerService", {"GetModel": handler})
        self.server, self.port, _ = serve(
            [(lambda s, server: server.add_generic_rpc_handlers((service,)), None)],
            Security.from_dir(fc.OTHER, certs, False),
            "127.0.0.1:0",
            LIMITS,
        )


@pytest.fixture(scope="module")
def hostile_peer(certs):
    hostile = HostilePeer(certs)
    transport = GrpcTransport(
        SENDER,
        {fc.OTHER: f"127.0.0.1:{hostile.port}"},
        Security.from_dir(SENDER, certs, False),
        LIMITS,
        retries=0,
        timeout=20,
    )
    yield hostile, transport
    transport.close()
    hostile.server.stop(grace=0).wait()


def test_every_real_blob_is_accepted():
    for blob in BLOBS.values():
        assert learner_from_blob(decode_blob(iter(_chunks(fc.blob_stream(blob, fc.OTHER, 1))), LIMITS)[0])


def _chunks(raw: list[bytes]):
    from protos.ckd.v1 import wire_pb2

    return [wire_pb2.ModelChunk.FromString(r) for r in raw]


@pytest.mark.grpc
@FUZZ
@given(case=fc.forged_blob(BLOBS))
def test_forged_blob_pulled_over_grpc_is_refused_before_use(hostile_peer, case):
    hostile, transport = hostile_peer
    blob, defect = case
    hostile.stream = fc.blob_stream(blob, fc.OTHER, 1)
    with pytest.raises((InvalidPayload, PeerUnreachable)) as err:
        learner_from_blob(transport.get_model(fc.OTHER, 1))
    assert str(err.value), defect


@FUZZ
@given(case=fc.forged_blob(BLOBS))
def test_forged_blob_in_a_flower_record_is_refused_before_use(case):
    blob, defect = case
    content = RecordDict()
    content["model.peer-2"] = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in blob.arrays.items()})
    content["model.peer-2.spec"] = ConfigRecord({"spec": json.dumps(blob.spec)})
    with pytest.raises(InvalidPayload):
        learner_from_blob(rec.get_blob(content, fc.OTHER, LIMITS))


@pytest.mark.grpc
@FUZZ
@given(st.data())
def test_hostile_streams_from_a_peer_are_refused_whole(hostile_peer, data):
    """Streams that are no model: truncated, reordered, oversized, bytes that do not parse."""
    hostile, transport = hostile_peer
    good = fc.blob_stream(BLOBS["mlp"], fc.OTHER, 1)
    kind = data.draw(
        st.sampled_from(
            [
                "truncated",
                "no header",
                "two headers",
                "garbage",
                "other round",
                "other publisher",
                "over cap",
                "too many arrays",
                "huge spec",
            ]
        )
    )
    stream = list(good)
    if kind == "truncated":
        stream = stream[: data.draw(st.integers(0, len(stream) - 1))]
    elif kind == "no header":
        stream = stream[1:]
    elif kind == "two headers":
        stream.insert(data.draw(st.integers(1, len(stream))), stream[0])
    elif kind == "garbage":
        stream.insert(data.draw(st.integers(0, len(stream))), b"\xff\xff\xff\x01" + data.draw(st.binary(max_size=8)))
    elif kind in ("other round", "other publisher"):
        stream = fc.blob_stream(
            BLOBS["mlp"], fc.OTHER if kind == "other round" else RECEIVER, 2 if kind == "other round" else 1
        )
    elif kind == "over cap":
        stream = fc.blob_stream(
            ModelBlob(BLOBS["mlp"].spec, {"w": np.zeros(LIMITS.max_blob_bytes // 4 + 1, np.float32)}), fc.OTHER, 1
        )[:1]
    elif kind == "too many arrays":
        stream = fc.blob_stream(
            ModelBlob(BLOBS["mlp"].spec, {f"a{i}": np.zeros(1, np.float32) for i in range(LIMITS.max_arrays + 1)}),
            fc.OTHER,
            1,
        )
    elif kind == "huge spec":
        stream = fc.blob_stream(ModelBlob({**BLOBS["mlp"].spec, "pad": "x" * LIMITS.max_spec_bytes}, {}), fc.OTHER, 1)
    hostile.stream = stream
    with pytest.raises((InvalidPayload, PeerUnreachable)):
        learner_from_blob(transport.get_model(fc.OTHER, 1))


# -- Flower records: what the ClientApp and the ServerApp parse ---------------------------------
def _batch_content(batch, arrays=None, meta=None) -> tuple[RecordDict, str]:
    content = RecordDict()
    key = rec.put_batch(content, batch)
    if arrays is not None:
        content[key] = arrays
    if meta is not None:
        content[key + ".meta"] = meta
    return content, key


@st.composite
def hostile_batch_record(draw) -> tuple[RecordDict, str, str]:
    batch = fc.good_batch(draw(st.integers(1, 12)), draw(st.integers(0, 2**16)))
    content, key = _batch_content(batch)
    meta = dict(content[key + ".meta"])
    kind = draw(
        st.sampled_from(
            [
                "meta type",
                "meta missing",
                "meta kind",
                "array kind",
                "arrays",
                "forged bytes",
                "shape",
                "labels",
                "nan",
                "too many",
                "over cap",
                "classes",
                "negative",
            ]
        )
    )
    if kind == "meta type":
        field = draw(st.sampled_from(sorted(meta)))
        meta[field] = draw(fc.WEIRD.filter(lambda v, f=field: type(v) is not type(meta[f]) and v is not None))
        content[key + ".meta"] = ConfigRecord(meta) if _config_ok(meta) else ArrayRecord()
    elif kind == "meta missing":
        del meta[draw(st.sampled_from(sorted(meta)))]
        content[key + ".meta"] = ConfigRecord(meta)
    elif kind == "meta kind":
        content[key + ".meta"] = content[key]
    elif kind == "array kind":
        content[key] = ConfigRecord({"x": 1})
    elif kind == "arrays":
        arrays = dict(content[key].items())
        del arrays[draw(st.sampled_from(["x", "y", "distance"]))]
        content[key] = ArrayRecord(arrays)
    elif kind == "forged bytes":
        arrays = dict(content[key].items())
        name = draw(st.sampled_from(["x", "y", "distance"]))
        a = arrays[name]
        arrays[name] = Array(dtype=a.dtype, shape=a.shape, stype=a.stype, data=draw(st.binary(max_size=200)))
        content[key] = ArrayRecord(arrays)
    elif kind == "shape":
        content[key] = ArrayRecord(
            {"x": Array(batch.x[:, :4]), "y": Array(batch.y[:1]), "distance": Array(batch.distance)}
        )
    elif kind == "labels":
        y = batch.y.copy()
        y[0] = draw(st.one_of(st.integers(4, 2**62), st.integers(-(2**62), -1)))
        content[key] = ArrayRecord({"x": Array(batch.x), "y": Array(y), "distance": Array(batch.distance)})
    elif kind == "nan":
        d = batch.distance.copy()
        d[0] = np.nan
        content[key] = ArrayRecord({"x": Array(batch.x), "y": Array(batch.y), "distance": Array(d)})
    elif kind == "too many":
        n = LIMITS.max_batch_examples + 1
        content[key] = ArrayRecord(
            {
                "x": Array(np.zeros((n, 1), np.uint8)),
                "y": Array(np.zeros(n, np.int64)),
                "distance": Array(np.zeros(n, np.float32)),
            }
        )
    elif kind == "over cap":
        content[key] = ArrayRecord(
            {
                "x": Array(np.zeros((1, LIMITS.max_batch_bytes + 1), np.uint8)),
                "y": Array(np.zeros(1, np.int64)),
                "distance": Array(np.zeros(1, np.float32)),
            }
        )
    elif kind == "classes":
        meta["classes"] = draw(st.sampled_from([["c0"], ["c0", "c0"], []]))
        content[key + ".meta"] = ConfigRecord(meta)
    elif kind == "negative":
        meta[draw(st.sampled_from(["round", "seq"]))] = draw(st.integers(-(2**63), -1))
        content[key + ".meta"] = ConfigRecord(meta)
    return content, key, kind


def _config_ok(meta: dict) -> bool:
    try:
        ConfigRecord(meta)
    except Exception:  # noqa: BLE001  (Flower refuses some value types itself)
        return False
    return True


@FUZZ
@given(case=hostile_batch_record())
def test_hostile_batch_records_are_refused(case):
    content, key, kind = case
    with pytest.raises(InvalidPayload):
        batch = rec.get_batch(content, key, LIMITS)
        batch.validate(SHAPE, CLASSES)  # what the ClientApp's Peer.absorb does next
        raise AssertionError(f"{kind} accepted")


@FUZZ
@given(
    text=st.one_of(
        st.text(max_size=40),
        st.just("[" * 5000 + "]" * 5000),
        st.builds(json.dumps, st.dictionaries(st.text(max_size=6), fc.WEIRD, max_size=4)),
    ),
    wrong_kind=st.booleans(),
)
def test_hostile_round_records_are_refused(text, wrong_kind):
    content = RecordDict()
    content[rec.RECORD] = ArrayRecord() if wrong_kind else ConfigRecord({"json": text})
    with pytest.raises(InvalidPayload):
        rec.get_record(content, "peer-1 train.local")


def test_flower_caps_are_the_grpc_caps():
    """A batch or blob over a cap is refused on the Flower path as on the gRPC path, before use."""
    from peer.core.blob import Limits, PayloadTooLarge

    big = fc.good_batch(LIMITS.max_batch_examples + 1, 0)
    content, key = _batch_content(big)
    with pytest.raises(PayloadTooLarge, match="over the cap of 200"):
        rec.get_batch(content, key, LIMITS)
    blob = ModelBlob(BLOBS["mlp"].spec, {f"a{i}": np.zeros(1, np.float32) for i in range(LIMITS.max_arrays + 1)})
    content = RecordDict()
    rec.put_blob(content, "p", blob)
    with pytest.raises(PayloadTooLarge, match="arrays, over the cap"):
        rec.get_blob(content, "p", LIMITS)
    rec.put_blob(content, "p", ModelBlob({**BLOBS["mlp"].spec, "pad": "x" * LIMITS.max_spec_bytes}, {}))
    with pytest.raises(PayloadTooLarge, match="spec of"):
        rec.get_blob(content, "p", LIMITS)
    assert Limits() == rec.get_blob.__defaults__[0] == rec.get_batch.__defaults__[0]  # the same defaults as gRPC


def _federation():
    from server.flower_app import Federation

    fed = Federation(grid=None, timeout=1)
    for node, pid in ((10, RECEIVER), (11, SENDER), (12, fc.OTHER)):
        fed.peer_of[node], fed.node_of[pid] = pid, node
    return fed


@FUZZ
@given(case=hostile_batch_record())
def test_the_server_app_relays_no_hostile_batch_a_peer_would_store(case):
    """relay() refuses the reply (RunFailed naming the node), or the receiving ClientApp refuses the batch."""
    from peer.round import PeerRound
    from server.flower_app import Collector, RunFailed, relay

    content, key, kind = case
    rec.put_record(content, PeerRound(SENDER, 1))
    try:
        inbox = relay({11: content}, _federation(), 1, Collector([RECEIVER, SENDER, fc.OTHER]))
    except RunFailed as exc:
        assert "peer-1 (node 11)" in str(exc), kind
        return
    for box in inbox.values():
        for k in rec.batch_keys(box):
            with pytest.raises(InvalidPayload):
                rec.get_batch(box, k, LIMITS).validate(SHAPE, CLASSES)


@FUZZ
@given(case=fc.forged_blob(BLOBS))
def test_the_server_app_refuses_a_forged_model_in_a_reply(case):
    from peer.round import PeerRound
    from server.flower_app import Collector, RunFailed

    blob, defect = case
    content = RecordDict()
    content[f"model.{SENDER}"] = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in blob.arrays.items()})
    content[f"model.{SENDER}.spec"] = ConfigRecord({"spec": json.dumps(blob.spec)})
    content["about"] = ConfigRecord({"learner": "mlp", "missing": [], "classes": list(CLASSES)})
    rec.put_record(content, PeerRound(SENDER, 0))
    col = Collector([RECEIVER, SENDER, fc.OTHER])
    try:
        col.trained({11: content}, _federation(), "train.local")
    except RunFailed as exc:
        assert "peer-1 (node 11) sent a malformed reply to train.local" in str(exc)
        assert SENDER not in col.models
        return
    # validate() alone passed: the learner a peer rebuilds from it must refuse it
    with pytest.raises(InvalidPayload):
        learner_from_blob(rec.get_blob(content, SENDER))
