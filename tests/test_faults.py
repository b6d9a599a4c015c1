"""Real faults on loopback: `ckd peer` and `ckd server` processes killed with SIGKILL at chosen
points (CKD_FAULT_AT, peer/faults.py), started again on their state directories, and a peer
stopped (SIGSTOP) past the round deadline. Each run goes to its end; then every batch a teacher
saw acknowledged is in its student's store exactly once, every file read back is whole, and the
accuracies are those of the undisturbed run on the same seeds (the in-process engine's: a gRPC
run reproduces it exactly, tests/test_grpc_run.py).

`make test-faults` (`pytest -m faults`); a few minutes on 2 cores.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from peer.grpc.tls import Security
from peer.inprocess import run_experiment
from protos.ckd.v1 import coordinator_pb2 as cpb
from server.coordinator import Coordinator
from server.results import summarise, write_results
from tests.fault_runs import CFG, FaultRun, Outcome, audit

pytestmark = pytest.mark.faults

MARGIN = 0.01  # final accuracies within 1 point of the undisturbed run


@pytest.fixture(scope="module")
def undisturbed(fmnist) -> dict[str, float]:
    summary = summarise(run_experiment(CFG, quiet=True, data=fmnist))
    return {p["id"]: p["accuracy_by_round"][-1] for p in summary["peers"]}


def killed_at(outcome: Outcome) -> list[str]:
    """'NAME POINT' of every kill in order, e.g. 'peer-0 push'."""
    return [f"{k.split(':')[0]} {k.split(' at ')[1].split(' #')[0]}" for k in outcome.kills]


def points(outcome: Outcome) -> list[str]:
    return sorted(killed_at(outcome))


def assert_whole(outcome: Outcome) -> None:
    a = audit(outcome)
    assert a.problems == [], a.problems
    assert a.acknowledged > 0 and a.lost == 0 and a.duplicates == 0, a
    assert a.unacknowledged == 0 and a.stored == a.acknowledged, a  # every stored batch was acknowledged too
    assert outcome.results["status"] == "ok", (outcome.results["errors"], outcome.results["skipped"])


def assert_as_undisturbed(outcome: Outcome, undisturbed: dict[str, float]) -> None:
    got = outcome.final_accuracies()
    assert set(got) == set(undisturbed)
    assert all(len(p["accuracy_by_round"]) == CFG.rounds + 1 for p in outcome.results["peers"])
    worst = max(abs(got[p] - undisturbed[p]) for p in got)
    assert worst <= MARGIN, (got, undisturbed)


def test_peers_killed_halfway_through_streams(tmp_path, undisturbed):
    """A teacher killed with a batch's header sent and its data not; a student killed with a batch's
    header read and its data not; a teacher killed halfway through pulling a student's model. And
    one killed once it heard at the last barrier that the run ended (as when that reply is lost):
    started again, it asks the barrier again, and the coordinator still serves it."""
    faults = {"peer-0": ["push:1"], "peer-1": ["receive:1", "leave:1"], "peer-2": ["pull:1"]}
    outcome = FaultRun(tmp_path, faults=faults).run()
    assert points(outcome) == ["peer-0 push", "peer-1 leave", "peer-1 receive", "peer-2 pull"]
    assert_whole(outcome)
    assert_as_undisturbed(outcome, undisturbed)


def test_peers_killed_while_committing_training_and_writing_state(tmp_path, undisturbed):
    """A student killed with a batch inserted and not committed; one killed with it committed and
    not acknowledged (the teacher's retry is a duplicate); a peer killed while training, then
    while writing its checkpoint, then while writing its metrics (half of each file written)."""
    faults = {"peer-0": ["store:1"], "peer-1": ["ack:1"], "peer-2": ["train:17", "checkpoint:1", "metrics:1"]}
    outcome = FaultRun(tmp_path, faults=faults).run()
    assert points(outcome) == ["peer-0 store", "peer-1 ack", "peer-2 checkpoint", "peer-2 metrics", "peer-2 train"]
    assert_whole(outcome)
    assert_as_undisturbed(outcome, undisturbed)
    # each kill while writing left a half-written file beside the whole one, which was not read back
    # (the restarted peer trained round 1 again and ended as the undisturbed run did)
    left = dict(zip(killed_at(outcome), outcome.leftovers))
    state = outcome.state("peer-2")
    checkpoint = state / "checkpoints" / "round-1.npz"
    assert 0 < left["peer-2 checkpoint"]["checkpoints/.round-1.npz.tmp"] < checkpoint.stat().st_size
    assert 0 < left["peer-2 metrics"][".metrics.json.tmp"] < (state / "metrics.json").stat().st_size
    # the acknowledgement lost with peer-1 came again, as a duplicate, when the teacher retried
    from peer.durable import read_lines

    duplicates = [line for pid in outcome.peers for line in read_lines(outcome.state(pid) / "acked.jsonl")]
    assert any('"student": "peer-1"' in line and '"duplicate": true' in line for line in duplicates)


def test_coordinator_killed_mid_barrier_and_mid_state_write(tmp_path, undisturbed):
    """The coordinator killed with one peer waiting at the round-1 barrier and another arriving,
    then again halfway through writing its state; started again on its state directory each time."""
    outcome = FaultRun(tmp_path, faults={"coordinator": ["barrier:5", "coordinator-state:4"]}).run()
    assert points(outcome) == ["coordinator barrier", "coordinator coordinator-state"]
    assert_whole(outcome)
    assert_as_undisturbed(outcome, undisturbed)


def test_coordinator_restarted_mid_barrier_without_its_state_stops_the_run_with_a_clear_error(tmp_path):
    """The coordinator killed with a peer waiting at the round-1 barrier and another arriving, and
    started again without a state directory: it knows nothing of the run, so the peers that come
    back to that barrier are told it cannot go on (not released into a round with fewer peers), and
    nothing is written."""
    run = FaultRun(tmp_path, faults={"coordinator": ["barrier:5"]}, coordinator_state=False)
    with pytest.raises(RuntimeError, match="exited with 2") as err:
        run.run()
    message = str(err.value)
    assert "waits at round 1 (published)" in message and "restarted without --state-dir" in message, message
    assert run.procs[0].starts == 2  # killed at the barrier, started again
    assert not (tmp_path / "out" / "results.json").exists()


def test_peer_slower_than_the_round_deadline_is_skipped_and_rejoins(tmp_path):
    """peer-2 stops (SIGSTOP) before it publishes round 1 and is continued only once the round-1
    barrier went on without it: it is skipped for round 1 (recorded), taught again in round 2, and
    taught once more in a make-up round 3 in which it alone is a student."""
    cfg = replace(CFG, rounds=2)
    run = FaultRun(
        tmp_path,
        cfg,
        faults={"peer-2": ["metrics:1:stop"]},
        round_deadline=30,
        resume_when=lambda run: run.released(1, cpb.STAGE_PUBLISHED) is not None,
    )
    outcome = run.run()
    assert outcome.kills == [] and len(outcome.stops) == 1 and "metrics" in outcome.stops[0]
    barrier = run.released(1, cpb.STAGE_PUBLISHED)
    assert barrier is not None and barrier["timed_out"] and "peer-2" not in barrier["arrived"]
    assert "peer-2" in barrier["late"]  # it did come, after the barrier went on
    skipped = outcome.results["skipped"]
    assert any(s["round"] == 1 and "peer-2" in s["skipped"] for s in skipped), skipped
    taught = {(p["teacher"], p["student"], p["round"]) for p in outcome.results["pairs"]}
    assert not {t for t in taught if t[1] == "peer-2" and t[2] == 1}  # nobody taught it in round 1
    assert {("peer-0", "peer-2", 2), ("peer-1", "peer-2", 2)} <= taught  # both did in round 2
    # and again in the make-up round, where nobody else is a student and only peer-2 retrains
    assert {t for t in taught if t[2] == 3} == {("peer-0", "peer-2", 3), ("peer-1", "peer-2", 3)}
    rounds = outcome.results["rounds"]
    assert rounds["run"] == 3 and rounds["stopped"] == "2 rounds asked, then 1 make-up round for peers skipped before"
    by_peer = {p["id"]: p for p in outcome.results["peers"]}
    assert all(len(p["accuracy_by_round"]) == 4 for p in by_peer.values())
    for pid in ("peer-0", "peer-1"):  # they kept their models
        assert by_peer[pid]["accuracy_by_round"][3] == by_peer[pid]["accuracy_by_round"][2]
    assert [g["round"] for g in by_peer["peer-2"]["gate_by_round"]] == [1, 2, 3]
    a = audit(outcome)
    assert a.problems == [] and a.lost == 0 and a.duplicates == 0 and a.stored == a.acknowledged > 0, a


@pytest.mark.faults
def test_a_peer_slower_than_the_last_rounds_deadline_is_waited_for(tmp_path):
    """peer-2 stops (SIGSTOP) as it writes its report of round 1, the last, and is continued only
    once the round-1 done barrier went on without it: the coordinator, which has heard from it
    within its heartbeat timeout, waits for its report and for it to come to the last barrier, and
    the results hold every peer, the barrier that went on without peer-2 recorded."""
    run = FaultRun(
        tmp_path,
        faults={"peer-2": ["metrics:2:stop"]},
        round_deadline=20,
        resume_when=lambda run: run.released(1, cpb.STAGE_DONE) is not None,
    )
    outcome = run.run()
    assert outcome.kills == [] and len(outcome.stops) == 1 and "metrics" in outcome.stops[0]
    barrier = run.released(1, cpb.STAGE_DONE)
    assert barrier is not None and barrier["timed_out"] and "peer-2" not in barrier["arrived"]
    results = outcome.results
    assert [p["id"] for p in results["peers"]] == ["peer-0", "peer-1", "peer-2"] and "incomplete" not in results
    assert any(s["round"] == 1 and s["skipped"] == ["peer-2"] for s in results["skipped"]), results["skipped"]
    assert all(len(p["accuracy_by_round"]) == 2 for p in results["peers"])
    a = audit(outcome)
    assert a.problems == [] and a.lost == 0 and a.duplicates == 0 and a.stored == a.acknowledged > 0, a
    # had peer-2 never reported round 1, the results would hold the others and name it, not be lost
    state = json.loads((tmp_path / "state" / "coordinator" / "coordinator.json").read_text())
    del state["metrics"]["peer-2"]["1"]
    lost = tmp_path / "lost"
    lost.mkdir()
    (lost / "coordinator.json").write_text(json.dumps(state))
    coordinator = Coordinator(Security("coordinator"), 1, 3, state_dir=lost)
    exp, extra = coordinator.results()
    assert extra["incomplete"] == [{"peer": "peer-2", "rounds_reported": [0]}]
    summary = write_results(tmp_path / "lost-out", exp, "grpc", extra, quiet=True)
    assert summary["status"] == "degraded" and [p["id"] for p in summary["peers"]] == ["peer-0", "peer-1"]
    assert summary["incomplete"] == extra["incomplete"]
    for p in summary["peers"]:  # their accuracies as the full run reported them (peer-2's teaching is not told)
        full = next(q for q in results["peers"] if q["id"] == p["id"])
        assert p["accuracy_by_round"] == full["accuracy_by_round"] and p["per_class_after"] == full["per_class_after"]
