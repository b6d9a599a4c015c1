"""Whole runs over gRPC on real Fashion-MNIST: same accuracies as in-process, and a clean wire."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from peer.config import ExperimentConfig
from peer.grpc.node import Node, NodeConfig
from peer.grpc.tls import Security, make_certs
from peer.grpc.wire import decode_batch
from peer.inprocess import run_experiment
from protos.ckd.v1 import coordinator_pb2, peer_pb2, wire_pb2
from server.cli import main
from server.coordinator import Coordinator, serve_coordinator
from server.results import summarise
from tests.fault_runs import launch
from tests.node_threads import run_in_threads
from tests.results_compare import assert_same_results

pytestmark = pytest.mark.grpc

ROOT = Path(__file__).resolve().parent.parent
# small enough for a test, big enough that every teacher makes and sends counterfactuals
CFG = ExperimentConfig(
    peers=3, rounds=1, train_per_peer=300, epochs=3, retrain_epochs=1, test_limit=1000, max_per_student=60, seed=0
)
CONTROL = (
    peer_pb2.GetModelRequest,
    peer_pb2.StatusRequest,
    peer_pb2.StatusReply,
    peer_pb2.Ack,
    coordinator_pb2.RegisterRequest,
    coordinator_pb2.ListPeersRequest,
    coordinator_pb2.WaitRoundRequest,
    coordinator_pb2.MetricsRequest,
    coordinator_pb2.HeartbeatRequest,
    coordinator_pb2.LeaveRequest,
)


@pytest.fixture(scope="module")
def in_process(fmnist):
    return summarise(run_experiment(CFG, quiet=True, data=fmnist))


def _accuracies(summary: dict) -> dict:
    return {p["id"]: p["accuracy_by_round"] for p in summary["peers"]}


def test_in_process_reference_teaches(in_process):
    assert in_process["counterfactuals"]["made"] > 0 and all(p["received"] > 0 for p in in_process["peers"])


def test_in_process_workers_give_the_results_of_one_peer_at_a_time(fmnist, in_process):
    """Peers trained and teachers teaching in threads at once: the same numbers, peer for peer,
    with mixed learners too (each kind's own draws stay its own)."""
    assert_same_results(summarise(run_experiment(CFG, quiet=True, data=fmnist, workers=3)), in_process)
    mixed = replace(CFG, learners="cnn,mlp,forest")
    one = summarise(run_experiment(mixed, quiet=True, data=fmnist))
    assert_same_results(summarise(run_experiment(mixed, quiet=True, data=fmnist, workers=2)), one)


def test_launch_matches_in_process_with_the_same_seeds(in_process, tmp_path):
    out = tmp_path / "out"
    done = launch(CFG, tmp_path, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((out / "results.json").read_text())
    assert {"accuracy.png", "counterfactuals.png", "results.json"} <= {p.name for p in out.iterdir()}
    assert summary["transport"] == "grpc" and summary["status"] == "ok"
    assert_same_results(summary, in_process)  # one schema, the same numbers as in one process
    wire = summary["wire"]
    assert len(wire["bytes_sent"]) == 3 and min(wire["bytes_sent"]) > 0
    assert wire["payload_bytes"] <= sum(wire["bytes_sent"]) <= 1.1 * wire["payload_bytes"]
    assert wire["refused"] == 0
    # each peer process's memory at its last report: its own (anonymous) and its mapped libraries'
    for peak, now in zip(wire["peak_rss_mb"], wire["resident_mb"]):
        assert now["anonymous_mb"] > 0 and now["file_mb"] > 0
        assert now["anonymous_mb"] + now["file_mb"] == pytest.approx(now["rss_mb"], abs=0.2)
        assert now["rss_mb"] <= peak + 1
    # state: checkpoints and the durable store of received examples, per peer
    state = tmp_path / "state" / "peer-0"
    assert (state / "checkpoints" / "round-1.npz").exists() and (state / "examples.sqlite").exists()


def _run_nodes(fmnist, tmp_path, coordinator: bool, taps: dict, cfg: ExperimentConfig = CFG) -> list[Node]:
    """Three peer nodes in threads, each with its own server, store and certificate."""
    certs = tmp_path / "certs"
    ids = [f"peer-{k}" for k in range(cfg.peers)]
    make_certs(certs, ["coordinator"] + ids)
    server = None
    coord_address = ""
    if coordinator:
        coord = Coordinator(Security.from_dir("coordinator", certs, False), cfg.rounds, cfg.peers, 120)
        server, port = serve_coordinator(coord, "127.0.0.1:0")
        coord_address = f"127.0.0.1:{port}"
    nodes = [
        Node(
            NodeConfig(cfg, k, tmp_path / pid, coordinator=coord_address, round_deadline=120),
            Security.from_dir(pid, certs, False),
            data=fmnist,
        )
        for k, pid in enumerate(ids)
    ]
    if not coordinator:
        for n in nodes:
            n.addresses = {m.id: m.address for m in nodes}
    for n in nodes:
        n.meter.taps.append(lambda kind, msg, pid=n.id: taps.setdefault(pid, []).append((kind, msg)))
    errors = run_in_threads(nodes, timeout=240)
    if server is not None:
        server.stop(grace=0)
    assert not errors, errors
    return nodes


def test_wire_carries_only_weights_and_synthetic_examples(fmnist, tmp_path, in_process):
    taps: dict[str, list] = {}
    nodes = _run_nodes(fmnist, tmp_path, coordinator=True, taps=taps)
    assert _rounded_equal(nodes, in_process)
    examples_seen = 0
    for n in nodes:
        private = n.peer.x
        private_u8 = np.round(private * 255).astype(np.uint8).reshape(len(private), -1)
        needles = [row.tobytes() for row in private_u8] + [row.tobytes() for row in private.reshape(len(private), -1)]
        sent = taps[n.id]
        assert sent, n.id
        streams: list[list] = []
        for kind, msg in sent:
            if kind == "model":
                assert isinstance(msg, wire_pb2.ModelChunk)
            elif kind == "examples":
                assert isinstance(msg, wire_pb2.ExampleChunk)
                if msg.WhichOneof("part") == "header":
                    streams.append([])
                streams[-1].append(msg)
            else:
                assert kind == "control" and isinstance(msg, CONTROL), type(msg)
            raw = msg.SerializeToString()
            assert not any(needle in raw for needle in needles), f"{n.id} sent a private example in a {kind} message"
        # decoded: every batch is synthetic, none equals one of the sender's private examples
        assert streams, f"{n.id} pushed no examples"
        private_set = {row.tobytes() for row in private_u8}
        for chunks in streams:
            batch = decode_batch(chunks)
            assert batch.sender == n.id and batch.x.dtype == np.uint8
            rows = batch.x.reshape(len(batch.x), -1)
            assert not any(row.tobytes() in private_set for row in rows)
            examples_seen += len(batch)
        # model streams (pulls may interleave) carry exactly the learner's parameters, nothing more
        model_chunks = [m for k, m in sent if k == "model"]
        headers = [m.header for m in model_chunks if m.WhichOneof("part") == "header"]
        assert len(headers) == CFG.peers - 1  # every other peer pulled this one's model once
        names = set(n.peer.learner.module.state_dict())
        assert all(h.peer == n.id and {a.name for a in h.arrays} == names for h in headers)
        expected = sum(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize for h in headers for a in h.arrays)
        assert sum(len(m.data) for m in model_chunks) == expected
    assert examples_seen == sum(p["received"] for p in in_process["peers"])


def test_compact_encodings_travel_as_sent_and_are_stored_exactly(fmnist, tmp_path):
    """int8 rank-16 models and 16-level images over real gRPC: each student's durable store holds
    bit for bit the batches its teachers pushed, and the bytes counted are what the wire carried."""
    cfg = replace(CFG, blob_precision="int8", blob_rank=16, example_precision="uint4")
    taps: dict[str, list] = {}
    nodes = _run_nodes(fmnist, tmp_path, coordinator=True, taps=taps, cfg=cfg)
    pushed: dict[tuple, object] = {}
    for n in nodes:
        streams: list[list] = []
        for kind, msg in taps[n.id]:
            if kind == "examples":
                if msg.WhichOneof("part") == "header":
                    streams.append([])
                streams[-1].append(msg)
        for chunks in streams:
            assert chunks[0].header.levels == 15
            m = int(np.prod(chunks[0].header.x.shape[1:]))
            n_examples = chunks[0].header.x.shape[0]
            data = sum(len(c.data) for c in chunks[1:])
            classes = len(chunks[0].header.classes)
            # two pixels a byte, int64 label, float32 distance, a byte a class of the teacher's probabilities
            assert data == n_examples * ((m + 1) // 2 + 8 + 4 + classes)
            batch = decode_batch(chunks)
            pushed[(batch.receiver, *batch.id)] = batch
        headers = [m.header for k, m in taps[n.id] if k == "model" and m.WhichOneof("part") == "header"]
        assert headers and all(json.loads(h.spec_json)["precision"] == "int8" for h in headers)
        assert all({"6.weight@a", "6.weight@b"} <= {a.name for a in h.arrays} for h in headers)
        wire = n.wire()
        assert wire["bytes_sent"] == sum(wire["by_kind"].values())
        assert sum(wire["payload_by_kind"].values()) == wire["payload_bytes"]
    assert pushed
    stored = {(n.id, *b.id): b for n in nodes for b in n.peer.store.batches()}
    assert set(stored) == set(pushed)
    for key, batch in pushed.items():
        got = stored[key]
        assert got.levels == 15 and got.x.dtype == np.uint8 and got.x.max() <= 15
        for name in ("x", "y", "distance"):
            np.testing.assert_array_equal(getattr(got, name), getattr(batch, name))
        np.testing.assert_array_equal(got.inputs(), batch.inputs())


def _rounded_equal(nodes, in_process) -> bool:
    got = {n.id: [round(n.metrics[r]["record"]["evaluation"]["accuracy"], 4) for r in sorted(n.metrics)] for n in nodes}
    return got == _accuracies(in_process)


def test_static_peer_list_without_coordinator(fmnist, tmp_path, in_process):
    nodes = _run_nodes(fmnist, tmp_path, coordinator=False, taps={})
    assert _rounded_equal(nodes, in_process)
    assert [n.metrics[1]["stored_examples"] for n in nodes] == [p["received"] for p in in_process["peers"]]
    # a peer restarted on its state directory picks up its last model, store and metrics
    again = Node(
        NodeConfig(CFG, 0, tmp_path / "peer-0"), Security.from_dir("peer-0", tmp_path / "certs", False), data=fmnist
    )
    try:
        assert again.resume() == 1
        assert len(again.peer.store) == nodes[0].metrics[1]["stored_examples"] > 0
        assert again.peer.evaluate(again.test_x, again.test_y) == nodes[0].metrics[1]["record"]["evaluation"]
    finally:
        again.stop()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["peer", "--coordinator", "127.0.0.1:1"], "mutual TLS needs --certs DIR"),
        (["peer", "--insecure"], "give --coordinator HOST:PORT or a static --peers"),
        (["peer", "--insecure", "--peers", "peer-0=nohost"], "bad --peers entry"),
        (["peer", "--insecure", "--peers", "peer-1=h:1,peer-2=h:2"], "does not name this peer (peer-0)"),
        (["peer", "--insecure", "--coordinator", "h:1", "--learner", "svm"], "unknown --learner 'svm'"),
        (["peer", "--insecure", "--coordinator", "h:1", "--listen", "0.0.0.0:5000"], "give --advertise"),
        (["certs", "--out", "{tmp}/c"], "name no certificates"),
        (["certs", "--out", "{tmp}/c", "--names", "bad name!"], "bad peer name"),
        (["certs", "--out", "{tmp}/o", "--names", "superlink", "--hosts", "10.0.0.5,bad host"], "bad host 'bad host'"),
        (["launch", "--peers", "1", "--out", "{tmp}/o"], "--peers must be at least 2"),
        (["server", "--rounds", "-1", "--insecure", "--out", "{tmp}/s"], "--rounds must be >= 0"),
        (["demo", "--workers", "0", "--out", "{tmp}/o"], "--threads and --workers must be >= 1"),
    ],
)
def test_bad_command_lines_exit_2_with_one_line(argv, message, tmp_path, capsys):
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o").exists() and not (tmp_path / "s").exists()


