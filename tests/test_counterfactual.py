"""The formulas of a teaching step on tiny hand-made cases."""

import numpy as np
import pytest
import torch
from torch import nn

from peer.core.counterfactual import (
    CounterfactualConfig,
    dedupe,
    gradient_counterfactuals,
    leaf_box_counterfactuals,
    qualified_mask,
    search_counterfactuals,
    soft_targets,
    votes_can_reach,
)
from peer.errors import UsageError
from peer.learners import TrainConfig
from peer.learners.forest import ForestLearner


def test_qualified_mask_is_teacher_right_and_student_wrong():
    y = np.array([0, 1, 2, 1])
    teacher = np.array(
        [[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.6, 0.2, 0.2], [0.2, 0.7, 0.1]]
    )  # right, right, wrong, right
    student = np.array(
        [[0.1, 0.8, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.5, 0.4, 0.1]]
    )  # wrong, right, right, wrong
    assert qualified_mask(teacher, student, y).tolist() == [True, False, False, True]


def test_soft_targets_interpolate_between_belief_and_label():
    p = np.array([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]], dtype=np.float32)
    y = np.array([0, 2])
    assert np.allclose(soft_targets(p, y, 0.0), p)
    assert np.allclose(soft_targets(p, y, 1.0), np.eye(3)[y])
    half = soft_targets(p, y, 0.5)
    assert np.allclose(half[0], [0.8, 0.15, 0.05]) and np.allclose(half[1], [0.1, 0.1, 0.8])
    assert np.allclose(half.sum(axis=1), 1.0)


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_alpha_outside_unit_interval_is_refused(alpha):
    with pytest.raises(UsageError, match="alpha must be in"):
        CounterfactualConfig(alpha=alpha)


def _teacher() -> nn.Module:
    """A small ReLU net with confident, input-sensitive outputs, like a trained teacher."""
    torch.manual_seed(0)
    module = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3))
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(4.0)
    return module


@pytest.mark.parametrize("method", ["newton", "adam"])
def test_gradient_counterfactual_moves_toward_target_and_stays_in_range(method):
    module = _teacher()
    rng = np.random.default_rng(0)
    x = rng.random((64, 4, 4), dtype=np.float32)
    with torch.no_grad():
        proba = torch.softmax(module(torch.from_numpy(x)), 1).numpy()
    y = proba.argmax(axis=1)
    target = soft_targets(proba, y, 0.5)
    cfg = CounterfactualConfig(method=method, max_steps=200, lr=0.01)
    res = gradient_counterfactuals(module, x, target, cfg)
    gap0 = np.abs(proba - target).max(axis=1)
    assert res.x.min() >= 0.0 and res.x.max() <= 1.0
    assert np.allclose(res.x * 255, np.round(res.x * 255), atol=1e-4)  # quantised as sent
    assert res.ok.mean() > 0.8
    assert (res.gap[res.ok] <= np.maximum(gap0[res.ok] * cfg.rel_tol, cfg.abs_tol) + 1e-6).all()
    assert res.moved[res.ok].all()
    # the model's belief moved toward the label, and x' stayed close to x
    with torch.no_grad():
        after = torch.softmax(module(torch.from_numpy(res.x)), 1).numpy()
    assert (after[np.arange(64), y] > proba[np.arange(64), y])[res.ok].all()
    assert np.abs(res.x - x).reshape(64, -1).sum(axis=1).mean() < 16 * 0.5


