"""Adversarial images under an L-infinity budget: FGSM and PGD with a random start, in [0, 1].

The primitives the robustness measures attack with and adversarial training trains on; the model is
used in the mode it is in, and only input gradients are taken.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def input_gradient(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Gradient of the mean cross-entropy with respect to the input images (float32, model as it is)."""
    x = x.detach().requires_grad_(True)
    return torch.autograd.grad(F.cross_entropy(model(x), y), x)[0]


def fgsm_images(model: nn.Module, x: Tensor, y: Tensor, epsilons: Sequence[float]) -> Iterator[tuple[float, Tensor]]:
    """(eps, clamp(x + eps * sign(grad), 0, 1)) for every eps, from one input gradient."""
    direction = input_gradient(model, x, y).sign_()
    for eps in epsilons:
        yield eps, (x + eps * direction).clamp_(0, 1)


def pgd_images(model: nn.Module, x: Tensor, y: Tensor, eps: float, steps: int, step_size: float,
               generator: torch.Generator | None = None) -> Tensor:
    """L-infinity PGD: uniform random start in [-eps, eps], `steps` signed-gradient steps, projection, clamp."""
    start = torch.empty_like(x).uniform_(-eps, eps, generator=generator)
    adv = (x + start).clamp_(0, 1)
    for _ in range(steps):
        adv = adv + step_size * input_gradient(model, adv, y).sign_()
        adv = (x + (adv - x).clamp_(-eps, eps)).clamp_(0, 1)
    return adv
