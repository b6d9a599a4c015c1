"""The coordinator on a real loopback port: membership, identity, the barrier and its deadline."""

from __future__ import annotations

import json
import time

import grpc
import pytest

from peer.core.fanout import Profile, by_teacher, plan
from peer.grpc.tls import Security, make_certs
from protos.ckd.v1 import coordinator_pb2 as pb
from protos.ckd.v1 import coordinator_pb2_grpc
from server.coordinator import Coordinator, serve_coordinator
from tests.coordinator_calls import wait_all

pytestmark = pytest.mark.grpc


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    make_certs(d, ["coordinator", "peer-0", "peer-1"])
    return d


def _serving(c: Coordinator, certs) -> tuple:
    """Serve `c` on a free loopback port: (server, peer id -> its CoordinatorServiceStub, over mTLS)."""
    server, port = serve_coordinator(c, "127.0.0.1:0")
    stubs = {
        p: coordinator_pb2_grpc.CoordinatorServiceStub(
            Security.from_dir(p, certs, False).channel(f"127.0.0.1:{port}", "coordinator")
        )
        for p in ("peer-0", "peer-1")
    }
    return server, stubs


@pytest.fixture
def coord(certs):
    c = Coordinator(Security.from_dir("coordinator", certs, False), rounds=2, min_peers=2, round_deadline=1.5)
    server, stubs = _serving(c, certs)
    yield c, stubs
    server.stop(grace=0)


def _start(coord):
    c, stubs = coord
    for p, stub in stubs.items():
        assert stub.Register(pb.RegisterRequest(peer=p, address=f"{p}:1"), timeout=5).rounds == 2
    return wait_all(stubs, 0, pb.STAGE_READY, timeout=10)


def test_ready_barrier_waits_for_everyone_and_lists_them(coord):
    replies = _start(coord)
    assert all(list(r.arrived) == ["peer-0", "peer-1"] and not r.timed_out for r in replies.values())
    peers = coord[1]["peer-0"].ListPeers(pb.ListPeersRequest(), timeout=5).peers
    assert [(p.id, p.address) for p in peers] == [("peer-0", "peer-0:1"), ("peer-1", "peer-1:1")]


def test_slow_peer_skipped_at_the_round_deadline(coord):
    c, stubs = coord
    _start(coord)
    # peer-1 is alive (heartbeats within 30 s) but never arrives: peer-0 is released by the
    # round deadline (1.5 s), well before its call's own 10 s timeout, and told so
    reply = stubs["peer-0"].WaitRound(pb.WaitRoundRequest(peer="peer-0", round=1, stage=pb.STAGE_PUBLISHED), timeout=10)
    assert reply.timed_out and list(reply.arrived) == ["peer-0"]
    assert c.skipped() == [{"round": 1, "stage": "published", "skipped": ["peer-1"]}]
    # arriving after the deadline does not reopen the barrier: peer-1 is answered at once, timed out
    late = stubs["peer-1"].WaitRound(pb.WaitRoundRequest(peer="peer-1", round=1, stage=pb.STAGE_PUBLISHED), timeout=10)
    assert late.timed_out


def _wait(stubs, peer: str, round: int, stage) -> pb.WaitRoundReply:
    return stubs[peer].WaitRound(pb.WaitRoundRequest(peer=peer, round=round, stage=stage), timeout=10)


def _skip_peer_1_in_round_1(coord) -> None:
    """peer-1 misses round 1's `published` barrier (released on the deadline), then both go on."""
    c, stubs = coord
    _start(coord)
    assert _wait(stubs, "peer-0", 1, pb.STAGE_PUBLISHED).timed_out
    _wait(stubs, "peer-1", 1, pb.STAGE_PUBLISHED)  # late: it teaches, but nobody taught it
    wait_all(stubs, 1, pb.STAGE_TAUGHT)
    assert c.owed(1) == {"peer-1": 1}