@pytest.mark.parametrize("given", ["array", "function"])
def test_gradient_counterfactual_reports_the_gap_of_what_is_sent(given):
    """The gap reported is the teacher's at the quantised x' (read off the search's last check
    where it made one), and targets given as a function of the teacher's own probabilities are
    the soft targets of its probabilities at the start as it would be sent (on the grid)."""
    module = _teacher()
    x = np.random.default_rng(5).random((200, 4, 4), dtype=np.float32)
    with torch.no_grad():
        proba = torch.softmax(module(torch.from_numpy(x)), 1).numpy()
    y = (proba.argmax(axis=1) + np.arange(200) % 2) % 3  # half toward their own class, half another
    target = soft_targets(proba, y, 0.5)
    cfg = CounterfactualConfig(batch_size=64)  # several batches: each with its own rows of y
    if given == "array":
        res = gradient_counterfactuals(module, x, target, cfg)
    else:
        res = gradient_counterfactuals(module, x, lambda p, rows: soft_targets(p, y[rows], 0.5), cfg)
        with torch.no_grad():
            on_grid = torch.softmax(module(torch.from_numpy(np.round(x * 255) / 255)), 1).numpy()
        target = soft_targets(on_grid, y, 0.5)
    with torch.no_grad():
        sent = torch.softmax(module(torch.from_numpy(res.x)), 1).numpy()
    assert np.allclose(res.gap, np.abs(sent - target).max(axis=1), atol=1e-5)
    assert res.ok.mean() > 0.8 and (res.steps >= 1).all()


def test_unreachable_target_is_a_counted_failure():
    module = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    with torch.no_grad():
        module[1].weight.zero_()  # output ignores the input: no x' can change it
    x = np.full((5, 4, 4), 0.5, dtype=np.float32)
    target = np.tile(np.array([[0.9, 0.05, 0.05]], dtype=np.float32), (5, 1))
    res = gradient_counterfactuals(module, x, target, CounterfactualConfig(max_steps=5))
    assert res.failed == 5 and not res.ok.any()


def test_gradient_free_search_reaches_targets_of_a_step_function():
    # a "tree": class 1 iff mean of the first 4 features > 0.5
    def predict_proba(x):
        score = (x.reshape(len(x), -1)[:, :4].mean(axis=1) > 0.5).astype(np.float32)
        p1 = 0.2 + 0.6 * score
        return np.stack([1 - p1, p1], axis=1)

    rng = np.random.default_rng(1)
    x = np.concatenate([rng.uniform(0.3, 0.5, (20, 8)), rng.uniform(0.0, 1.0, (20, 8))]).astype(np.float32)
    x[:20, 4:] = 0.0
    start = predict_proba(x)
    target = soft_targets(start, np.ones(40, dtype=np.int64), 1.0)  # reachable: 0.8 is within 30% of the gap
    prototypes = np.stack([np.zeros(8), np.full(8, 0.9)]).astype(np.float32)
    res = search_counterfactuals(predict_proba, x, target, prototypes, CounterfactualConfig(), np.random.default_rng(0))
    assert res.ok[:20].all()  # the class-0 points become class-1 counterfactuals
    assert (res.x >= 0).all() and (res.x <= 1).all()
    assert (predict_proba(res.x[:20])[:, 1] > 0.5).all()
    assert np.abs(res.x[:20] - x[:20]).sum(axis=1).max() < np.abs(prototypes[1] - x[:20]).sum(axis=1).max()


@pytest.mark.parametrize("levels", [255, None])
def test_gradient_free_search_does_not_depend_on_its_block_size(monkeypatch, levels):
    """The search takes its candidates a block of examples at a time, its random draws in one
    fixed order: blocks of one example give exactly what one block of all gives."""
    import peer.core.counterfactual as cf

    forest = ForestLearner((12,), ("a", "b", "c"), TrainConfig())
    rng = np.random.default_rng(6)
    x = rng.random((300, 12), dtype=np.float32)
    forest.fit(x, (x[:, 0] + x[:, 1] > 1.0).astype(int) + (x[:, 2] > 0.8), seed=0)
    start = forest.predict_proba(x[:60])
    target = soft_targets(start, (start.argmax(axis=1) + 1) % 3, 0.5)
    protos = np.stack([x[:100].mean(axis=0)] * 3)
    cfg = CounterfactualConfig(max_steps=5)

    def run(block):
        monkeypatch.setattr(cf, "_block", lambda row_size, elements=1 << 22: block)
        rng = np.random.default_rng(1)
        return search_counterfactuals(forest.predict_proba, x[:60], target, protos, cfg, rng, levels)

    whole, one = run(10_000), run(1)
    assert whole.failed < 60 and (whole.steps > 1).any()  # the evolution strategy ran
    for field in ("x", "ok", "moved", "steps", "gap"):
        assert np.array_equal(getattr(whole, field), getattr(one, field)), field


