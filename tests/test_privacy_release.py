"""Release knobs: start points, the minimum-distance filter, release noise, and their options."""

from __future__ import annotations

import tomllib
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch

from peer.config import PRIVACY_PRESETS, ExperimentConfig, with_privacy
from peer.core.augment import AugmentConfig
from peer.core.counterfactual import CounterfactualConfig
from peer.core.peer import Peer, TeachConfig
from peer.learners import TrainConfig, make_learner
from peer.privacy.measures import RatioIndex, aligned_nearest_ratio, nearest, nearest_ratio, nearest_ratio_index
from peer.privacy.release import START_MODES, min_distance_keep, push_out, release_noise, start_points

KNOBS = {
    "privacy": "guarded",
    "cf_start": "mix",
    "cf_start_k": 4,
    "cf_start_cross": 1,
    "cf_start_pool": "alike",
    "min_distance": 1.0,
    "min_distance_action": "push",
    "noise_scale": 0.0,
    "release_tries": 4,
    "soft_labels": "held",
    "own_mix": 4,
    "own_mix_cross": 1,
    "peer_distill": 1.0,
    "alpha": 0.15,
}


def blobs(n_per_class: int = 30, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Small 8x8 images: class c is a bright block in its own place, plus noise."""
    rng = np.random.default_rng(seed)
    x = rng.random((n_per_class * classes, 8, 8), dtype=np.float32) * 0.3
    y = np.repeat(np.arange(classes), n_per_class)
    for c in range(classes):
        x[y == c, 2 * c : 2 * c + 3, 1:7] += 0.6
    return np.clip(x, 0, 1), y


@pytest.mark.parametrize("mode", START_MODES)
def test_each_start_mode_gives_points_in_range(mode):
    x, y = blobs()
    idx = np.array([0, 5, 31, 70])
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    predict = lambda a: torch.softmax(module(torch.from_numpy(a)), 1).detach().numpy()  # noqa: E731
    st = start_points(
        mode, x, y, idx, np.ones(len(y), bool), 3, np.random.default_rng(0), k=3, module=module, predict_proba=predict
    )
    assert st.x.shape == (4, 8, 8) and st.x.dtype == np.float32
    assert st.x.min() >= 0 and st.x.max() <= 1
    assert len(st.sources) == 4 and st.ok.shape == (4,)
    if mode == "instance":
        assert np.array_equal(st.x, x[idx]) and [s.tolist() for s in st.sources] == [[0], [5], [31], [70]]
    if mode == "mix":
        assert all(len(s) == 3 and s[0] == j and (y[s] == y[j]).all() for s, j in zip(st.sources, idx))
    if mode == "noise":
        assert all(len(s) == 0 for s in st.sources)


def test_mix_of_two_known_images_is_their_mean():
    x = np.zeros((3, 4, 4), np.float32)
    x[0] = 1.0
    x[1, :2] = 1.0
    y = np.array([0, 0, 1])
    st = start_points("mix", x, y, np.array([0]), np.ones(3, bool), 2, np.random.default_rng(0), k=2)
    assert st.sources[0].tolist() == [0, 1]
    np.testing.assert_allclose(st.x[0], (x[0] + x[1]) / 2)


def test_mix_starts_are_means_of_distinct_members_of_the_class_also_where_a_class_is_small():
    rng = np.random.default_rng(0)
    x = rng.random((60, 5, 5), dtype=np.float32)
    y = np.array([0] * 40 + [1] * 18 + [2] * 2)  # class 2: the instance and one other
    correct = np.arange(60) % 3 != 0  # pools hold the right ones only: some instances are not in theirs
    idx = np.array([0, 1, 2, 40, 41, 58, 59])
    st = start_points("mix", x, y, idx, correct, 3, np.random.default_rng(1), k=4)
    for start, members, j in zip(st.x, st.sources, idx):
        assert members[0] == j and len(set(members.tolist())) == len(members) and (y[members] == y[j]).all()
        np.testing.assert_allclose(start, x[members].mean(axis=0), rtol=1e-6)
    assert [len(m) for m in st.sources] == [4, 4, 4, 4, 4, 2, 2]


def test_cross_mix_draws_members_of_the_class_the_student_confuses_and_keeps_the_plain_draws_without():
    """cross 1 of a mix of 4: the instance, 2 of its class, 1 of the class the student takes it for;
    where the student is right about a row, all 3 from its own class; a class of 2 gives its other
    instance and the cross one. cross 0 draws exactly what the plain mix draws."""
    rng = np.random.default_rng(0)
    x = rng.random((60, 5, 5), dtype=np.float32)
    y = np.array([0] * 30 + [1] * 28 + [2] * 2)
    correct = np.ones(60, bool)
    confused = np.where(y == 0, 1, 0)  # the student takes class 0 for 1 and everything else for 0
    confused[5] = 0  # ... but gets row 5 right
    idx = np.array([0, 1, 5, 30, 58])
    st = start_points("mix", x, y, idx, correct, 3, np.random.default_rng(1), k=4, confused=confused, cross=1)
    for start, members, j in zip(st.x, st.sources, idx):
        assert members[0] == j and len(set(members.tolist())) == len(members) == (3 if j == 58 else 4)
        np.testing.assert_allclose(start, x[members].mean(axis=0), rtol=1e-6)
        mine = int((y[members] == y[j]).sum())
        assert mine == {5: 4, 58: 2}.get(j, 3), (j, members)
        assert (y[members][y[members] != y[j]] == confused[j]).all()
    plain = start_points("mix", x, y, idx, correct, 3, np.random.default_rng(1), k=4)
    zero = start_points("mix", x, y, idx, correct, 3, np.random.default_rng(1), k=4, confused=confused, cross=0)
    assert [m.tolist() for m in plain.sources] == [m.tolist() for m in zero.sources]
    # the instance's class keeps the majority: a mix of 4 takes at most 1, a mix of 2 none
    two = start_points("mix", x, y, idx, correct, 3, np.random.default_rng(1), k=4, confused=confused, cross=2)
    assert [m.tolist() for m in two.sources] == [m.tolist() for m in st.sources]
    pair = start_points("mix", x, y, idx, correct, 3, np.random.default_rng(1), k=2, confused=confused, cross=1)
    plain_pair = start_points("mix", x, y, idx, correct, 3, np.random.default_rng(1), k=2)
    assert [m.tolist() for m in pair.sources] == [m.tolist() for m in plain_pair.sources]


def test_alike_mix_draws_its_class_members_from_rows_the_student_errs_on_the_same_way():
    """alike: a mix's others of the instance's class are rows the student takes for the same class
    as the instance; where too few are alike, any of the class; without alike, the plain draw."""
    rng = np.random.default_rng(0)
    x = rng.random((60, 5, 5), dtype=np.float32)
    y = np.array([0] * 25 + [1] * 25 + [2] * 10)
    correct = np.ones(60, bool)
    confused = np.where(y == 0, 1, 0)  # class 0 taken for 1 (rows 0-9 for 2 instead) ...
    confused[:10] = 2
    confused[25:27] = 2  # ... and of class 1 only rows 25 and 26 for 2, the rest for 0
    idx = np.array([0, 3, 12, 25, 40])
    rng1 = np.random.default_rng(1)
    st = start_points("mix", x, y, idx, correct, 3, rng1, k=4, confused=confused, cross=0, alike=True)
    for start, members, j in zip(st.x, st.sources, idx):
        assert members[0] == j and len(set(members.tolist())) == 4 and (y[members] == y[j]).all()
        np.testing.assert_allclose(start, x[members].mean(axis=0), rtol=1e-6)
        # row 25 has 1 alike other of the 3 it needs: its 4 members (asserted above) come from all of
        # class 1 instead of stopping short at the alike one
        if j != 25:
            assert (confused[members] == confused[j]).all(), (j, members)
    # with one from the class the student takes it for, the other two of its class still alike
    rng1 = np.random.default_rng(1)
    both = start_points("mix", x, y, idx, correct, 3, rng1, k=4, confused=confused, cross=1, alike=True)
    for members, j in zip(both.sources, idx[:3]):
        own = members[y[members] == y[j]]
        assert len(own) == 3 and (confused[own] == confused[j]).all() and (y[members] == confused[j]).sum() == 1
    plain = start_points("mix", x, y, idx, correct, 3, np.random.default_rng(1), k=4)
    off = start_points("mix", x, y, idx, correct, 3, np.random.default_rng(1), k=4, confused=confused, alike=False)
    assert [m.tolist() for m in plain.sources] == [m.tolist() for m in off.sources]
    with pytest.raises(ValueError):
        start_points("mix", x, y, idx, correct, 3, np.random.default_rng(1), k=4, alike=True)


def test_nearest_and_exclude_self():
    ref = np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]], np.float32)
    d, i = nearest(np.array([[3.0, 3.0]], np.float32), ref)
    assert i.tolist() == [1] and d[0] == pytest.approx(1.0)
    d, i = nearest(ref, ref, exclude_self=True)
    assert i.tolist() == [2, 2, 0] and d.tolist() == pytest.approx([1.0, np.sqrt(9 + 9), 1.0])


def test_min_distance_filter_drops_a_copy_and_keeps_a_far_point():
    x, _ = blobs()
    nn = nearest(x, x, exclude_self=True)[0]
    far = np.full((1, 8, 8), 0.5, np.float32) + 10.0
    cands = np.concatenate([x[3:4], x[3:4] + 0.001, far])
    keep = min_distance_keep(cands, x, nn, 1.0)
    assert keep.tolist() == [False, False, True]
    assert min_distance_keep(cands, x, nn, 0.0).all()  # 0 disables
    assert nearest_ratio(x[:1], x, nn)[0] == pytest.approx(0.0, abs=0.01)


def test_release_noise_scale_zero_is_identity_and_quantises_otherwise():
    x, _ = blobs()
    rng = np.random.default_rng(0)
    assert release_noise(x, 0.0, rng) is x
    noisy = release_noise(x, 0.1, rng, levels=255)
    assert noisy.min() >= 0 and noisy.max() <= 1 and not np.array_equal(noisy, x)
    np.testing.assert_allclose(noisy * 255, np.round(noisy * 255), atol=1e-4)


def bars(n_per_class: int = 40, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """8x8 images: class c is a bright bar in row band c, at a column of its own per image, plus
    a little noise (a mean of several images of a class is a blur, far from each of them)."""
    rng = np.random.default_rng(seed)
    x = rng.random((n_per_class * classes, 8, 8), dtype=np.float32) * 0.1
    y = np.repeat(np.arange(classes), n_per_class)
    for i, c in enumerate(y):
        col = rng.integers(0, 7)
        x[i, 2 * c : 2 * c + 3, col : col + 2] += 0.8
    return np.clip(x, 0, 1), y


def _image_peer(teach: TeachConfig, drop_class: int | None = None, seed: int = 0, data=blobs) -> Peer:
    x, y = data(40, seed=seed)
    if drop_class is not None:
        x, y = x[y != drop_class], y[y != drop_class]
    learner = make_learner("mlp", (8, 8), ("a", "b", "c"), TrainConfig(epochs=30, lr=3e-3, seed=seed))
    p = Peer(f"p{seed}", x, y, ("a", "b", "c"), learner, teach, seed=seed)
    p.train()
    return p


def test_teach_with_mix_and_the_filter_sends_no_near_copy():
    teach = TeachConfig(CounterfactualConfig(start="mix", start_k=4), min_distance=1.0)
    teacher = _image_peer(teach, data=bars)
    student = _image_peer(TeachConfig(), drop_class=2, seed=1, data=bars)
    batches, report = teacher.teach(student.id, student.snapshot(1), 1)
    assert report.qualified > 0 and report.sent > 0
    sent = np.concatenate([b.x for b in batches]).astype(np.float32) / 255
    assert (nearest_ratio(sent, teacher.x, teacher.private_nn()) >= 1.0).all()
    assert report.near_copies == 0 and report.leakage["nearest_any_ratio_min"] >= 1.0
    # the paper's setting sends near-copies of the very same instances
    paper_batches, paper = _image_peer(TeachConfig(), data=bars).teach(student.id, student.snapshot(1), 1)
    assert paper.near_copies > 0 and paper.filtered == 0


def test_instances_whose_x_prime_was_filtered_are_searched_again_from_new_mixes():
    student = _image_peer(TeachConfig(), drop_class=2, seed=1, data=bars)
    snap = student.snapshot(1)
    once = TeachConfig(CounterfactualConfig(start="mix", start_k=2), min_distance=1.0)
    _, one = _image_peer(once, data=bars).teach(student.id, snap, 1)
    teacher = _image_peer(
        TeachConfig(CounterfactualConfig(start="mix", start_k=2), min_distance=1.0, release_tries=4), data=bars
    )
    batches, four = teacher.teach(student.id, snap, 1)
    assert one.filtered > 0 and one.retried == 0  # the case this is for: some x' dropped on the first search
    assert four.retried > 0 and four.sent > one.sent
    assert four.retried <= 3 * four.attempted and four.counterfactuals > one.counterfactuals
    sent = np.concatenate([b.x for b in batches]).astype(np.float32) / 255
    assert (nearest_ratio(sent, teacher.x, teacher.private_nn()) >= 1.0).all() and four.near_copies == 0
    assert four.leakage["count"] == four.sent  # measured once, over everything released
    # the paper's start is not random: a new search from it would find the same x', so none is made
    paper = _image_peer(TeachConfig(min_distance=1.0, release_tries=4), data=bars)
    _, rep = paper.teach(student.id, snap, 1)
    assert rep.retried == 0
    with pytest.raises(Exception, match="release_tries"):
        TeachConfig(release_tries=0)


def test_more_starts_per_instance_send_more_distinct_examples_from_the_same_instances():
    """starts 3: each qualified instance searched from 3 fresh mixes; more distinct examples sent,
    still none near a private example; the paper's start (the instance) is searched once."""
    student = _image_peer(TeachConfig(), drop_class=2, seed=1, data=bars)
    snap = student.snapshot(1)
    mix = CounterfactualConfig(start="mix", start_k=4)
    _, one = _image_peer(TeachConfig(mix, min_distance=1.0), data=bars).teach(student.id, snap, 1)
    teacher = _image_peer(TeachConfig(mix, min_distance=1.0, starts=3), data=bars)
    batches, three = teacher.teach(student.id, snap, 1)
    assert three.qualified == one.qualified > 0 and three.attempted == 3 * one.attempted
    assert three.counterfactuals > 2 * one.counterfactuals and three.sent > 2 * one.sent
    sent = np.concatenate([b.x for b in batches])
    assert len(np.unique(sent.reshape(len(sent), -1), axis=0)) == len(sent)  # all distinct
    assert (nearest_ratio(sent.astype(np.float32) / 255, teacher.x, teacher.private_nn()) >= 1.0).all()
    _, paper = _image_peer(TeachConfig(starts=3), data=bars).teach(student.id, snap, 1)
    _, paper_once = _image_peer(TeachConfig(), data=bars).teach(student.id, snap, 1)
    assert paper.attempted == paper_once.attempted and paper.sent == paper_once.sent
    with pytest.raises(Exception, match="starts"):
        TeachConfig(starts=0)


def test_teach_on_a_table_with_every_start_mode():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 3)).astype(np.float32) * 5 + 10
    y = (x[:, 0] > 10).astype(np.int64)
    for mode in START_MODES:
        teach = TeachConfig(CounterfactualConfig(start=mode, start_k=2), noise_scale=0.05, min_distance=0.5)
        learner = make_learner("mlp", (3,), ("lo", "hi"), TrainConfig(epochs=30, seed=0))
        teacher = Peer("t", x, y, ("lo", "hi"), learner, teach, features=("a", "b", "c"))
        teacher.train()
        weak = make_learner("mlp", (3,), ("lo", "hi"), TrainConfig(epochs=1, seed=1))
        student = Peer("s", x[:10], np.zeros(10, np.int64), ("lo", "hi"), weak, features=("a", "b", "c"))
        student.train()
        batches, report = teacher.teach("s", student.snapshot(1), 1)
        assert report.qualified > 0
        for b in batches:
            assert b.x.shape[1] == 3 and np.isfinite(b.x).all()
            assert (b.x >= teacher.low - 1e-4).all() and (b.x <= teacher.high + 1e-4).all()


