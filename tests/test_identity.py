"""Identity over real mutual TLS on loopback: who may talk to a peer and to the coordinator.

The peer and coordinator run in a process of their own (tests/hostile_server.py) so the test can
read what they log: every refusal must say so there and in the status the client gets, none silent.
Refused: no client certificate, one from another CA, an expired one, a revoked one (crl.pem from
`ckd certs --revoke`), a valid one whose holder claims another peer in a message field, and at a
coordinator given the names to expect, any other name.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from peer.errors import UsageError
from peer.grpc.tls import CRL_FILE, Security, make_certs, revoke
from peer.grpc.wire import encode_batch
from protos.ckd.v1 import coordinator_pb2 as cpb
from protos.ckd.v1 import coordinator_pb2_grpc, peer_pb2, peer_pb2_grpc
from server.cli import main as ckd
from tests import hostile_server
from tests.fuzz_cases import good_batch

pytestmark = pytest.mark.grpc
ROOT = Path(__file__).resolve().parents[1]


def expired_cert(certs: Path, name: str) -> None:
    """NAME.pem and NAME.key signed by the CA in `certs`, valid for a day that ended yesterday."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ca_key = serialization.load_pem_private_key((certs / "ca.key").read_bytes(), password=None)
    ca = x509.load_pem_x509_certificate((certs / "ca.pem").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=2))
        .not_valid_after(now - dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # type: ignore[arg-type]
    (certs / f"{name}.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (certs / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """certs (peer-2 revoked with `ckd certs --revoke`, peer-3 expired), a CA of strangers, the
    peer and coordinator process; yields (certs, other CA's certs, ports, process, stderr path)."""
    base = tmp_path_factory.mktemp("identity")
    certs, other = base / "certs", base / "other"
    make_certs(certs, ["coordinator", "peer-0", "peer-1", "peer-2", "mallory"])
    make_certs(other, ["peer-1"])
    assert ckd(["certs", "--out", str(certs), "--revoke", "peer-2"]) == 0
    expired_cert(certs, "peer-3")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRPC_")}  # gRPC's default logging
    stderr = base / "server.log"
    with open(stderr, "w") as err:
        proc = hostile_server.start(certs, base / "state", err, env)
    try:
        ports = json.loads(proc.stdout.readline())
        yield certs, other, ports, proc, stderr
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)


def _stats(proc) -> dict:
    proc.stdin.write("stats\n")
    proc.stdin.flush()
    return json.loads(proc.stdout.readline())


def _logged(stderr: Path, text: str, timeout: float = 10.0) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if text in stderr.read_text():
            return True
        time.sleep(0.1)
    return False


def _channel(port: int, server: str, ca: bytes, key: bytes | None = None, cert: bytes | None = None):
    creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    return grpc.secure_channel(f"127.0.0.1:{port}", creds, options=[("grpc.ssl_target_name_override", server)])


def _as(certs: Path, name: str, port: int, server: str = "peer-0", key_dir: Path | None = None):
    ca = (certs / "ca.pem").read_bytes()
    d = key_dir or certs
    return _channel(port, server, ca, (d / f"{name}.key").read_bytes(), (d / f"{name}.pem").read_bytes())


def _health(channel) -> grpc.RpcError | None:
    try:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    except grpc.RpcError as exc:
        return exc
    return None


def _push(channel, batch) -> peer_pb2.Ack:
    return peer_pb2_grpc.PeerServiceStub(channel).PushExamples(encode_batch(batch), timeout=10)


@pytest.mark.parametrize(
    "case, server_log",
    [
        ("no client certificate", "PEER_DID_NOT_RETURN_A_CERTIFICATE"),
        ("another CA", "certificate signature failure"),
        ("expired", "certificate has expired"),
    ],
)
def test_refused_at_the_handshake_and_logged(world, case, server_log):
    certs, other, ports, proc, stderr = world
    ca = (certs / "ca.pem").read_bytes()
    for port, server in ((ports["peer"], "peer-0"), (ports["coordinator"], "coordinator")):
        if case == "no client certificate":
            channel = _channel(port, server, ca)
        elif case == "another CA":
            channel = _as(certs, "peer-1", port, server, key_dir=other)
        else:
            channel = _as(certs, "peer-3", port, server)
        err = _health(channel)
        assert err is not None and err.code() == grpc.StatusCode.UNAVAILABLE, case
        with pytest.raises(grpc.RpcError) as push:
            _push(channel, good_batch(3, 0))
        assert push.value.code() == grpc.StatusCode.UNAVAILABLE
        channel.close()
    assert _logged(stderr, server_log), stderr.read_text()[-2000:]
    assert _stats(proc)["batches_stored"] == 0
    assert _health(_as(certs, "peer-1", ports["peer"])) is None  # a valid peer still gets through


def test_valid_certificate_claiming_another_peer_is_refused(world):
    certs, _, ports, proc, stderr = world
    peer1 = _as(certs, "peer-1", ports["peer"])
    with pytest.raises(grpc.RpcError) as err:
        _push(peer1, good_batch(3, 1).__class__(**{**good_batch(3, 1).__dict__, "sender": "mallory"}))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "claims sender 'mallory' but the client certificate is 'peer-1'" in err.value.details()
    assert _logged(stderr, "claims sender 'mallory' but the client certificate is 'peer-1'")
    with pytest.raises(grpc.RpcError) as err:
        list(
            peer_pb2_grpc.PeerServiceStub(peer1).GetModel(
                peer_pb2.GetModelRequest(requester="peer-0", round=1), timeout=10
            )
        )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    coord = coordinator_pb2_grpc.CoordinatorServiceStub(_as(certs, "peer-1", ports["coordinator"], "coordinator"))
    with pytest.raises(grpc.RpcError) as err:
        coord.Register(cpb.RegisterRequest(peer="peer-0", address="127.0.0.1:1"), timeout=10)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "request names peer 'peer-0' but the client certificate is 'peer-1'" in err.value.details()
    assert _logged(stderr, "coordinator refused a call")
    stats = _stats(proc)
    assert stats["batches_stored"] == 0 and "peer-0" not in stats["coordinator_peers"]
    assert _push(peer1, good_batch(3, 2)).stored  # as itself, peer-1 is welcome


def test_revoked_certificate_is_refused_on_every_call(world):
    certs, _, ports, proc, stderr = world
    assert (certs / CRL_FILE).is_file()
    peer2 = _as(certs, "peer-2", ports["peer"])
    before = _stats(proc)
    calls = {
        "PushExamples": lambda: _push(
            peer2, good_batch(3, 3).__class__(**{**good_batch(3, 3).__dict__, "sender": "peer-2"})
        ),
        "GetModel": lambda: list(
            peer_pb2_grpc.PeerServiceStub(peer2).GetModel(
                peer_pb2.GetModelRequest(requester="peer-2", round=1), timeout=10
            )
        ),
        "Status": lambda: peer_pb2_grpc.PeerServiceStub(peer2).Status(peer_pb2.StatusRequest(), timeout=10),
    }
    for name, call in calls.items():
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, name
        assert "client certificate of 'peer-2'" in err.value.details() and "is revoked" in err.value.details()
    coord = coordinator_pb2_grpc.CoordinatorServiceStub(_as(certs, "peer-2", ports["coordinator"], "coordinator"))
    with pytest.raises(grpc.RpcError) as err:
        coord.Register(cpb.RegisterRequest(peer="peer-2", address="127.0.0.1:1"), timeout=10)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "is revoked" in err.value.details()
    assert _logged(stderr, "is revoked")
    after = _stats(proc)
    assert after["batches_stored"] == before["batches_stored"] and "peer-2" not in after["coordinator_peers"]
    assert after["peer_refused"] >= before["peer_refused"] + 3 and after["coordinator_refused"] > 0


def test_revoked_peer_cannot_start_and_a_forged_list_is_refused(world, tmp_path):
    certs = world[0]
    with pytest.raises(UsageError, match="peer-2.pem is revoked"):
        Security.from_dir("peer-2", certs, False)
    assert Security.from_dir("peer-1", certs, False).revoked  # the others load the list
    # a list signed by another CA would let whoever hands it out revoke anyone: refused at start
    forged = tmp_path / "forged"
    make_certs(forged, ["peer-1", "peer-0"])
    revoke(forged, ["peer-0"])
    (tmp_path / "certs").mkdir()
    for f in ("ca.pem", "peer-1.pem", "peer-1.key"):
        (tmp_path / "certs" / f).write_bytes((certs / f).read_bytes())
    (tmp_path / "certs" / CRL_FILE).write_bytes((forged / CRL_FILE).read_bytes())
    with pytest.raises(UsageError, match="not signed by the CA"):
        Security.from_dir("peer-1", tmp_path / "certs", False)
    with pytest.raises(UsageError, match="no certificate"):
        revoke(certs, ["nobody"])


def test_coordinator_refuses_names_it_does_not_expect(world):
    certs, _, ports, proc, stderr = world
    coord = coordinator_pb2_grpc.CoordinatorServiceStub(_as(certs, "mallory", ports["coordinator"], "coordinator"))
    for call in (
        lambda: coord.Register(cpb.RegisterRequest(peer="mallory", address="127.0.0.1:1"), timeout=10),
        lambda: coord.ListPeers(cpb.ListPeersRequest(), timeout=10),
        lambda: coord.Heartbeat(cpb.HeartbeatRequest(peer="mallory"), timeout=10),
    ):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "'mallory' is not one of the 4 peers this run expects" in err.value.details()
    assert _logged(stderr, "'mallory' is not one of the 4 peers this run expects")
    assert "mallory" not in _stats(proc)["coordinator_peers"]
    ok = coordinator_pb2_grpc.CoordinatorServiceStub(_as(certs, "peer-1", ports["coordinator"], "coordinator"))
    assert ok.Register(cpb.RegisterRequest(peer="peer-1", address="127.0.0.1:1"), timeout=10).rounds == 2


def test_server_command_takes_the_names_to_expect(capsys):
    assert ckd(["server", "--insecure", "--expect-peers", "peer-0,peer-1", "--min-peers", "3"]) == 2
    assert "--expect-peers names 2 peers, fewer than --min-peers 3" in capsys.readouterr().err
    assert ckd(["server", "--insecure", "--expect-peers", "peer-0,bad name!"]) == 2
    assert "bad peer name 'bad name!'" in capsys.readouterr().err


def test_over_plaintext_the_claimed_sender_must_be_known(tmp_path):
    """--insecure runs have no certificates: a known sender's batch is stored, an unknown one refused."""
    import numpy as np

    from peer.core.peer import Peer
    from peer.core.sqlstore import SqliteExampleStore
    from peer.grpc.service import PeerServicer, serve_peer
    from peer.grpc.transport import GrpcTransport, PeerUnreachable
    from peer.learners import TrainConfig, make_learner
    from tests.fuzz_cases import CLASSES, SHAPE

    learner = make_learner("mlp", SHAPE, CLASSES, TrainConfig(epochs=1, seed=0))
    peer = Peer(
        "peer-0",
        np.zeros((4, *SHAPE), np.float32),
        np.arange(4) % 4,
        CLASSES,
        learner,
        store=SqliteExampleStore(tmp_path / "examples.sqlite"),
    )
    servicer = PeerServicer(peer, Security("peer-0"), known={"peer-0", "peer-1"})
    server, port = serve_peer(servicer, "127.0.0.1:0", workers=2)
    try:
        client = GrpcTransport("peer-1", {"peer-0": f"127.0.0.1:{port}"}, Security("peer-1"), retries=0)
        assert client.push_examples("peer-0", good_batch(3, 0)) is True
        with pytest.raises(PeerUnreachable, match="PERMISSION_DENIED: unknown peer 'mallory'"):
            client.push_examples(
                "peer-0", good_batch(3, 1).__class__(**{**good_batch(3, 1).__dict__, "sender": "mallory"})
            )
        assert peer.store.batch_count() == 1
        client.close()
    finally:
        server.stop(grace=0).wait()
        peer.store.close()
