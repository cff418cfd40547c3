"""The architectures a study or a zoo can name: torchvision's classifiers as built, `timm:<name>`, and three
adapted to small images (a stride-1 stem, channels scaled by width / 64), built freshly initialised."""
from __future__ import annotations

import importlib.util

import torch
import torchvision
from torch import nn
from torchvision.models.convnext import CNBlockConfig, ConvNeXt
from torchvision.models.efficientnet import EfficientNet, _efficientnet_conf
from torchvision.models.resnet import BasicBlock, ResNet, resnet18

from minima.catalog import SMALL_ARCHS

OWN_ARCHS = ("resnet18", *SMALL_ARCHS)
TIMM_PREFIX = "timm:"
CONVNEXT_TINY_DEPTHS = (3, 3, 9, 3)
STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")  # what protocol `partial` freezes, in order


def has_stages(model: nn.Module) -> bool:
    """Whether the model is a ResNet with the stages `partial` freezes (stem = conv1 + bn1, layer1 ... layer4)."""
    return all(hasattr(model, m) for m in ("conv1", "bn1", "layer1", "layer4", "fc"))


def torchvision_archs() -> list[str]:
    """torchvision's classification architectures (resnet50, mobilenet_v3_small, efficientnet_b0, ...)."""
    return torchvision.models.list_models(module=torchvision.models)


def arch_problem(arch: str) -> str:
    """Why `arch` cannot be built here ("" when it can)."""
    if arch in OWN_ARCHS or arch in torchvision_archs():
        return ""
    if arch.startswith(TIMM_PREFIX):
        return "" if importlib.util.find_spec("timm") else f"arch={arch!r} needs timm, which is not installed"
    return (f"arch={arch!r} is not known; valid: {', '.join(SMALL_ARCHS)} (adapted to small images), resnet18, a "
            f"torchvision classifier (e.g. resnet50, mobilenet_v3_small, efficientnet_b0, convnext_tiny) or {TIMM_PREFIX}<name> "
            "with timm")


def input_problem(arch: str, n_classes: int, width: int, image_size: int) -> str:
    """Why `arch` cannot classify images of `image_size` pixels ("" when one forward pass of a blank image works):
    architectures built for ImageNet downsample a 16 px image to nothing."""
    model = build_model(arch, n_classes, width).eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size))
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        return (f"arch={arch!r} cannot take {image_size} px images ({first}); valid: a larger image_size, or an "
                f"architecture adapted to small images ({', '.join(SMALL_ARCHS)})")
    return ""


def build_model(arch: str, n_classes: int, width: int = 64) -> nn.Module:
    """A freshly initialised classifier: a small-image variant (`catalog.SMALL_ARCHS`, `width` / 64 of torchvision's channels),
    torchvision's `resnet18` or any torchvision classifier by name, or `timm:<name>` when timm is installed."""
    problem = arch_problem(arch)
    if problem:
        raise ValueError(problem)
    if arch == "resnet18_small":
        return _small_resnet18(n_classes, width)
    if arch == "efficientnet_b0_small":
        return _small_efficientnet_b0(n_classes, width)
    if arch == "convnext_tiny_small":
        return _small_convnext_tiny(n_classes, width)
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
    for m in model.modules():  # torchvision's own initialisation
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def _small_efficientnet_b0(n_classes: int, width: int) -> EfficientNet:
    """EfficientNet-B0 at width / 64 of its channels, its stem at stride 1: 16 px images end at 1 x 1, not 0 x 0."""
    settings, last_channel = _efficientnet_conf("efficientnet_b0", width_mult=width / 64, depth_mult=1.0)
    model = EfficientNet(settings, dropout=0.2, num_classes=n_classes, last_channel=last_channel)
    model.features[0][0].stride = (1, 1)
    return model


def _small_convnext_tiny(n_classes: int, width: int) -> ConvNeXt:
    """ConvNeXt-T at width / 64 of its channels (96, 192, 384, 768), its 4 x 4 stride-4 patchify stem a 3 x 3
    stride-1 convolution, initialised as torchvision initialises ConvNeXt."""
    channels = [round(96 * width / 64 * k) for k in (1, 2, 4, 8)]
    blocks = [CNBlockConfig(channels[i], channels[i + 1] if i < 3 else None, depth)
              for i, depth in enumerate(CONVNEXT_TINY_DEPTHS)]
    model = ConvNeXt(blocks, stochastic_depth_prob=0.1, num_classes=n_classes)
    stem = nn.Conv2d(3, channels[0], kernel_size=3, stride=1, padding=1)
    nn.init.trunc_normal_(stem.weight, std=0.02)
    nn.init.zeros_(stem.bias)
    model.features[0][0] = stem
    return model