def test_dedupe_keeps_first_of_each_input_label_pair():
    x = np.array([[1, 2], [1, 2], [3, 4], [1, 2], [3, 4]], dtype=np.uint8)
    y = np.array([0, 0, 0, 1, 0])
    assert dedupe(x, y).tolist() == [0, 2, 3]
    assert dedupe(x[:0], y[:0]).tolist() == []


def test_newton_without_minimum_steps_leaves_examples_at_their_target_alone():
    module = _teacher()
    x = np.random.default_rng(2).random((16, 4, 4), dtype=np.float32)
    with torch.no_grad():
        proba = torch.softmax(module(torch.from_numpy(x)), 1).numpy()
    y = proba.argmax(axis=1)
    target = soft_targets(proba, y, 0.0)  # alpha 0: already there
    res = gradient_counterfactuals(module, x, target, CounterfactualConfig(min_steps=0), levels=None)
    assert (res.steps == 0).all() and not res.moved.any() and not res.ok.any()
    assert np.array_equal(res.x, x)
    other = soft_targets(proba, (y + 1) % 3, 0.5)
    moved = gradient_counterfactuals(module, x, other, CounterfactualConfig(min_steps=0))
    assert (moved.steps >= 1).all() and moved.ok.mean() > 0.8


def _plain_newton(module, x0, target, cfg):
    """The Gauss-Newton search without its cost routing: every example still moving is checked by
    a forward pass of its own at each step, then all that have not reached their target step."""
    from peer.core.counterfactual import _PROBE, _TRUST, _done, _gap

    log_target = torch.log(target.clamp_min(1e-12))
    xs, steps = x0.clone(), torch.zeros(len(x0), dtype=torch.int32)
    with torch.no_grad():
        gap0 = _gap(torch.softmax(module(x0), dim=1), target)
    active = torch.arange(len(x0))
    for t in range(1, cfg.max_steps + 1):
        if t > cfg.min_steps:
            with torch.no_grad():
                gap = _gap(torch.softmax(module(xs[active]), dim=1), target[active])
            active = active[~_done(gap, gap0[active], cfg)]
        if len(active) == 0:
            break
        xa = xs[active].requires_grad_(True)
        z = module(xa)
        r = (log_target[active] - torch.log_softmax(z, dim=1)).detach()
        r = r - r.mean(dim=1, keepdim=True)
        zc = z - z.mean(dim=1, keepdim=True)
        (d,) = torch.autograd.grad((zc * r).sum(), xa)
        with torch.no_grad():
            d = d / d.flatten(1).abs().amax(dim=1).clamp_min(1e-12).view(-1, 1, 1)
            u = module(xa + _PROBE * d)
            u = (u - u.mean(dim=1, keepdim=True) - zc) / _PROBE
            length = ((r * u).sum(dim=1) / (u * u).sum(dim=1).clamp_min(1e-12)).clamp_(0.0, _TRUST)
            xs[active] = (xa + length.view(-1, 1, 1) * d).clamp_(0.0, 1.0)
            steps[active] = t
    return xs, steps, gap0


