"""The study's model (an architecture of `minima.archs` at the study's width), input preprocessing as a layer, and
the classification head: found, swapped and hooked whatever the arch."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from minima.archs import build_model
from minima.config import Study



def model_for(study: Study, n_classes: int) -> nn.Module:
    """The study's architecture with a head of `n_classes` outputs."""
    return build_model(study.arch, n_classes, study.width)


def preprocess(model: nn.Module, size: int | None, mean: Sequence[float], std: Sequence[float]) -> nn.Module:
    """Make `model` resize its [0, 1] inputs to `size` (None: as they come) and normalise them by `mean` and
    `std` first, as a forward pre-hook: the state dict keeps the checkpoint's keys, and every perturbation
    of the study still acts on [0, 1] pixels."""
    if size is None and all(m == 0 for m in mean) and all(s == 1 for s in std):
        return model
    shape = (1, -1, 1, 1)

    def hook(module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        if size is not None and x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
        m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(shape)
        s = torch.tensor(std, device=x.device, dtype=x.dtype).view(shape)
        return ((x - m) / s, *args[1:])

    model.register_forward_pre_hook(hook)
    return model


def head_name(model: nn.Module) -> str:
    """The name of the classification head: the model's last linear layer (`fc` in a ResNet)."""
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ValueError(f"{type(model).__name__} has no linear layer to serve as its classification head")
    return names[-1]


def head(model: nn.Module) -> nn.Linear:
    """The classification head (see `head_name`)."""
    return model.get_submodule(head_name(model))


def replace_head(model: nn.Module, n_classes: int, seed: int = 0) -> nn.Module:
    """Swap the classifier for a freshly initialised one with `n_classes` outputs (in place)."""
    name = head_name(model)
    old = model.get_submodule(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        new = nn.Linear(old.in_features, n_classes)
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new.to(old.weight.device))
    return model


def batchnorm_names(model: nn.Module) -> set[str]:
    """Names of the parameters and float buffers that belong to batchnorm layers (by module type)."""
    names = set()
    for prefix, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            for name, t in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
                if t.is_floating_point():
                    names.add(f"{prefix}.{name}" if prefix else name)
    return names
