"""PeerService on a real loopback port with mutual TLS: models out, batches in, bad input refused."""

from __future__ import annotations

import re

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from peer.core.blob import ExampleBatch, InvalidPayload, ModelBlob
from peer.core.peer import Peer
from peer.core.sqlstore import SqliteExampleStore
from peer.grpc.service import PeerServicer, serve_peer
from peer.grpc.tls import Security, make_certs
from peer.grpc.transport import GrpcTransport, PeerUnreachable
from peer.grpc.wire import Limits, decode_batch, decode_blob, encode_batch, encode_blob
from peer.learners import TrainConfig, learner_from_blob, make_learner
from protos.ckd.v1 import peer_pb2_grpc, wire_pb2

pytestmark = pytest.mark.grpc

CLASSES = tuple(f"c{i}" for i in range(4))


def _batch(sender="peer-1", receiver="peer-0", n=5, seq=0, **over) -> ExampleBatch:
    rng = np.random.default_rng(seq)
    fields = dict(
        sender=sender,
        receiver=receiver,
        round=1,
        seq=seq,
        x=rng.integers(0, 256, (n, 8, 8), dtype=np.uint8),
        y=np.arange(n, dtype=np.int64) % 4,
        classes=CLASSES,
        distance=np.ones(n, np.float32),
    )
    fields.update(over)
    return ExampleBatch(**fields)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    make_certs(d, ["peer-0", "peer-1", "peer-2", "mallory"])
    return d


@pytest.fixture
def served(tmp_path, certs):
    """peer-0 serving on loopback with mTLS; peer-1 and peer-2 are known, mallory is not."""
    rng = np.random.default_rng(0)
    learner = make_learner("mlp", (8, 8), CLASSES, TrainConfig(epochs=1, seed=0))
    peer = Peer(
        "peer-0",
        rng.random((20, 8, 8), dtype=np.float32),
        np.arange(20) % 4,
        CLASSES,
        learner,
        store=SqliteExampleStore(tmp_path / "examples.sqlite"),
    )
    servicer = PeerServicer(
        peer,
        Security.from_dir("peer-0", certs, False),
        Limits(max_batch_examples=100),
        known={"peer-0", "peer-1", "peer-2"},
    )
    server, port = serve_peer(servicer, "127.0.0.1:0", workers=4)
    yield servicer, f"127.0.0.1:{port}"
    server.stop(grace=0).wait()
    peer.store.close()


def _client(certs, name, address):
    return GrpcTransport(name, {"peer-0": address}, Security.from_dir(name, certs, False), retries=0)


def _raw_stub(certs, name, address):
    return peer_pb2_grpc.PeerServiceStub(Security.from_dir(name, certs, False).channel(address, "peer-0"))


def test_model_pulled_in_chunks_equals_the_published_one(served, certs):
    servicer, address = served
    big = ModelBlob(
        {"kind": "mlp", "classes": list(CLASSES), "input_shape": [8, 8]},
        {"w": np.random.default_rng(1).random(700_000).astype(np.float32)},
    )
    servicer.publish(3, big)
    chunks = list(encode_blob(big, "peer-0", 3))
    assert len(chunks) == 4 and all(len(c.data) <= 1 << 20 for c in chunks[1:])
    got = _client(certs, "peer-1", address).get_model("peer-0", 3)
    assert got.spec == big.spec and np.array_equal(got.arrays["w"], big.arrays["w"])
    with pytest.raises(PeerUnreachable, match="NOT_FOUND.*has not published a model for round 4"):
        _client(certs, "peer-1", address).get_model("peer-0", 4)


def test_batch_stored_durably_once_then_acknowledged_as_duplicate(served, certs, tmp_path):
    servicer, address = served
    client = _client(certs, "peer-1", address)
    batch = _batch()
    assert client.push_examples("peer-0", batch) is True
    assert client.push_examples("peer-0", batch) is False  # a retry: acknowledged, not stored twice
    assert client.status("peer-0").examples_stored == 5
    reopened = SqliteExampleStore(tmp_path / "examples.sqlite")  # what is on disk, read by another connection
    (stored,) = reopened.batches()
    assert stored.id == batch.id and np.array_equal(stored.x, batch.x) and np.array_equal(stored.y, batch.y)
    reopened.close()


