"""ResNet-18 (torchvision) and its small-image variant, and the head swap for finetuning."""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet18
from torchvision.models.resnet import BasicBlock, ResNet

from minima.config import Study


def build_model(arch: str, n_classes: int, width: int = 64) -> ResNet:
    """`resnet18`: torchvision's, ImageNet stem; `resnet18_small`: 3x3 stem, no max-pool, `width` channels."""
    if arch == "resnet18":
        return resnet18(num_classes=n_classes)
    if arch != "resnet18_small":
        raise ValueError(f"arch={arch!r}; expected 'resnet18' or 'resnet18_small'")
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


def model_for(study: Study, n_classes: int) -> ResNet:
    """The study's architecture with a head of `n_classes` outputs."""
    return build_model(study.arch, n_classes, study.width)


def _init_like_torchvision(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def replace_head(model: ResNet, n_classes: int, seed: int = 0) -> ResNet:
    """Swap the classifier for a freshly initialised one with `n_classes` outputs (in place)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Linear(model.fc.in_features, n_classes)
    model.fc = head.to(next(model.parameters()).device)
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
