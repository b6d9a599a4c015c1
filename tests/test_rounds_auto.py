"""--rounds auto: rounds until one in which no peer improved on its own validation slice, at most
--max-rounds; one decision (peer.round.stop_after) taken the same way in every runtime."""

from __future__ import annotations

import json
from dataclasses import replace

import grpc
import numpy as np
import pytest

from peer.config import ExperimentConfig, from_args, from_run_config, to_argv
from peer.core.gate import GateReport, improved, paired_harm
from peer.errors import UsageError
from peer.grpc.node import Node, NodeConfig
from peer.grpc.tls import Security, make_certs
from peer.inprocess import run_experiment
from peer.round import stop_after
from protos.ckd.v1 import coordinator_pb2 as pb
from protos.ckd.v1 import coordinator_pb2_grpc
from server.cli import build_parser, main
from server.coordinator import Coordinator, serve_coordinator
from server.results import summarise
from tests.coordinator_calls import wait_all
from tests.flower_util import AUTO as AUTO_RUN
from tests.node_threads import run_with_coordinator
from tests.results_compare import assert_same_results

AUTO = from_run_config(AUTO_RUN, peers=AUTO_RUN["peers"])


# -- the decision, on hand-made reports ------------------------------------------------------------
def test_a_number_of_rounds_stops_after_that_round_whatever_peers_report():
    assert stop_after(0, {}, 2, 10) is None
    assert stop_after(1, {"a": False}, 2, 10) is None
    assert stop_after(2, {"a": True}, 2, 10) == "2 rounds asked"
    assert stop_after(0, {}, 0, 10) == "0 rounds asked"
    assert stop_after(1, {"a": True}, 1, 1) == "1 round asked"


def test_auto_goes_on_while_some_peer_improved_and_stops_at_the_first_round_none_did():
    assert stop_after(0, {}, "auto", 10) is None  # nobody was taught yet
    assert stop_after(1, {"a": False, "b": True}, "auto", 10) is None
    assert stop_after(3, {"a": False, "b": False}, "auto", 10) == "no peer improved in round 3"
    assert stop_after(2, {}, "auto", 10) == "no peer improved in round 2"  # no report: no improvement seen


def test_auto_stops_at_its_cap_and_names_no_improvement_first():
    assert stop_after(9, {"a": True}, "auto", 10) is None
    assert stop_after(10, {"a": True}, "auto", 10) == "cap of 10 rounds"
    assert stop_after(10, {"a": False}, "auto", 10) == "no peer improved in round 10"
    assert stop_after(1, {"a": True}, "auto", 1) == "cap of 1 rounds"


@pytest.mark.parametrize("rounds, cap", [(-1, 10), ("soon", 10), (True, 10), ("auto", 0)])
def test_the_decision_refuses_what_is_not_a_plan(rounds, cap):
    with pytest.raises(ValueError):
        stop_after(1, {}, rounds, cap)


def test_improved_is_the_gates_paired_test_the_other_way_round():
    assert improved(0, 5, 2.0) and not improved(0, 4, 2.0)  # 5 > 2 sqrt(5) = 4.47; 4 = 2 sqrt(4)
    assert not improved(3, 3, 0.0) and improved(3, 4, 0.0)
    assert not improved(10, 40, 5.0) and improved(10, 60, 5.0)
    # what harms never improves
    assert not any(improved(b, c, 2.0) and paired_harm_of(b, c) for b in range(30) for c in range(30))


def paired_harm_of(b: int, c: int) -> bool:
    before = np.array([True] * b + [False] * c)
    return paired_harm(before, ~before, 2.0)[2]


def test_the_improved_flag_travels_in_the_gate_report_and_is_type_checked():
    report = GateReport(2, 40, 0.5, 0.6, "accepted", improved=True)
    assert GateReport.from_dict(report.to_dict()).improved is True
    old = report.to_dict()
    del old["improved"]  # a record written before the flag existed: not improved
    assert GateReport.from_dict(old).improved is False
    learnt = GateReport(1, 40, 0.5, 0.5, "accepted", improved=True, new_classes=["Coat"])
    assert GateReport.from_dict(learnt.to_dict()).new_classes == ["Coat"]
    with pytest.raises(TypeError, match="new_classes"):
        GateReport.from_dict({**learnt.to_dict(), "new_classes": "Coat"})
    with pytest.raises(TypeError):
        GateReport.from_dict({**report.to_dict(), "improved": "yes"})