def test_a_peer_skipped_as_a_student_is_owed_a_make_up_round(coord):
    c, stubs = coord
    _skip_peer_1_in_round_1(coord)
    for stage in (pb.STAGE_PUBLISHED, pb.STAGE_TAUGHT):
        assert not any(r.timed_out for r in wait_all(stubs, 2, stage).values())
    done = wait_all(stubs, 2, pb.STAGE_DONE)
    # the 2 rounds asked are done, but peer-1 was taught in one: round 3 is a make-up round for it
    assert all(r.stopped == "" and list(r.makeup) == ["peer-1"] for r in done.values())
    assert not c.finished.is_set() and c.last_round() is None and c.makeup_students(3) == ["peer-1"]
    for stage in (pb.STAGE_PUBLISHED, pb.STAGE_TAUGHT):
        wait_all(stubs, 3, stage)
    assert c.owed(3) == {}
    done = wait_all(stubs, 3, pb.STAGE_DONE)
    assert all(list(r.makeup) == [] for r in done.values())
    assert {r.stopped for r in done.values()} == {"2 rounds asked, then 1 make-up round for peers skipped before"}
    assert c.finished.is_set() and c.last_round() == 3 and c.stopped() == done["peer-0"].stopped


def test_make_up_rounds_stop_at_their_cap_and_can_be_turned_off(certs):
    for cap in (0, 1):
        c = Coordinator(Security.from_dir("coordinator", certs, False), 1, 2, round_deadline=1.0, makeup_rounds=cap)
        server, stubs = _serving(c, certs)
        try:
            for p, stub in stubs.items():
                stub.Register(pb.RegisterRequest(peer=p, address=f"{p}:1"), timeout=5)
            wait_all(stubs, 0, pb.STAGE_READY)
            for r in range(1, cap + 2):  # peer-1 late at every `published` barrier, the make-up round's too
                assert _wait(stubs, "peer-0", r, pb.STAGE_PUBLISHED).timed_out
                _wait(stubs, "peer-1", r, pb.STAGE_PUBLISHED)
                wait_all(stubs, r, pb.STAGE_TAUGHT)
                done = wait_all(stubs, r, pb.STAGE_DONE)
                assert list(done["peer-0"].makeup) == (["peer-1"] if r <= cap else [])
            assert c.owed(cap + 1) == {"peer-1": 1}  # still owed, but the cap is reached
            assert c.last_round() == cap + 1
            assert c.stopped() == "1 round asked" + (", then 1 make-up round for peers skipped before" if cap else "")
            with pytest.raises(grpc.RpcError) as err:  # no round past the cap
                _wait(stubs, "peer-0", cap + 2, pb.STAGE_PUBLISHED)
            assert err.value.code() == grpc.StatusCode.OUT_OF_RANGE
        finally:
            server.stop(grace=0)


def test_a_make_up_round_survives_a_coordinator_restart(certs, tmp_path):
    c = Coordinator(Security.from_dir("coordinator", certs, False), 2, 2, round_deadline=1.5, state_dir=tmp_path)
    server, stubs = _serving(c, certs)
    try:
        _skip_peer_1_in_round_1((c, stubs))
        for stage in (pb.STAGE_PUBLISHED, pb.STAGE_TAUGHT, pb.STAGE_DONE):
            wait_all(stubs, 2, stage)
    finally:
        server.stop(grace=0)
    again = Coordinator(Security.from_dir("coordinator", certs, False), 2, 2, round_deadline=1.5, state_dir=tmp_path)
    assert again.makeup_students(3) == ["peer-1"] and again.last_round() is None and not again.finished.is_set()