def test_health_and_no_plaintext_fallback(served):
    _, address = served
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(address))
    with pytest.raises(grpc.RpcError) as err:  # a plaintext client gets nothing from an mTLS server
        health.Check(health_pb2.HealthCheckRequest(service=""), timeout=3)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_health_serving_over_mtls(served, certs):
    _, address = served
    channel = Security.from_dir("peer-1", certs, False).channel(address, "peer-0")
    reply = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="ckd.v1.PeerService"), timeout=5
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_client_refuses_a_server_with_another_peers_certificate(served, certs):
    _, address = served
    client = GrpcTransport("peer-1", {"peer-2": address}, Security.from_dir("peer-1", certs, False), retries=0)
    with pytest.raises(PeerUnreachable, match="UNAVAILABLE"):  # peer-0's certificate is not peer-2's
        client.get_model("peer-2", 1)


def _header_chunks(batch, **header_over):
    chunks = list(encode_batch(batch))
    for k, v in header_over.items():
        if isinstance(v, dict):
            getattr(chunks[0].header, k).Clear()
            getattr(chunks[0].header, k).MergeFrom(wire_pb2.ArrayInfo(**v))
        else:
            setattr(chunks[0].header, k, v)
    return chunks


def _bad_inputs():
    ok = _batch()
    nan = _batch(distance=np.array([1, np.nan, 1, 1, 1], np.float32))
    inf_x = _batch(x=np.full((5, 8, 8), np.inf, np.float32))
    return {
        "truncated": (
            list(encode_batch(ok))[:-1] + [wire_pb2.ExampleChunk(data=b"\0" * 10)],
            grpc.StatusCode.INVALID_ARGUMENT,
            "truncated stream",
        ),
        "no header": (
            [wire_pb2.ExampleChunk(data=b"\0" * 10)],
            grpc.StatusCode.INVALID_ARGUMENT,
            "does not start with a header",
        ),
        "two headers": (list(encode_batch(ok))[:1] * 2, grpc.StatusCode.INVALID_ARGUMENT, "second header"),
        "overlong": (
            list(encode_batch(ok)) + [wire_pb2.ExampleChunk(data=b"\0")],
            grpc.StatusCode.INVALID_ARGUMENT,
            "more bytes than",
        ),
        "bad dtype": (
            _header_chunks(ok, distance={"name": "distance", "dtype": "complex64", "shape": [5]}),
            grpc.StatusCode.INVALID_ARGUMENT,
            "dtype 'complex64'",
        ),
        "shapes": (
            _header_chunks(ok, y={"name": "y", "dtype": "int64", "shape": [4]}),
            grpc.StatusCode.INVALID_ARGUMENT,
            "shapes do not fit",
        ),
        "input shape": (
            list(encode_batch(_batch(x=np.zeros((5, 7, 7), np.uint8)))),
            grpc.StatusCode.INVALID_ARGUMENT,
            r"input shape \(7, 7\) does not fit \(8, 8\)",
        ),
        "nan": (list(encode_batch(nan)), grpc.StatusCode.INVALID_ARGUMENT, "NaN or infinite"),
        "inf": (list(encode_batch(inf_x)), grpc.StatusCode.INVALID_ARGUMENT, "NaN or infinite"),
        "label range": (
            list(encode_batch(_batch(y=np.array([0, 1, 2, 3, 4])))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "label index out of range",
        ),
        "unknown class": (
            list(encode_batch(_batch(classes=("c0", "c1", "c2", "zebra")))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "unknown class name",
        ),
        "too many": (list(encode_batch(_batch(n=101))), grpc.StatusCode.RESOURCE_EXHAUSTED, "over the cap of 100"),
        "huge claim": (
            _header_chunks(ok, x={"name": "x", "dtype": "float64", "shape": [5, 10**9, 10**9]}),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "exceed the cap",
        ),
        "wrong receiver": (
            list(encode_batch(_batch(receiver="peer-2"))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "addressed to 'peer-2'",
        ),
        "spoofed sender": (
            list(encode_batch(_batch(sender="peer-2"))),
            grpc.StatusCode.PERMISSION_DENIED,
            "claims sender 'peer-2' but the client certificate is 'peer-1'",
        ),
    }


@pytest.mark.parametrize("case", list(_bad_inputs()))
def test_bad_batch_refused_with_status_nothing_stored_and_peer_keeps_serving(served, certs, case):
    servicer, address = served
    chunks, code, message = _bad_inputs()[case]
    stub = _raw_stub(certs, "peer-1", address)
    with pytest.raises(grpc.RpcError) as err:
        stub.PushExamples(iter(chunks), timeout=10)
    assert err.value.code() == code, err.value.details()
    assert re.search(message, err.value.details()), err.value.details()
    assert len(servicer.peer.store) == 0 and servicer.refused
    # still serving: a good batch goes through right after
    assert _client(certs, "peer-1", address).push_examples("peer-0", _batch(seq=9)) is True
    assert len(servicer.peer.store) == 5


def test_unknown_peer_refused(served, certs):
    servicer, address = served
    with pytest.raises(PeerUnreachable, match="PERMISSION_DENIED: unknown peer 'mallory'"):
        _client(certs, "mallory", address).push_examples("peer-0", _batch(sender="mallory"))
    with pytest.raises(PeerUnreachable, match="PERMISSION_DENIED: unknown peer 'mallory'"):
        _client(certs, "mallory", address).get_model("peer-0", 0)
    assert len(servicer.peer.store) == 0


def test_message_over_the_grpc_cap_refused(served, certs):
    servicer, address = served
    stub = _raw_stub(certs, "peer-1", address)
    chunks = list(encode_batch(_batch()))[:1] + [wire_pb2.ExampleChunk(data=b"\0" * (5 << 20))]
    with pytest.raises(grpc.RpcError) as err:
        stub.PushExamples(iter(chunks), timeout=10)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(servicer.peer.store) == 0


def test_blob_whose_arrays_do_not_match_its_spec_is_refused(served, certs):
    servicer, address = served
    good = servicer.peer.learner.to_blob()
    name = next(iter(good.arrays))
    bad = ModelBlob(good.spec, {**good.arrays, name: np.zeros(3, np.float32)})
    servicer.publish(2, bad)
    pulled = _client(certs, "peer-1", address).get_model("peer-0", 2)  # arrives intact ...
    with pytest.raises(InvalidPayload, match=name):  # ... and is refused before any use
        learner_from_blob(pulled)
    nan = ModelBlob(good.spec, {**good.arrays, name: np.full_like(good.arrays[name], np.nan)})
    with pytest.raises(InvalidPayload, match="NaN or infinite"):
        decode_blob(encode_blob(nan, "peer-0", 1))
    not_json = list(encode_blob(good, "peer-0", 1))
    not_json[0].header.spec_json = "{not json"
    with pytest.raises(InvalidPayload, match="spec is not JSON"):
        decode_blob(not_json)


def test_decode_roundtrip_keeps_every_field():
    b = _batch(features=("a", "b"))
    got = decode_batch(encode_batch(b, chunk=100))
    assert got.id == b.id and got.receiver == b.receiver and got.classes == b.classes and got.features == ("a", "b")
    assert np.array_equal(got.x, b.x) and np.array_equal(got.y, b.y) and np.array_equal(got.distance, b.distance)


def test_bytes_that_do_not_parse_refused_as_invalid_argument(served, certs):
    servicer, address = served
    channel = Security.from_dir("peer-1", certs, False).channel(address, "peer-0")
    push = channel.stream_unary(
        "/ckd.v1.PeerService/PushExamples", request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    with pytest.raises(grpc.RpcError) as err:
        push(iter([b"\xff\xff\xff\x01garbage"]), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed message, 11 bytes that do not parse as ExampleChunk" in err.value.details()
    get = channel.unary_stream(
        "/ckd.v1.PeerService/GetModel", request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    with pytest.raises(grpc.RpcError) as err:
        list(get(b"\x0a\xff", timeout=10))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "GetModelRequest" in err.value.details()
    assert len(servicer.peer.store) == 0
    assert _client(certs, "peer-1", address).status("peer-0").peer == "peer-0"  # still serving