def test_the_knobs_exist_everywhere_with_the_same_defaults(monkeypatch):
    from peer.config import options
    from peer.flower.client_app import experiment_config
    from server.cli import build_parser

    defaults = {f.name: f.default for f in fields(ExperimentConfig)}
    assert {k: defaults[k] for k in KNOBS} == KNOBS
    assert set(KNOBS) <= {f.name for f in options()}
    args = build_parser()[0].parse_args(["demo"])
    assert {k: getattr(args, k) for k in KNOBS} == KNOBS
    config = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    app = config["tool"]["flwr"]["app"]["config"]
    assert {k: app[k.replace("_", "-")] for k in KNOBS} == KNOBS
    monkeypatch.setenv("CKD_CF_START", "mix")
    monkeypatch.setenv("CKD_MIN_DISTANCE", "1.5")
    args = build_parser()[0].parse_args(["demo"])
    assert (args.cf_start, args.min_distance) == ("mix", 1.5)
    cfg = experiment_config({"cf-start": "prototype", "noise-scale": 0.1, "cf-start-k": 2}, 3)
    assert (cfg.cf_start, cfg.noise_scale, cfg.cf_start_k) == ("prototype", 0.1, 2)
    assert cfg.teach().noise_scale == 0.1 and cfg.teach().counterfactual.start == "prototype"


