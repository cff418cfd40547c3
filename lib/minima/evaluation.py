"""Evaluating a model on uint8 image tensors: devices, eval mode, loss and accuracy, batchnorm."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn


def pick_device(preference: str = "auto") -> torch.device:
    """`auto`: cuda if there is one, then mps, else cpu; otherwise the named device."""
    if preference != "auto":
        return torch.device(preference)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def to_input(x: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """uint8 images (N, 3, H, W) to float in [0, 1] on `device`, channels_last (faster on CPU and GPU)."""
    device = device or x.device
    x = x.to(device, non_blocking=True).float().div_(255)
    return x.contiguous(memory_format=torch.channels_last)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode for the block, then back in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def autocast(device: torch.device):
    """bf16 autocast on CUDA, nothing elsewhere (CPU results stay float32)."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> dict[str, float]:
    """Mean cross-entropy and accuracy of `model` (in eval mode) on uint8 images `x`."""
    device = next(model.parameters()).device
    loss, correct = torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.long)
    with eval_mode(model), autocast(device):
        for i in range(0, len(y), batch_size):
            logits = model(to_input(x[i:i + batch_size], device)).float()
            target = y[i:i + batch_size].to(device)
            loss += F.cross_entropy(logits, target, reduction="sum")
            correct += (logits.argmax(1) == target).sum()
    return dict(loss=loss.item() / len(y), accuracy=correct.item() / len(y))


@torch.no_grad()
def recompute_bn(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> nn.Module:
    """Re-estimate every batchnorm layer's running statistics on images `x` (equal weight per batch)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return model
    device = next(model.parameters()).device
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
    was_training = model.training
    model.train()
    with autocast(device):
        for i in range(0, len(x), batch_size):
            model(to_input(x[i:i + batch_size], device))
    for m, momentum in zip(bns, momenta):
        m.momentum = momentum
    model.train(was_training)
    return model
