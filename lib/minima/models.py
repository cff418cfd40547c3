"""The study's architectures (ResNet-18 and its small-image variant, torchvision's and timm's classifiers),
input preprocessing as a layer, and the classification head: found, swapped and hooked whatever the arch."""
from __future__ import annotations

import importlib.util
from typing import Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models import resnet18
from torchvision.models.resnet import BasicBlock, ResNet

from minima.config import Study

OWN_ARCHS = ("resnet18", "resnet18_small")
TIMM_PREFIX = "timm:"


def torchvision_archs() -> list[str]:
    """torchvision's classification architectures (resnet50, mobilenet_v3_small, efficientnet_b0, ...)."""
    return torchvision.models.list_models(module=torchvision.models)


def arch_problem(arch: str) -> str:
    """Why `arch` cannot be built here ("" when it can)."""
    if arch in OWN_ARCHS or arch in torchvision_archs():
        return ""
    if arch.startswith(TIMM_PREFIX):
        return "" if importlib.util.find_spec("timm") else f"arch={arch!r} needs timm, which is not installed"
    return (f"arch={arch!r} is not known; valid: {', '.join(OWN_ARCHS)}, a torchvision classifier "
            f"(e.g. resnet50, mobilenet_v3_small, efficientnet_b0, convnext_tiny) or {TIMM_PREFIX}<name> with timm")


def build_model(arch: str, n_classes: int, width: int = 64) -> nn.Module:
    """A freshly initialised classifier: `resnet18_small` (3x3 stem, no max-pool, `width` channels), torchvision's
    `resnet18` or any torchvision classifier by name, or `timm:<name>` when timm is installed."""
    problem = arch_problem(arch)
    if problem:
        raise ValueError(problem)
    if arch == "resnet18_small":
        return _small_resnet18(n_classes, width)
    if arch.startswith(TIMM_PREFIX):
        import timm

        return timm.create_model(arch[len(TIMM_PREFIX):], pretrained=False, num_classes=n_classes)
    return torchvision.models.get_model(arch, weights=None, num_classes=n_classes)


def _small_resnet18(n_classes: int, width: int) -> ResNet:
    model = resnet18(num_classes=n_classes)
    model.inplanes = width
    model.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
    model.bn1 = nn.BatchNorm2d(width)
    model.maxpool = nn.Identity()
    model.layer1 = model._make_layer(BasicBlock, width, 2)
    model.layer2 = model._make_layer(BasicBlock, 2 * width, 2, stride=2)
    model.layer3 = model._make_layer(BasicBlock, 4 * width, 2, stride=2)
    model.layer4 = model._make_layer(BasicBlock, 8 * width, 2, stride=2)
    model.fc = nn.Linear(8 * width, n_classes)
    _init_like_torchvision(model)
    return model


def model_for(study: Study, n_classes: int) -> nn.Module:
    """The study's architecture with a head of `n_classes` outputs."""
    return build_model(study.arch, n_classes, study.width)


def _init_like_torchvision(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


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
