import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minima import curves
from minima.evaluation import evaluate, recompute_bn, to_input
from networks import random_model
from tolerances import mean_loss_two_ways


def _mlp(seed: int, hidden: int = 8) -> nn.Module:
    """A small batchnorm MLP on the tiny task's 16 x 16 images."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                         nn.Linear(hidden, 5))


def _trained(seed: int, x: torch.Tensor, y: torch.Tensor, steps: int = 150) -> nn.Module:
    """A minimum of the tiny task: full-batch Adam from the seed's initial weights to near-zero train loss."""
    model = _mlp(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(steps):
        loss = F.cross_entropy(model(to_input(x)), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return recompute_bn(model, x).eval()


@pytest.fixture
def resnets(tiny, source):
    return [random_model(tiny, source, seed) for seed in (1, 2)]


def test_every_curve_ends_at_the_two_minima_bit_for_bit(tiny, source, resnets):
    a_model, b_model = resnets
    a, b = (curves.parameters(m, m.state_dict()) for m in resnets)
    theta = {n: v + torch.randn_like(v) for n, v in a.items()}  # a bend off the line
    for kind in curves.CURVES:
        for t, end in ((0.0, a), (1.0, b)):
            point = curves.on_curve(kind, a, theta, b, t)
            assert all(torch.equal(point[n], end[n]) for n in end), (kind, t)
    x, y = source.x_train[:24], source.y_train[:24]
    path = curves.trace_path(copy.deepcopy(a_model), a, b, x, y, epochs=1, batch_size=8, lr=0.01, weight=1.0,
                             nodes=3, seed=0)
    assert all(torch.equal(path[0][n], a[n]) and torch.equal(path[-1][n], b[n]) for n in a)
    # evaluated: at t = 0 and 1 the rows are each end model's own numbers after the same recompute
    splits = {"train": (x, y)}
    before = {k: v.clone() for k, v in a_model.state_dict().items()}
    rows = curves.pair_paths(a_model, a, b, (x, y), splits, x, ["bezier", "chain", "report"], epochs=1,
                             batch_size=8, lr=0.01, points=3, distance_weight=1.0, seed=0)
    assert all(torch.equal(before[k], v) for k, v in a_model.state_dict().items()), "the model is restored"
    for t, model in ((0.0, a_model), (1.0, b_model)):
        # bit for bit: the very weights of the end model (their ends are exact, above), the same
        # single-batch recompute and the same evaluate(), the same operations in the same order
        want = evaluate(recompute_bn(copy.deepcopy(model), x), x, y)
        for path, g in rows[rows.t == t].groupby("path"):
            assert (g.loss.item(), g.accuracy.item()) == (want["loss"], want["accuracy"]), (path, t)


def test_trained_curve_barrier_is_at_most_the_lines_on_a_pair_with_a_barrier(source):
    x, y = source.x_train, source.y_train  # the tiny task's 60 train images
    a_model, b_model = _trained(1, x, y), _trained(2, x, y)
    a, b = (curves.parameters(m, m.state_dict()) for m in (a_model, b_model))
    rows = curves.pair_paths(a_model, a, b, (x, y), {"train": (x, y)}, x, ["bezier", "chain"], epochs=40,
                             batch_size=20, lr=0.01, points=9, distance_weight=1.0, seed=0)
    bars = curves.barriers(rows.assign(pair="1 -> 2", bn_mode="recompute"), threshold=0.1).set_index("path")
    assert bars.barrier["line"] > 0.2, "the two minima must have a real barrier on the line for this test"
    for kind in ("bezier", "chain"):
        assert bars.barrier[kind] <= bars.barrier["line"], kind
    assert bars.barrier["bezier"] < bars.barrier["line"] / 2, "training the bend lowers the barrier clearly"
    assert bars.relative_length["line"] == pytest.approx(1.0)  # arc summed over the grid: float64 roundings only
    assert (bars.relative_length[["bezier", "chain"]] > 1).all(), "a bent path is longer than the line"


def test_batchnorm_along_the_curve_is_a_fresh_train_mode_pass_on_the_recompute_images(tiny, source, resnets):
    a_model, b_model = resnets
    a, b = (curves.parameters(m, m.state_dict()) for m in resnets)
    theta = {n: torch.lerp(a[n], b[n], 0.5) + 0.3 * torch.randn_like(v) for n, v in a.items()}
    recompute_x = source.x_train[:40]  # one batch of recompute_bn: the hand pass below sees the same batch
    splits = {"test": (source.x_test, source.y_test)}
    t = 0.3
    rows = curves.evaluate_path(a_model, [(t, curves.on_curve("bezier", a, theta, b, t))], a, b, splits, recompute_x)

    hand = copy.deepcopy(a_model)
    hand.load_state_dict(curves.on_curve("bezier", a, theta, b, t), strict=False)
    for m in hand.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    hand.train()
    with torch.no_grad():
        hand(to_input(recompute_x))
    want = evaluate(hand, *splits["test"])
    with torch.no_grad():
        scale = hand.eval()(to_input(splits["test"][0])).abs().max().item()
    # the same weights, and statistics from one pass over the same 40 images, by hand: the forward passes
    # may round differently (mean_loss_two_ways: 1e-3 relative for this network); keeping the first
    # model's statistics instead moves the loss by hundreds of nats here (0.3 of noise in the bend)
    tol = mean_loss_two_ways(hand, len(splits["test"][1]), scale, want["loss"])
    assert abs(rows.loss.item() - want["loss"]) <= tol
    kept = copy.deepcopy(a_model)
    kept.load_state_dict(curves.on_curve("bezier", a, theta, b, t), strict=False)
    assert abs(evaluate(kept, *splits["test"])["loss"] - want["loss"]) > 100 * tol, "the check can tell"


def test_the_report_path_reaches_near_the_second_minimum(source, resnets):
    a_model, b_model = resnets
    a, b = (curves.parameters(m, m.state_dict()) for m in resnets)
    x, y = source.x_train, source.y_train
    path = curves.trace_path(a_model, a, b, x, y, epochs=20, batch_size=20, lr=0.01, weight=5.0, nodes=5, seed=0)
    flat = [curves._flat(p) for p in path]
    start, final, end = flat[0], flat[-2], flat[-1]
    assert (final - end).norm() < 0.2 * (start - end).norm(), "the distance term pulls the iterates to b"
    ts = curves.arc_positions(path)
    assert ts[0] == 0 and ts[-1] == 1 and all(p < q for p, q in zip(ts, ts[1:]))