def test_certs_name_the_peer(tmp_path):
    from cryptography import x509

    assert main(["certs", "--out", str(tmp_path), "--peers", "2"]) == 0
    cert = x509.load_pem_x509_certificate((tmp_path / "peer-1.pem").read_bytes())
    assert cert.subject.rfc4514_string() == "CN=peer-1"
    assert oct((tmp_path / "peer-1.key").stat().st_mode)[-3:] == "600"
    assert {p.name for p in tmp_path.iterdir()} >= {"ca.pem", "ca.key", "coordinator.pem", "peer-0.key"}


def test_certs_hosts_are_subject_alternative_names(tmp_path):
    """A server reached by address (a Flower SuperLink) needs that address in its certificate."""
    import ipaddress

    from cryptography import x509

    assert (
        main(
            ["certs", "--out", str(tmp_path), "--names", "superlink", "--hosts", "10.0.0.5, superlink.example.org,::1"]
        )
        == 0
    )
    cert = x509.load_pem_x509_certificate((tmp_path / "superlink.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["superlink", "superlink.example.org"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5"), ipaddress.ip_address("::1")]


def test_launch_stops_every_peer_and_writes_nothing_when_a_peer_fails(tiny_idx_dir, tmp_path):
    from tests.conftest import write_idx

    write_idx(tiny_idx_dir / "t10k-labels-idx1-ubyte.gz", np.full(20, 12, np.uint8))  # labels out of range
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "server.cli",
            "launch",
            "--peers",
            "2",
            "--data-dir",
            str(tiny_idx_dir),
            "--out",
            str(out),
            "--state-dir",
            str(tmp_path / "state"),
            "--insecure",
            "--quiet",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and "exited with code 2" in err[0] and "labels outside 0..9" in err[0], err
    assert not out.exists()