def test_the_coordinator_serves_on_until_every_peer_heard_the_run_end(coord):
    """Arriving at the last barrier is not hearing its reply (it may be lost on a dying connection):
    the coordinator waits for each peer still alive to leave, and answers a peer that asks the
    last barrier again."""
    c, stubs = coord
    _start(coord)
    for r in (1, 2):
        for stage in (pb.STAGE_PUBLISHED, pb.STAGE_TAUGHT):
            wait_all(stubs, r, stage)
        for p, stub in stubs.items():
            stub.ReportMetrics(pb.MetricsRequest(peer=p, round=r - 1, json="{}"), timeout=5)
    for p, stub in stubs.items():
        stub.ReportMetrics(pb.MetricsRequest(peer=p, round=2, json="{}"), timeout=5)
    done = wait_all(stubs, 2, pb.STAGE_DONE)
    assert c.finished.is_set() and all(r.stopped == "2 rounds asked" for r in done.values())
    assert c.missing_reports() == ["peer-0", "peer-1"]  # both arrived and reported, neither left
    again = _wait(stubs, "peer-0", 2, pb.STAGE_DONE)  # as after a lost reply: answered at once, the same
    assert again.stopped == "2 rounds asked" and list(again.arrived) == ["peer-0", "peer-1"]
    stubs["peer-0"].Leave(pb.LeaveRequest(peer="peer-0"), timeout=5)
    assert c.missing_reports() == ["peer-1"]
    c.heartbeat_timeout = 0.5  # a peer silent that long is not waited for, left or not
    time.sleep(0.6)
    assert c.missing_reports() == []


def test_silent_peer_not_waited_for(coord):
    c, stubs = coord
    _start(coord)
    c.heartbeat_timeout = 0.5
    time.sleep(0.6)
    stubs["peer-0"].Heartbeat(pb.HeartbeatRequest(peer="peer-0"), timeout=5)
    reply = stubs["peer-0"].WaitRound(pb.WaitRoundRequest(peer="peer-0", round=1, stage=pb.STAGE_TAUGHT), timeout=10)
    # released because everyone alive arrived, not by the round deadline
    assert not reply.timed_out and list(reply.arrived) == ["peer-0"]
    assert c.skipped() == []


def test_a_coordinator_that_never_saw_the_run_start_refuses_peers_past_it(coord):
    """As after a restart without --state-dir: registered again, a peer waiting at round 1 is told
    why the run cannot go on here; the coordinator gives up once every registered peer heard it."""
    c, stubs = coord
    for p, stub in stubs.items():
        stub.Register(pb.RegisterRequest(peer=p, address=f"{p}:1"), timeout=5)
    request = pb.WaitRoundRequest(peer="peer-0", round=1, stage=pb.STAGE_PUBLISHED)
    with pytest.raises(grpc.RpcError) as err:
        stubs["peer-0"].WaitRound(request, timeout=5)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "peer-0 waits at round 1 (published)" in err.value.details()
    assert "restarted without --state-dir" in err.value.details()
    assert c.barriers == {} and c.given_up() is None  # peer-1 has not heard it yet
    with pytest.raises(grpc.RpcError) as err:
        stubs["peer-1"].WaitRound(pb.WaitRoundRequest(peer="peer-1", round=1, stage=pb.STAGE_TAUGHT), timeout=5)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert c.given_up() is not None and "no record of the run's start" in c.given_up()