def test_privacy_preset_sets_only_knobs_not_given():
    assert PRIVACY_PRESETS["guarded"] == {k: v for k, v in KNOBS.items() if k != "privacy"}  # the default
    paper = {
        "cf_start": "instance",
        "cf_start_k": 4,
        "cf_start_cross": 0,
        "cf_start_pool": "class",
        "min_distance": 0.0,
        "min_distance_action": "drop",
        "noise_scale": 0.0,
        "release_tries": 1,
        "soft_labels": "off",
        "own_mix": 0,
        "own_mix_cross": 0,
        "peer_distill": 0.0,
        "alpha": 0.5,
    }
    assert PRIVACY_PRESETS["paper"] == paper
    for name, preset in PRIVACY_PRESETS.items():
        values = with_privacy({**KNOBS, "privacy": name, "min_distance": 0.3}, {"min_distance"})
        assert values["min_distance"] == 0.3
        assert all(values[k] == v for k, v in preset.items() if k != "min_distance")
        ExperimentConfig(**values)
    custom = with_privacy({**KNOBS, "privacy": "custom", "cf_start": "noise"}, set())
    assert custom["cf_start"] == "noise"
    with pytest.raises(Exception, match="unknown --privacy"):
        ExperimentConfig(privacy="nope")
    with pytest.raises(Exception, match="unknown counterfactual start"):
        ExperimentConfig(cf_start="nope")