class Crash(Exception):
    pass


def test_peer_restarted_mid_run_rejoins_and_the_run_matches_in_process(fmnist, tmp_path, in_process):
    certs = tmp_path / "certs"
    ids = [f"peer-{k}" for k in range(CFG.peers)]
    make_certs(certs, ["coordinator"] + ids)
    coord = Coordinator(Security.from_dir("coordinator", certs, False), CFG.rounds, CFG.peers, 120)
    server, port = serve_coordinator(coord, "127.0.0.1:0")

    def node(k):
        return Node(
            NodeConfig(CFG, k, tmp_path / ids[k], coordinator=f"127.0.0.1:{port}", round_deadline=120),
            Security.from_dir(ids[k], certs, False),
            data=fmnist,
        )

    nodes = [node(k) for k in range(CFG.peers)]
    report = nodes[2]._report

    def crash_after_round_0(round, data):
        report(round, data)
        raise Crash  # dies after local training, before it publishes round 1

    nodes[2]._report = crash_after_round_0
    errors = []

    def run(n):
        try:
            n.run()
        except Exception as exc:  # noqa: BLE001
            errors.append((n.id, exc))

    threads = {n.id: threading.Thread(target=run, args=(n,)) for n in nodes}
    for t in threads.values():
        t.start()
    threads["peer-2"].join(timeout=120)
    assert [type(e) for _, e in errors] == [Crash]
    nodes[2].stop()
    restarted = node(2)  # a new process on the same state directory, at a new port
    assert restarted.address != nodes[2].address
    threads["again"] = threading.Thread(target=run, args=(restarted,))
    threads["again"].start()
    for t in threads.values():
        t.join(timeout=240)
    for n in (nodes[0], nodes[1], restarted):
        n.stop()
    server.stop(grace=0)
    assert len(errors) == 1, errors
    assert restarted.metrics[0] == nodes[2].metrics[0] and sorted(restarted.metrics) == [0, 1]
    assert _rounded_equal([nodes[0], nodes[1], restarted], in_process)