def test_identity_and_unknown_peers_refused(coord):
    c, stubs = coord
    with pytest.raises(grpc.RpcError) as err:  # peer-0's certificate, peer-1's name
        stubs["peer-0"].Register(pb.RegisterRequest(peer="peer-1", address="x:1"), timeout=5)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "certificate is 'peer-0'" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:  # not registered yet
        stubs["peer-1"].WaitRound(pb.WaitRoundRequest(peer="peer-1", round=0, stage=pb.STAGE_READY), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "unknown peer 'peer-1'" in err.value.details()
    _start(coord)
    with pytest.raises(grpc.RpcError) as err:
        stubs["peer-0"].ReportMetrics(pb.MetricsRequest(peer="peer-0", round=0, json="{oops"), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not JSON" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        stubs["peer-0"].WaitRound(pb.WaitRoundRequest(peer="peer-0", round=7, stage=pb.STAGE_DONE), timeout=5)
    assert err.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert c.metrics == {}


def test_bytes_that_do_not_parse_are_refused_as_invalid_argument(certs):
    c = Coordinator(Security.from_dir("coordinator", certs, False), rounds=1, min_peers=2)
    server, port = serve_coordinator(c, "127.0.0.1:0")
    try:
        channel = Security.from_dir("peer-0", certs, False).channel(f"127.0.0.1:{port}", "coordinator")
        for method in ("Register", "Heartbeat", "ListPeers", "WaitRound", "ReportMetrics"):
            call = channel.unary_unary(
                f"/ckd.v1.CoordinatorService/{method}",
                request_serializer=lambda b: b,
                response_deserializer=lambda b: b,
            )
            with pytest.raises(grpc.RpcError) as err:
                call(b"\xff\xff\xff\x01garbage", timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
            assert "malformed message, 11 bytes that do not parse as" in err.value.details(), method
        assert c.peers == {}  # nothing registered
    finally:
        server.stop(grace=0)


def _profile_json(accuracy: list) -> str:
    return json.dumps({"classes": ["a", "b", "c"], "profile": {"accuracy": accuracy, "on": "validation"}})


def test_published_barrier_hands_each_peer_its_students_under_the_fanout_plan(tmp_path):
    """With --fanout the peers send their profiles with their arrival at `published`, and the
    coordinator answers each with its students under peer.core.fanout's plan: no peer has to pull
    every other's model header. A coordinator restarted from its state gives a peer that asks
    again the same students."""
    ids = [f"peer-{k}" for k in range(5)]
    accuracy = {
        "peer-0": [0.9, 0.1, None],
        "peer-1": [0.2, 0.95, 0.3],
        "peer-2": [None, 0.4, 0.9],
        "peer-3": [0.5, 0.5, 0.5],
        "peer-4": [0.8, None, 0.7],
    }
    c = Coordinator(Security("coordinator"), rounds=2, min_peers=5, round_deadline=30, state_dir=tmp_path)
    server, port = serve_coordinator(c, "127.0.0.1:0")
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stubs = {p: coordinator_pb2_grpc.CoordinatorServiceStub(channel) for p in ids}
        for p, stub in stubs.items():
            stub.Register(pb.RegisterRequest(peer=p, address=f"{p}:1"), timeout=5)
        wait_all(stubs, 0, pb.STAGE_READY)
        extra = {p: {"fanout": 2, "profile_json": _profile_json(a)} for p, a in accuracy.items()}
        replies = wait_all(stubs, 1, pb.STAGE_PUBLISHED, extra=extra)
        profiles = {p: Profile(("a", "b", "c"), tuple(a)) for p, a in accuracy.items()}
        expected = by_teacher(plan(profiles, 2))
        assert all(r.planned for r in replies.values())
        assert {p: sorted(r.students) for p, r in replies.items()} == expected
        # every student is taught by 2 of the 4 others, not by all of them
        assert sorted(sum(expected.values(), [])) == sorted(ids * 2)
        # without a fan-out the reply plans nothing (the peer teaches whom it was given)
        plain = wait_all(stubs, 1, pb.STAGE_TAUGHT)
        assert not any(r.planned or r.students for r in plain.values())
        # a malformed profile is refused, and the barrier does not count that arrival
        with pytest.raises(grpc.RpcError) as refused:
            stubs["peer-0"].WaitRound(
                pb.WaitRoundRequest(peer="peer-0", round=2, stage=pb.STAGE_PUBLISHED, fanout=2, profile_json="[1, 2"),
                timeout=5,
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "malformed profile" in refused.value.details()
        assert (2, pb.STAGE_PUBLISHED) not in c.barriers
    finally:
        server.stop(grace=0)
    again = Coordinator(Security("coordinator"), rounds=2, min_peers=5, round_deadline=30, state_dir=tmp_path)
    server, port = serve_coordinator(again, "127.0.0.1:0")
    try:
        stub = coordinator_pb2_grpc.CoordinatorServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        request = pb.WaitRoundRequest(peer="peer-3", round=1, stage=pb.STAGE_PUBLISHED, **extra["peer-3"])
        reply = stub.WaitRound(request, timeout=5)
        assert reply.planned and sorted(reply.students) == expected["peer-3"]
    finally:
        server.stop(grace=0)