@pytest.mark.parametrize("min_steps", [0, 1, 2])
def test_newton_routing_of_checks_changes_only_their_cost(min_steps):
    """Which pass checks an example (without gradient when predicted done, else the gradient pass)
    must not change where any example ends, how many steps it takes or what counts as its start."""
    from peer.core.counterfactual import _newton_batch

    module = _teacher().double()  # float64: sums in different batch shapes agree to the last bit
    x = torch.from_numpy(np.random.default_rng(3).random((96, 4, 4))).double()
    with torch.no_grad():
        proba = torch.softmax(module(x), 1).numpy()
    y = np.random.default_rng(4).integers(0, 3, 96)
    target = torch.from_numpy(soft_targets(proba, y, 0.5))
    cfg = CounterfactualConfig(min_steps=min_steps, max_steps=12)
    for p in module.parameters():
        p.requires_grad_(False)
    xs, steps, gap0, _, _ = _newton_batch(module, x, target, cfg)
    want_x, want_steps, want_gap0 = _plain_newton(module, x, target, cfg)
    assert len(np.unique(steps.numpy())) >= 3  # examples stop after different numbers of steps
    assert torch.equal(steps, want_steps)
    assert torch.allclose(xs, want_x, rtol=0, atol=1e-12) and torch.allclose(gap0, want_gap0, rtol=0, atol=1e-12)


def test_convolutional_teacher_searches_a_channels_last_copy_of_the_same_function():
    from peer.core.counterfactual import _fast_layout

    torch.manual_seed(0)
    module = nn.Sequential(
        nn.Unflatten(1, (1, 8)), nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)
    ).eval()
    fast = _fast_layout(module, torch.device("cpu"))
    assert fast is not module and fast[1].weight.is_contiguous(memory_format=torch.channels_last)
    assert module[1].weight.is_contiguous()  # the teacher's own module is untouched
    x = torch.rand(32, 8, 8)
    with torch.no_grad():
        assert torch.allclose(fast(x), module(x), atol=1e-5)
    mlp = _teacher()
    assert _fast_layout(mlp, torch.device("cpu")) is mlp  # no convolution: searched as it is


def _stumps() -> ForestLearner:
    """Three hand-made stumps on two inputs, each voting class 1 above its threshold:
    x0 > 0.5, x1 > 0.6, x0 > 0.7."""
    forest = ForestLearner((2,), ("a", "b"), TrainConfig())
    splits = [(0, 0.5), (1, 0.6), (0, 0.7)]
    forest.arrays = {
        "roots": np.array([0, 3, 6], dtype=np.int32),
        "left": np.array([1, -1, -1, 4, -1, -1, 7, -1, -1], dtype=np.int32),
        "right": np.array([2, -1, -1, 5, -1, -1, 8, -1, -1], dtype=np.int32),
        "feature": np.array([f for f, _ in splits for f in (f, 0, 0)], dtype=np.int32),
        "threshold": np.array([t for _, t in splits for t in (t, 0.0, 0.0)], dtype=np.float64),
        "value": np.tile(np.array([[0, 0], [1, 0], [0, 1]], dtype=np.float32), (3, 1)),
    }
    return forest


def test_leaf_box_search_takes_the_nearest_boxes_of_a_hand_made_forest():
    forest = _stumps()
    x = np.array([[51, 51], [51, 230]], dtype=np.float32) / 255  # on the grid of what is sent
    proba = forest.predict_proba(x)
    assert np.allclose(proba[:, 1], [0.0, 1 / 3])
    target = soft_targets(proba, np.array([1, 1]), 1.0)  # all three trees must vote b
    target[0] = [1 / 3, 2 / 3]  # two of the three
    res = leaf_box_counterfactuals(forest.leaf_boxes(), forest.predict_proba, x, target, CounterfactualConfig())
    assert res.ok.all()
    # the two nearest stumps, each crossed by the least step on the 255-level grid (153/255 as
    # float32 lies just above 0.6, where the forest, comparing float32 inputs, sees it)
    assert np.array_equal(res.x[0], np.array([128 / 255, 153 / 255], dtype=np.float32))
    assert np.array_equal(res.x[1], np.array([179 / 255, 230 / 255], dtype=np.float32))  # past 0.7 is past 0.5
    assert np.allclose(forest.predict_proba(res.x), target, atol=1e-6)
    assert np.allclose(res.gap, 0.0, atol=1e-6)