def test_privacy_preset_in_code():
    """ExperimentConfig(privacy=...) built in code is the preset, as on the command line: knobs not
    passed come from it, knobs passed win, and a copy (dataclasses.replace) keeps its knobs."""
    from dataclasses import replace

    paper = ExperimentConfig(privacy="paper")
    assert {k: getattr(paper, k) for k in PRIVACY_PRESETS["paper"]} == PRIVACY_PRESETS["paper"]
    mine = ExperimentConfig(privacy="paper", alpha=0.3, own_mix=4)
    assert (mine.alpha, mine.own_mix, mine.cf_start, mine.peer_distill) == (0.3, 4, "instance", 0.0)
    guarded = ExperimentConfig()
    assert {k: getattr(guarded, k) for k in PRIVACY_PRESETS["guarded"]} == PRIVACY_PRESETS["guarded"]
    assert ExperimentConfig(privacy="custom", cf_start="noise").cf_start == "noise"
    assert replace(paper, peers=3).cf_start == "instance"
    positional = ExperimentConfig(3)  # fields may be passed in order, as a dataclass takes them
    assert positional.peers == 3 and positional.cf_start == "mix"


def test_privacy_preset_through_cli_and_flower():
    from peer.cli import with_data
    from peer.flower.client_app import experiment_config

    values = {name: f.default for f in fields(ExperimentConfig) for name in [f.name]}
    resolved, _ = with_data({**values, "privacy": "guarded", "noise_scale": 0.1}, {"privacy", "noise_scale"})
    assert (resolved["cf_start"], resolved["min_distance"], resolved["noise_scale"]) == ("mix", 1.0, 0.1)
    resolved, _ = with_data({**values, "privacy": "paper"}, {"privacy"})
    assert (resolved["cf_start"], resolved["min_distance"]) == ("instance", 0.0)
    cfg = experiment_config({"privacy": "guarded", "min-distance": 0.5}, 3)
    assert (cfg.cf_start, cfg.cf_start_k, cfg.min_distance) == ("mix", 4, 0.5)
    assert experiment_config({"privacy": "paper"}, 3).cf_start == "instance"


