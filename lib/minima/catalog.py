"""Facts that config, loaders, provisioning and the model builders share: torchvision's classification data sets,
and the architectures adapted to small images (named here so that validating them needs no torch)."""
from __future__ import annotations

from dataclasses import dataclass

FASHION_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot")
KMNIST_NAMES = ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")  # torchvision's KMNIST.classes


@dataclass(frozen=True)
class DataSet:
    """One of torchvision's classification data sets as it lies on disk."""

    name: str          # the config's value for source / target
    title: str         # how people write it
    torchvision: str   # the torchvision.datasets class that downloads it
    folder: str        # where torchvision puts it under its root
    layout: str        # "idx" (MNIST family) or "cifar" (python batches)
    n_classes: int
    train_per_class: int  # images per class in the smallest class of each split
    test_per_class: int
    names: tuple[str, ...] = ()  # class names when the files do not carry them
    system: tuple[str, ...] = ()  # folders where a system package installs it
    debian: str = ""   # the Debian package that installs it there


DATASETS = {d.name: d for d in (
    DataSet("fashion_mnist", "Fashion-MNIST", "FashionMNIST", "FashionMNIST/raw", "idx", 10, 6000, 1000,
            FASHION_NAMES, system=("/usr/share/datasets/fashion-mnist",), debian="dataset-fashion-mnist"),
    # MNIST's classes are unbalanced: its smallest (the digit 5) has 5,421 train and 892 test images
    DataSet("mnist", "MNIST", "MNIST", "MNIST/raw", "idx", 10, 5421, 892, tuple("0123456789")),
    DataSet("kmnist", "KMNIST", "KMNIST", "KMNIST/raw", "idx", 10, 6000, 1000, KMNIST_NAMES),
    DataSet("cifar10", "CIFAR-10", "CIFAR10", "cifar-10-batches-py", "cifar", 10, 5000, 1000),
    DataSet("cifar100", "CIFAR-100", "CIFAR100", "cifar-100-python", "cifar", 100, 500, 100),
)}


# <torchvision name>_small: the architecture with a stem that does not downsample (a 16 px image would otherwise
# shrink to nothing) and width / 64 of torchvision's channels in every layer (minima.archs builds them)
SMALL_ARCHS = {"resnet18_small": "ResNet-18 (batchnorm)",
               "efficientnet_b0_small": "EfficientNet-B0 (batchnorm, SiLU, squeeze-excitation)",
               "convnext_tiny_small": "ConvNeXt-T (layer norm, no batchnorm)"}
