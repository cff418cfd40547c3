"""The steps of SAM, adversarial training and entropy-SGD on a tiny network with batchnorm."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from minima import methods
from minima.config import ConfigError, Study
from minima.train import epoch_generator
from tolerances import roundings


class _Recording(torch.optim.SGD):
    """An optimizer that records the weights and gradients it is asked to step with, and moves nothing."""

    def step(self, closure=None):
        self.seen = [(p.detach().clone(), p.grad.clone()) for p in methods.trained(self)]


@pytest.fixture
def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).train()


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(8, 3, 6, 6, generator=g)
    x[0] = 0.0  # pixels at both ends of the range: the clamp to [0, 1] has work to do
    x[1] = 1.0
    return x, torch.randint(0, 3, (8,), generator=g)


def _buffers(model):
    return {k: v.clone() for k, v in model.named_buffers()}


def _loss(model, weights, x, y):
    return F.cross_entropy(functional_call(model, weights, (x,)), y)


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_steps_with_the_gradient_at_the_perturbed_weights(net, batch, adaptive):
    x, y = batch
    rho = 0.5
    hand = copy.deepcopy(net)
    w = {k: p.detach().requires_grad_() for k, p in hand.named_parameters()}
    g = torch.autograd.grad(_loss(hand, w, x, y), list(w.values()))
    t = [p.detach().abs() for p in w.values()]  # ASAM's T = |w|
    tg = [ti * gi for ti, gi in zip(t, g)]
    scale = rho / torch.cat([v.reshape(-1) for v in (tg if adaptive else g)]).norm()
    # e = rho T^2 g / ||T g||, written in the method's order of operations (so the test compares bit for bit)
    e = [v * ti * scale if adaptive else gi * scale for v, ti, gi in zip(tg, t, g)]
    perturbed = {k: (v.detach() + ei).requires_grad_() for (k, v), ei in zip(w.items(), e)}
    sam_grad = torch.autograd.grad(_loss(hand, perturbed, x, y), list(perturbed.values()))

    optimizer = _Recording(net.parameters(), lr=1.0)
    methods.SAM(sam_rho=rho, sam_adaptive=adaptive).step(net, x, y, optimizer, epoch_generator(0, 1, x.device))
    # bit for bit: the same forward and backward passes at the same weights, then the same float operations
    for (weights, grad), w_i, g_i, plain in zip(optimizer.seen, w.values(), sam_grad, g):
        assert torch.equal(weights, w_i), "the optimizer must step from w itself, not w + e - e"
        assert torch.equal(grad, g_i)
        assert not torch.equal(grad, plain)  # the test can tell SAM's gradient from the plain one


def test_sam_moves_batchnorm_statistics_once_per_step(net, batch):
    x, y = batch
    plain = copy.deepcopy(net)
    with torch.no_grad():
        plain(x)
    methods.SAM(sam_rho=0.5).step(net, x, y, _Recording(net.parameters(), lr=1.0), epoch_generator(0, 1, x.device))
    expected, got = _buffers(plain), _buffers(net)
    assert int(got["1.num_batches_tracked"]) == 1
    # bit for bit: the first pass is the same forward on the same weights; the second moves nothing
    assert all(torch.equal(expected[k], got[k]) for k in expected)


@pytest.mark.parametrize("steps", [1, 3])
def test_adversarial_images_stay_within_eps_and_the_pixel_range(net, batch, steps):
    x, y = batch
    eps = 0.1
    before = _buffers(net)
    method = methods.Adversarial(adv_eps=eps, adv_steps=steps)
    adv = method.attack(net, x, y, epoch_generator(0, 1, x.device))
    # the projection computes x + clamp(adv - x, -eps, eps): one rounding of a sum no larger than 1 + eps,
    # and this test's subtraction one more
    assert ((adv - x).abs() <= eps + roundings(2, 1 + eps)).all()
    assert adv.min() >= 0 and adv.max() <= 1
    assert (adv != x).float().mean() > 0.5, "the attack moved the pixels"
    with methods.batchnorm_stats_kept(net), torch.no_grad():
        assert F.cross_entropy(net(adv), y) > F.cross_entropy(net(x), y), "the attack raised the loss"
    assert all(torch.equal(before[k], v) for k, v in _buffers(net).items()), "the attack moved batchnorm statistics"
    assert all(p.grad is None for p in net.parameters()), "the attack left gradients in the parameters"


def test_an_adversarial_step_moves_batchnorm_statistics_once(net, batch):
    x, y = batch
    method = methods.Adversarial(adv_eps=0.1, adv_steps=3)
    method.step(net, x, y, _Recording(net.parameters(), lr=1.0), epoch_generator(0, 1, x.device))
    assert int(net[1].num_batches_tracked) == 1


def test_entropy_sgd_refuses_more_inner_steps_than_an_epoch_has():
    with pytest.raises(ConfigError, match=r"entropy_steps=4 is more than the 3 steps of an epoch"):
        Study.load("tiny", methods=["entropy_sgd"], entropy_steps=4)