def test_shifted_copies_of_near_copies_count_and_are_filtered_with_their_source():
    """Augmentation shifts x' by whole pixels: far from every private image in pixels, yet the same
    image. Each copy counts as near as the x' it was made from, and leaves or stays with it."""
    aug = AugmentConfig(copies=2, translate=0.25, degrees=0.0, noise=0.0)
    student = _image_peer(TeachConfig(), drop_class=2, seed=1)
    teacher = _image_peer(TeachConfig(augment=aug))
    batches, report = teacher.teach(student.id, student.snapshot(1), 1)
    sent = np.concatenate([b.x for b in batches]).astype(np.float32) / 255
    in_pixels = nearest_ratio(sent, teacher.x, teacher.private_nn()) < 1
    aligned = aligned_nearest_ratio(sent, teacher.x, radius=2) < 1
    assert report.sent == len(sent) > 0 and report.near_copies == report.sent
    assert in_pixels.sum() < aligned.sum() <= report.near_copies  # the pixel test alone misses shifted copies
    filtered = _image_peer(TeachConfig(augment=aug, min_distance=1.0))
    _, guarded = filtered.teach(student.id, student.snapshot(1), 1)
    assert guarded.sent == 0 and guarded.filtered == report.sent


def test_push_out_moves_near_candidates_out_of_every_ball_and_leaves_the_rest():
    rng = np.random.default_rng(3)
    private = (rng.random((200, 64), dtype=np.float32) * 0.5 + 0.25).astype(np.float32)
    nn = nearest(private, private, exclude_self=True)[0]
    near = np.clip(private[:20] + rng.normal(0, 0.01, (20, 64)).astype(np.float32), 0, 1)
    far = np.full((5, 64), 0.99, np.float32)  # nowhere near the private cloud
    copy = private[20:22].copy()  # exact copies: no ray to move them along
    cand = np.concatenate([near, far, copy])
    assert (nearest_ratio(near, private, nn) < 1).all()
    out = push_out(cand, private, nn, 1.0, levels=255)[0]
    ratio = nearest_ratio(out, private, nn)
    assert (ratio[:20] >= 1.0).all()  # every near one now outside every ball, not only its own
    assert np.array_equal(out[20:25], far) and np.array_equal(out[25:], copy)  # left for the filter
    assert np.array_equal(np.round(out[:20] * 255) / 255, out[:20]) and out.min() >= 0 and out.max() <= 1
    # moved along the ray from the private example, to just beyond its ball
    moved = np.linalg.norm(out[:20] - private[:20], axis=1) / nn[:20]
    assert (moved >= 1.0).all() and np.median(moved) < 1.2
    assert np.array_equal(push_out(cand, private, nn, 0.0)[0], cand)  # fraction 0: no ball
    # the ratios the push measured on the way are those of what it returns, with one index reused
    index = RatioIndex(private, nn)
    again, measured = push_out(cand, private, nn, 1.0, levels=255, index=index)
    assert np.array_equal(again, out)
    np.testing.assert_allclose(measured, ratio, rtol=1e-6)
    np.testing.assert_array_equal(index.ratio_index(cand)[1], nearest_ratio_index(cand, private, nn)[1])


