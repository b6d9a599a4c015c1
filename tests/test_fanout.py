"""The fan-out limit (`--fanout K`): each student taught by its K most useful teachers, chosen
from the per-class accuracy every published model carries; the same plan in every runtime."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from peer.config import ExperimentConfig
from peer.core.blob import InvalidPayload, ModelBlob
from peer.core.fanout import PROFILE_KEY, Profile, by_teacher, plan, profile_of, usefulness
from peer.errors import UsageError
from peer.experiment import build_peers
from peer.grpc.wire import decode_blob_header
from peer.inprocess import run_experiment
from peer.learners import learner_from_blob
from server.results import summarise
from tests.fault_runs import launch
from tests.loopback import LoopbackGrpc
from tests.node_threads import run_with_coordinator
from tests.results_compare import assert_same_results

CLASSES = tuple("abcde")


def missing_one(k: int, strength: float = 0.9) -> Profile:
    """A peer that never saw class k and gets the others right `strength` of the time."""
    return Profile(CLASSES, tuple(None if c == k else strength for c in range(len(CLASSES))))


def test_usefulness_counts_what_the_teacher_knows_better():
    assert usefulness(missing_one(1), missing_one(0)) == pytest.approx(0.9)  # class a, unknown to the student
    assert usefulness(missing_one(0), missing_one(0)) == 0.0
    weak = Profile(CLASSES, (0.2,) * 5)
    assert usefulness(weak, missing_one(0)) == pytest.approx(0.2)  # only where the student knows nothing
    assert usefulness(missing_one(0), weak) == pytest.approx(4 * 0.7)


def test_each_student_gets_k_teachers_that_know_its_missing_class_and_no_teacher_is_overloaded():
    profiles = {f"peer-{k}": missing_one(k, 0.8 + 0.02 * k) for k in range(5)}
    for k in (1, 2, 3):
        teachers = plan(profiles, k)
        assert all(len(ts) == k and s not in ts for s, ts in teachers.items())
        load = by_teacher(teachers)
        assert max(len(ss) for ss in load.values()) <= 2 * k
        assert sum(len(ss) for ss in load.values()) == 5 * k
    # the strongest peer teaches the most, up to the cap of 2K
    load = by_teacher(plan(profiles, 1))
    assert len(load["peer-4"]) == 2 and len(load["peer-0"]) == 0


def test_a_teacher_weaker_everywhere_is_not_chosen_and_the_plan_does_not_depend_on_order():
    profiles = {"good-1": missing_one(1), "good-2": missing_one(2), "weak": Profile(CLASSES, (0.2,) * 5)}
    profiles["student"] = missing_one(0, 0.5)
    teachers = plan(profiles, 2)
    assert teachers["student"] == ["good-1", "good-2"]
    assert plan(dict(reversed(list(profiles.items()))), 2) == teachers


def test_teachers_of_a_student_cover_the_classes_it_lacks_between_them():
    """Under label skew: the student knows c, d, e and lacks a and b. Two teachers know a better
    than the third knows b, but once one of them teaches a, the other adds nothing: the second
    teacher is the one that knows b."""
    profiles = {
        "student": Profile(CLASSES, (None, None, 0.9, 0.9, 0.9)),
        "a-best": Profile(CLASSES, (0.95, None, 0.5, 0.5, 0.5)),
        "a-good": Profile(CLASSES, (0.9, None, 0.5, 0.5, 0.5)),
        "b-only": Profile(CLASSES, (None, 0.8, 0.5, 0.5, 0.5)),
    }
    assert plan(profiles, 2)["student"] == ["a-best", "b-only"]
    assert plan(profiles, 1)["student"] == ["a-best"]  # the most useful alone


def test_fanout_zero_or_at_least_everyone_else_is_all_pairs():
    profiles = {f"p{k}": missing_one(k) for k in range(4)}
    everyone = {s: [t for t in sorted(profiles) if t != s] for s in profiles}
    assert plan(profiles, 0) == everyone and plan(profiles, 3) == everyone and plan(profiles, 9) == everyone


def test_a_peer_without_a_profile_still_gets_teachers():
    profiles: dict[str, Profile | None] = {"p0": missing_one(0), "p1": missing_one(1), "p2": None}
    assert all(len(ts) == 1 for ts in plan(profiles, 1).values())


@pytest.mark.parametrize(
    "profile",
    [
        {"accuracy": [0.5] * 4, "on": "validation"},  # one value short
        {"accuracy": [0.5, 0.5, 0.5, 0.5, 1.5]},  # out of [0, 1]
        {"accuracy": [0.5, 0.5, 0.5, 0.5, "x"]},
        {"accuracy": [0.5] * 5, "on": "test"},
        [0.5] * 5,
    ],
)
def test_a_malformed_profile_is_refused_with_the_model(profile):
    spec = {"classes": list(CLASSES), PROFILE_KEY: profile}
    with pytest.raises(InvalidPayload):
        profile_of(spec)


def _config(**kw) -> ExperimentConfig:
    base = ExperimentConfig(
        peers=4,
        rounds=1,
        train_per_peer=300,
        epochs=3,
        retrain_epochs=1,
        test_limit=500,
        max_per_student=30,
    )
    return replace(base, **kw)


def test_a_published_model_carries_its_profile_and_a_forged_one_is_refused(fmnist):
    peer = build_peers(_config(peers=3), fmnist[0])[0]
    peer.train(1)
    blob = peer.snapshot(1)
    profile = profile_of(blob.spec)
    assert profile is not None and profile.on == "validation"
    assert profile.accuracy[0] is None  # peer-0 never saw class 0: nothing to judge it on
    known = [a for a in profile.accuracy if a is not None]
    assert len(known) == 9
    pred = peer.learner.predict(peer.val_x)
    for c in range(1, 10):
        assert profile.accuracy[c] == pytest.approx(np.mean(pred[peer.val_y == c] == c), abs=1e-4)
    learner_from_blob(blob)  # accepted as it is
    forged = ModelBlob({**blob.spec, PROFILE_KEY: {"accuracy": [2.0] * 10}}, blob.arrays)
    with pytest.raises(InvalidPayload):
        learner_from_blob(forged)
    # without a validation slice, the profile is measured on the peer's training data
    bare = build_peers(_config(peers=3, validation_share=0.0), fmnist[0])[1]
    bare.train(1)
    assert profile_of(bare.snapshot(1).spec).on == "training"


def test_negative_fanout_is_a_usage_error():
    with pytest.raises(UsageError, match="--fanout"):
        _config(fanout=-1).validate()


def _pairs(summary: dict) -> set[tuple[str, str]]:
    return {(t["teacher"], t["student"]) for t in summary["pairs"]}


@pytest.fixture(scope="module")
def fanned(fmnist):
    cfg = _config(fanout=1)
    return cfg, summarise(run_experiment(cfg, quiet=True, data=fmnist))


def test_in_process_each_student_is_taught_by_the_planned_teacher_only(fmnist, fanned):
    cfg, summary = fanned
    pairs = _pairs(summary)
    assert len(pairs) == 4 and {s for _, s in pairs} == {f"peer-{k}" for k in range(4)}
    # the plan every peer computed, from the profiles of the models published for round 1
    peers = build_peers(cfg, fmnist[0])
    for p in peers:
        p.train(cfg.epochs)
    profiles = {p.id: profile_of(p.snapshot(1).spec) for p in peers}
    assert pairs == {(t, s) for s, ts in plan(profiles, 1).items() for t in ts}
    assert summary["config"]["fanout"] == 1


def test_over_grpc_the_plan_reads_headers_only_and_gives_the_same_run(fmnist, fanned):
    cfg, expected = fanned
    transports = []

    def loopback(peers):
        transports.append(LoopbackGrpc(peers))
        return transports[0]

    summary = summarise(run_experiment(cfg, quiet=True, data=fmnist, transport=loopback))
    assert_same_results(summary, expected)
    # 4 teachers read 3 headers each; only the 4 planned students' models were pulled whole
    servicers = transports[0].servicers.values()
    model_bytes = sum(s.meter.by_kind.get("model", 0) for s in servicers)
    blob_size = build_peers(cfg, fmnist[0])[0].snapshot(1).nbytes()
    assert 4 * blob_size <= model_bytes < 5 * blob_size


def test_a_header_only_reply_with_weights_after_it_is_refused(fmnist):
    from peer.grpc.wire import encode_blob

    peer = build_peers(_config(peers=3), fmnist[0])[0]
    chunks = list(encode_blob(peer.snapshot(1), peer.id, 1))
    spec, who, r = decode_blob_header(chunks[:1])
    assert (who, r) == (peer.id, 1) and PROFILE_KEY in spec
    with pytest.raises(InvalidPayload, match="header-only"):
        decode_blob_header(chunks)


@pytest.mark.grpc
def test_launch_with_fanout_matches_in_process(fanned, tmp_path):
    cfg, expected = fanned
    done = launch(cfg, tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "results.json").read_text())
    assert_same_results(summary, expected)
    assert _pairs(summary) == _pairs(expected)


@pytest.mark.grpc
def test_nodes_with_a_coordinator_teach_its_plan_without_reading_any_header(fanned, fmnist, tmp_path, monkeypatch):
    """Peer nodes (threads, each with its own server and certificate) and a coordinator on loopback,
    as `ckd launch` runs them: every peer teaches the students the coordinator planned, so no peer
    reads another's model header to plan for itself, and the run is the in-process one."""
    from peer.grpc.transport import GrpcTransport

    cfg, expected = fanned
    headers: list[str] = []
    pull_header = GrpcTransport.get_spec

    def counted(self, peer_id, round):
        headers.append(peer_id)
        return pull_header(self, peer_id, round)

    monkeypatch.setattr(GrpcTransport, "get_spec", counted)
    nodes, coord, errors = run_with_coordinator(cfg, fmnist, tmp_path)
    assert not errors, errors
    assert coord.left == {n.id for n in nodes} and coord.missing_reports() == []  # each heard the end
    exp, extra = coord.results({n.id: tmp_path / n.id for n in nodes})
    summary = {**summarise(exp), **extra}
    assert headers == []
    assert _pairs(summary) == _pairs(expected) and len(_pairs(summary)) == cfg.peers
    assert_same_results(summary, expected)