# -- the options --------------------------------------------------------------------------------
def test_rounds_auto_by_flag_variable_and_run_config(monkeypatch):
    args = build_parser()[0].parse_args(["demo", "--rounds", "auto", "--max-rounds", "3"])
    assert (args.rounds, args.max_rounds) == ("auto", 3)
    assert build_parser()[0].parse_args(["demo", "--rounds", "4"]).rounds == 4
    monkeypatch.setenv("CKD_ROUNDS", "AUTO")
    monkeypatch.setenv("CKD_MAX_ROUNDS", "6")
    args = build_parser()[0].parse_args(["server"])
    assert (args.rounds, args.max_rounds) == ("auto", 6)  # the coordinator takes the same option
    cfg = from_run_config({"rounds": "auto", "max-rounds": 3})
    assert (cfg.rounds, cfg.max_rounds, cfg.auto_rounds, cfg.round_limit()) == ("auto", 3, True, 3)
    assert from_run_config({"rounds": 3}).round_limit() == 3
    again = ExperimentConfig(**from_args(build_parser()[0].parse_args(["demo", *to_argv(cfg)])))
    assert (again.rounds, again.max_rounds) == ("auto", 3)


@pytest.mark.parametrize("command", ["demo", "server", "launch"])
def test_bad_rounds_are_refused_with_a_clear_error(command, tmp_path, capsys):
    assert main([command, "--rounds", "soon", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--rounds must be >= 0 or auto, got 'soon'" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


def test_bad_rounds_in_a_config_or_run_config_are_refused_with_a_clear_error():
    with pytest.raises(UsageError, match="run config rounds = 'soon': --rounds must be"):
        from_run_config({"rounds": "soon"})
    with pytest.raises(UsageError, match="--rounds must be >= 0 or auto, got -1"):
        ExperimentConfig(rounds=-1)
    with pytest.raises(UsageError, match="--max-rounds must be >= 1"):
        ExperimentConfig(rounds="auto", max_rounds=0)
    with pytest.raises(UsageError, match="give --validation-share > 0"):
        ExperimentConfig(rounds="auto", validation_share=0.0)
    ExperimentConfig(rounds=2, validation_share=0.0)  # a number of rounds needs no slice


# -- in one process ------------------------------------------------------------------------------
def _check_auto_summary(summary: dict, cfg: ExperimentConfig) -> int:
    """The run stopped where the rule says, from what the peers' gates reported; returns rounds run."""
    rounds = summary["rounds"]
    run = rounds["run"]
    assert rounds["asked"] == "auto" and rounds["max_rounds"] == cfg.max_rounds
    assert all(len(p["accuracy_by_round"]) == run + 1 for p in summary["peers"])
    for p in summary["peers"]:  # a peer's missing classes round by round, ending at what it reports after
        assert len(p["missing_class_accuracy_by_round"]) == run + 1
        assert p["missing_class_accuracy_by_round"][0] == p["missing_class_accuracy_before"]
        assert p["missing_class_accuracy_by_round"][-1] == p["missing_class_accuracy_after"]
    by_round = {
        r: sorted(p["id"] for p in summary["peers"] for g in p["gate_by_round"] if g["round"] == r and g["improved"])
        for r in range(1, run + 1)
    }
    assert rounds["improved"] == {str(r): v for r, v in by_round.items()}
    assert all(by_round[r] for r in range(1, run))  # every round before the last had a peer improve
    if by_round[run]:
        assert run == cfg.max_rounds and rounds["stopped"] == f"cap of {cfg.max_rounds} rounds"
    else:
        assert rounds["stopped"] == f"no peer improved in round {run}"
    # each flag is the paired test on the fit the gate kept, or a class the peer lacked learnt at all
    for g in summary["gate"]["rounds"]:
        kept = g["tries"][-1]
        on_slice = g["outcome"] != "rolled back" and improved(kept["b"], kept["c"], cfg.gate_z)
        assert g["improved"] == (on_slice or bool(g["new_classes"]))
        assert not g["new_classes"] or g["outcome"] != "rolled back"
    for p in summary["peers"]:  # a class is new to a peer once, and only a class its data lacks
        firsts = [c for g in p["gate_by_round"] for c in g["new_classes"]]
        assert len(firsts) == len(set(firsts)) and set(firsts) <= set(p["missing_classes"])
    return run


@pytest.fixture(scope="module")
def in_process(fmnist):
    return summarise(run_experiment(AUTO, quiet=True, data=fmnist))


@pytest.mark.slow
def test_in_process_auto_runs_until_no_peer_improved(in_process):
    run = _check_auto_summary(in_process, AUTO)
    # more than one round, stopped by the rule (checked before the cap, so also at the cap's round)
    assert run >= 2 and in_process["rounds"]["stopped"] == f"no peer improved in round {run}"
    # a peer kept the first examples of the class it lacks in some round (miss-class split)
    assert any(g["new_classes"] for g in in_process["gate"]["rounds"])
    assert in_process["config"]["rounds"] == "auto" and in_process["counterfactuals"]["made"] > 0


@pytest.mark.slow
def test_in_process_auto_with_a_cap_of_one_round_stops_at_the_cap_when_a_peer_improved(fmnist, in_process):
    assert in_process["rounds"]["improved"]["1"]  # round 1 had a peer improve (checked above)
    summary = summarise(run_experiment(replace(AUTO, max_rounds=1), quiet=True, data=fmnist))
    assert summary["rounds"]["run"] == 1 and summary["rounds"]["stopped"] == "cap of 1 rounds"
    assert summary["peers"][0]["accuracy_by_round"] == in_process["peers"][0]["accuracy_by_round"][:2]


@pytest.mark.slow
def test_ckd_demo_with_rounds_auto_writes_and_prints_why_it_stopped(in_process, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["demo", *to_argv(AUTO), "--out", str(out), "--quiet", "--threads", "1"]) == 0
    summary = json.loads((out / "results.json").read_text())
    assert summary["rounds"] == in_process["rounds"] and summary["config"]["max_rounds"] == AUTO.max_rounds
    run, stopped = summary["rounds"]["run"], summary["rounds"]["stopped"]
    assert f"rounds: {run} run, stopped: {stopped}" in capsys.readouterr().out


# -- over gRPC: the coordinator decides from the flags peers report --------------------------------
@pytest.mark.grpc
@pytest.mark.slow
def test_grpc_nodes_and_coordinator_with_auto_stop_at_the_same_round_as_in_process(fmnist, in_process, tmp_path):
    """Three peer nodes (threads, each with its own server, store and certificate) and a coordinator
    on loopback, as `ckd launch` runs them; the coordinator decides from the flags the peers report."""
    # the peers are told 2 rounds: the coordinator's auto wins
    nodes, coord, errors = run_with_coordinator(
        AUTO, fmnist, tmp_path, peer_cfg=replace(AUTO, rounds=2), max_rounds=AUTO.max_rounds
    )
    assert not errors, errors
    assert coord.finished.is_set()
    exp, extra = coord.results({n.id: tmp_path / n.id for n in nodes})  # as `ckd launch` writes results.json
    summary = {**summarise(exp), **extra}
    assert summary["rounds"] == in_process["rounds"]
    assert_same_results(summary, in_process)
    run_ = summary["rounds"]["run"]
    assert all(n.stopped == summary["rounds"]["stopped"] and sorted(n.metrics) == list(range(run_ + 1)) for n in nodes)
    assert (tmp_path / "peer-0" / "checkpoints" / f"round-{run_}.npz").exists()
    assert not (tmp_path / "peer-0" / "checkpoints" / f"round-{run_ + 1}.npz").exists()


@pytest.mark.grpc
def test_a_peer_without_a_coordinator_refuses_auto(fmnist, tmp_path):
    make_certs(tmp_path / "certs", ["peer-0"])
    cfg = NodeConfig(replace(AUTO, train_per_peer=50), 0, tmp_path / "peer-0", peers={"peer-1": "127.0.0.1:9"})
    node = Node(cfg, Security.from_dir("peer-0", tmp_path / "certs", False), data=fmnist)
    try:
        with pytest.raises(UsageError, match="--rounds auto needs a coordinator"):
            node.run()
    finally:
        node.stop()


@pytest.fixture
def certs(tmp_path):
    make_certs(tmp_path / "certs", ["coordinator", "peer-0", "peer-1"])
    return tmp_path / "certs"


def _serve(certs, state_dir, **kw):
    c = Coordinator(Security.from_dir("coordinator", certs, False), "auto", 2, 10, state_dir=state_dir, **kw)
    server, port = serve_coordinator(c, "127.0.0.1:0")
    stubs = {
        p: coordinator_pb2_grpc.CoordinatorServiceStub(
            Security.from_dir(p, certs, False).channel(f"127.0.0.1:{port}", "coordinator")
        )
        for p in ("peer-0", "peer-1")
    }
    return c, server, stubs


def _report(stubs, round: int, improved: dict) -> None:
    for p, s in stubs.items():
        gate = GateReport(round, 40, 0.5, 0.6, "accepted", improved=improved[p]).to_dict()
        s.ReportMetrics(pb.MetricsRequest(peer=p, round=round, json=json.dumps({"record": {"gate": gate}})), timeout=5)


@pytest.mark.grpc
def test_coordinator_stops_after_the_first_round_no_peer_improved_and_remembers_it(certs, tmp_path):
    c, server, stubs = _serve(certs, tmp_path / "state", max_rounds=5)
    try:
        for p, s in stubs.items():
            reply = s.Register(pb.RegisterRequest(peer=p, address=f"{p}:1"), timeout=5)
            assert (reply.rounds, reply.auto_rounds) == (5, True)  # the most rounds, and that auto decides
        wait_all(stubs, 0, pb.STAGE_READY)
        _report(stubs, 1, {"peer-0": False, "peer-1": True})
        assert {r.stopped for r in wait_all(stubs, 1, pb.STAGE_DONE).values()} == {""}
        assert not c.finished.is_set() and c.last_round() is None
        _report(stubs, 2, {"peer-0": False, "peer-1": False})
        assert {r.stopped for r in wait_all(stubs, 2, pb.STAGE_DONE).values()} == {"no peer improved in round 2"}
        assert c.finished.is_set() and c.last_round() == 2 and c.stopped() == "no peer improved in round 2"
        assert c.wall_seconds() is not None
    finally:
        server.stop(grace=0)
    # started again on its state: the run stopped there, and a peer that asks again hears so
    c, server, stubs = _serve(certs, tmp_path / "state", max_rounds=5)
    try:
        assert c.finished.is_set() and c.stopped() == "no peer improved in round 2"
        reply = stubs["peer-0"].WaitRound(pb.WaitRoundRequest(peer="peer-0", round=2, stage=pb.STAGE_DONE), timeout=5)
        assert reply.stopped == "no peer improved in round 2"
    finally:
        server.stop(grace=0)
    with pytest.raises(UsageError, match="holds a run of rounds=auto \\(at most 5\\), not rounds=2;"):
        Coordinator(Security.from_dir("coordinator", certs, False), 2, 2, state_dir=tmp_path / "state")
    with pytest.raises(UsageError, match=r"rounds=auto \(at most 5\), not rounds=auto \(at most 10\)"):
        Coordinator(Security.from_dir("coordinator", certs, False), "auto", 2, state_dir=tmp_path / "state")


@pytest.mark.grpc
def test_coordinator_stops_at_its_cap_and_a_report_without_the_flag_is_no_improvement(certs, tmp_path):
    c, server, stubs = _serve(certs, None, max_rounds=1)
    try:
        for p, s in stubs.items():
            s.Register(pb.RegisterRequest(peer=p, address=f"{p}:1"), timeout=5)
        wait_all(stubs, 0, pb.STAGE_READY)
        _report(stubs, 1, {"peer-0": True, "peer-1": False})
        assert {r.stopped for r in wait_all(stubs, 1, pb.STAGE_DONE).values()} == {"cap of 1 rounds"}
        with pytest.raises(grpc.RpcError) as err:  # nothing past the cap
            stubs["peer-0"].WaitRound(pb.WaitRoundRequest(peer="peer-0", round=2, stage=pb.STAGE_PUBLISHED), timeout=5)
        assert err.value.code() == grpc.StatusCode.OUT_OF_RANGE
    finally:
        server.stop(grace=0)
    c, server, stubs = _serve(certs, None, max_rounds=3)
    try:
        for p, s in stubs.items():
            s.Register(pb.RegisterRequest(peer=p, address=f"{p}:1"), timeout=5)
        wait_all(stubs, 0, pb.STAGE_READY)
        for p, s in stubs.items():  # records with no gate (a peer without a validation slice)
            s.ReportMetrics(pb.MetricsRequest(peer=p, round=1, json=json.dumps({"record": {"peer": p}})), timeout=5)
        assert {r.stopped for r in wait_all(stubs, 1, pb.STAGE_DONE).values()} == {"no peer improved in round 1"}
    finally:
        server.stop(grace=0)