def test_teach_with_push_sends_more_than_drop_and_still_no_near_copy():
    student = _image_peer(TeachConfig(), drop_class=2, seed=1, data=bars)
    snap = student.snapshot(1)
    start = CounterfactualConfig(start="mix", start_k=2)
    _, dropped = _image_peer(TeachConfig(start, min_distance=1.0), data=bars).teach(student.id, snap, 1)
    teacher = _image_peer(TeachConfig(start, min_distance=1.0, min_distance_action="push"), data=bars)
    batches, pushed = teacher.teach(student.id, snap, 1)
    # without augmented copies (a shifted copy need not keep the class) all sent is pushed or searched x'
    bare = _image_peer(
        TeachConfig(start, AugmentConfig(copies=0), min_distance=1.0, min_distance_action="push"), data=bars
    )
    bare_batches, _ = bare.teach(student.id, snap, 1)
    assert dropped.filtered > 0 and dropped.pushed == 0  # the case this is for
    assert pushed.pushed > 0 and pushed.sent > dropped.sent
    sent = np.concatenate([b.x for b in batches]).astype(np.float32) / 255
    assert (nearest_ratio(sent, teacher.x, teacher.private_nn()) >= 1.0).all() and pushed.near_copies == 0
    # a pushed x' still carries the class the teacher gives it
    bare_sent = np.concatenate([b.x for b in bare_batches]).astype(np.float32) / 255
    labels = np.concatenate([b.y for b in bare_batches])
    assert (bare.learner.predict_proba(bare_sent).argmax(axis=1) == labels).all()
    with pytest.raises(Exception, match="min-distance action"):
        TeachConfig(min_distance_action="nudge")


def test_mix_draws_each_subset_of_the_others_equally_often():
    """The others of an instance are a uniformly random subset of its pool without itself: over many
    draws of 2 of the 4 others of a class of 5, each of the 6 pairs comes about 1/6 of the time."""
    from collections import Counter

    x = np.zeros((5, 2, 2), np.float32)
    y = np.zeros(5, dtype=np.int64)
    idx = np.full(6000, 2)
    st = start_points("mix", x, y, idx, np.ones(5, bool), 1, np.random.default_rng(3), k=3)
    assert all(m[0] == 2 and 2 not in m[1:].tolist() and len(set(m.tolist())) == 3 for m in st.sources)
    counts = Counter(tuple(m[1:].tolist()) for m in st.sources)
    assert set(counts) == {(0, 1), (0, 3), (0, 4), (1, 3), (1, 4), (3, 4)}
    assert all(abs(n - 1000) < 150 for n in counts.values()), counts  # sd about 29