def test_leaf_box_search_is_valid_and_closer_than_sampling_on_a_real_forest():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32).reshape(-1, 8, 8)
    y = digits.target
    forest = ForestLearner((8, 8), tuple(str(c) for c in range(10)), TrainConfig(), {"trees": 20})
    forest.fit(x[:1000], y[:1000])
    proba = forest.predict_proba(x[1000:1200])
    right = np.flatnonzero(proba.argmax(axis=1) == y[1000:1200])
    xs, ys = x[1000:1200][right], y[1000:1200][right]
    target = soft_targets(proba[right], ys, 0.5)
    cfg = CounterfactualConfig()
    res = leaf_box_counterfactuals(forest.leaf_boxes(), forest.predict_proba, xs, target, cfg)
    after = forest.predict_proba(res.x)
    gap0 = np.abs(proba[right] - target).max(axis=1)
    assert res.ok.mean() > 0.4  # the rest mostly asks for confidences 20 votes cannot make
    assert (after.argmax(axis=1) == ys)[res.ok].all()
    assert (np.abs(after - target).max(axis=1) <= np.maximum(gap0 * cfg.rel_tol, cfg.abs_tol) + 1e-6)[res.ok].all()
    assert np.allclose(res.x * 255, np.round(res.x * 255), atol=1e-4) and res.x.min() >= 0 and res.x.max() <= 1
    assert (res.x != np.round(xs * 255) / 255).reshape(len(xs), -1).any(axis=1)[res.ok].all()
    protos = np.stack([x[:1000][y[:1000] == c].mean(axis=0) for c in range(10)])
    old = search_counterfactuals(forest.predict_proba, xs, target, protos, cfg, np.random.default_rng(0))
    both = res.ok & old.ok
    l1 = lambda a: np.abs(a - xs).reshape(len(xs), -1).sum(axis=1)  # noqa: E731
    assert both.sum() > 40 and l1(res.x)[both].mean() < 0.5 * l1(old.x)[both].mean()
    # with the boxes, search_counterfactuals is the line search, the leaf boxes from its best point
    # and the evolution strategy for what the forest's votes can still reach: as many as the
    # gradient-free search alone (within a few), as valid, no farther
    full = search_counterfactuals(
        forest.predict_proba, xs, target, protos, cfg, np.random.default_rng(0), boxes=forest.leaf_boxes()
    )
    both = full.ok & old.ok
    assert full.ok.sum() >= 0.97 * old.ok.sum()
    assert (forest.predict_proba(full.x).argmax(axis=1) == ys)[full.ok].all()
    assert l1(full.x)[both].mean() <= l1(old.x)[both].mean()


def test_votes_can_reach_only_outputs_a_forest_can_make():
    boxes = _stumps().leaf_boxes()  # three trees of one-class leaves: outputs are thirds
    target = np.array([[1 / 3, 2 / 3], [0.5, 0.5], [0.5, 0.5]], dtype=np.float32)
    goal = np.array([0.01, 0.1, 0.2])
    assert votes_can_reach(boxes, target, goal).tolist() == [True, False, True]


def test_leaf_boxes_follow_a_table_into_its_unit_search_space():
    forest = _stumps()
    low, high = np.array([-10.0, 0.0], np.float32), np.array([10.0, 2.0], np.float32)
    unit = lambda u: forest.predict_proba(low + u * (high - low))  # noqa: E731
    u = np.array([[0.2, 0.1]], dtype=np.float32)  # x = (-6, 0.2): every stump votes a
    target = np.array([[0.0, 1.0]], dtype=np.float32)
    res = leaf_box_counterfactuals(forest.leaf_boxes(low, high), unit, u, target, CounterfactualConfig(), levels=None)
    assert res.ok.all() and np.allclose(unit(res.x), target)
    assert np.allclose(res.x[0], [(0.7 + 10) / 20, 0.6 / 2], atol=1e-5)  # just past x0 = 0.7 and x1 = 0.6
