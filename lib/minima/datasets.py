"""torchvision's classification data sets in their own on-disk formats: find them, read them, provide them.

Fashion-MNIST, MNIST and KMNIST are IDX files (gzipped or not), CIFAR-10 and CIFAR-100 python batches.
They are read straight into uint8 arrays: torchvision's own classes check every file's MD5, which small
files written by a test fail, so torchvision is kept for what it is good at, the checked download.
"""
from __future__ import annotations

import gzip
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from minima.catalog import DATASETS, DataSet

IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
CIFAR_FILES = {"cifar10": ("data_batch_1", "test_batch"), "cifar100": ("train", "test")}


class DataError(RuntimeError):
    """Data that is missing or unusable, with what to do about it."""


Arrays = dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (uint8 images (N, C, H, W), int64 labels)


# ---------------------------------------------------------------- IDX (the MNIST family)

def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not, told by its first bytes) as a numpy array of its declared shape."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in IDX_TYPES:
        raise DataError(f"{path} is not an IDX file (it starts with {raw[:4].hex()}; IDX starts 0000 then a type "
                        f"byte in {sorted(f'{k:02x}' for k in IDX_TYPES)} and the number of dimensions)")
    dtype, ndim = np.dtype(IDX_TYPES[raw[2]]), raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = 4 + 4 * ndim + dtype.itemsize * int(np.prod(shape))
    if len(raw) != expected:
        raise DataError(f"{path}: its header declares shape {shape} ({expected} bytes) but the file has {len(raw)}")
    return np.frombuffer(raw, dtype, offset=4 + 4 * ndim).reshape(shape)


def _idx_file(folder: Path, stem: str) -> Path | None:
    for name in (stem, f"{stem}.gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _read_idx_set(folder: Path) -> Arrays:
    out = {}
    for split, (images, labels) in IDX_FILES.items():
        x, y = read_idx(_idx_file(folder, images)), read_idx(_idx_file(folder, labels))
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"{folder}: {split} images of shape {x.shape} and labels of shape {y.shape}; "
                            "expected (N, H, W) and (N,)")
        out[split] = (np.ascontiguousarray(x[:, None].astype(np.uint8)), y.astype(np.int64))
    return out


# ---------------------------------------------------------------- CIFAR python batches

class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches: numpy arrays and plain values, nothing that could run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"CIFAR batch refers to {module}.{name}, which is not allowed")
        return super().find_class(module, name)


def read_cifar_batch(path: Path, *required: str) -> dict:
    """A CIFAR pickle as a dict with str keys: Python 2 files give str keys, Python 3 ones often bytes."""
    with open(path, "rb") as f:
        raw = _ArrayUnpickler(f, encoding="latin1").load()
    batch = {_text(k): v for k, v in raw.items()} if isinstance(raw, dict) else {}
    missing = [k for k in required if k not in batch]
    if missing:
        raise DataError(f"{path} is not a CIFAR batch: it lacks {missing} (its keys: {sorted(batch)})")
    return batch


def _text(value: object) -> str:
    """A key or class name as str; bytes (from Python 3 pickles) are decoded as UTF-8."""
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _cifar_arrays(batches: list[dict], labels: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([np.asarray(b["data"], dtype=np.uint8) for b in batches]).reshape(-1, 3, 32, 32)
    return x, np.array([label for b in batches for label in b[labels]], dtype=np.int64)


def _read_cifar_set(ds: DataSet, folder: Path) -> tuple[Arrays, list[str]]:
    if ds.name == "cifar10":
        train = [read_cifar_batch(p, "data", "labels") for p in sorted(folder.glob("data_batch_*"))]
        test = [read_cifar_batch(folder / "test_batch", "data", "labels")]
        labels, meta, names_key = "labels", folder / "batches.meta", "label_names"
    else:
        train = [read_cifar_batch(folder / "train", "data", "fine_labels")]
        test = [read_cifar_batch(folder / "test", "data", "fine_labels")]
        labels, meta, names_key = "fine_labels", folder / "meta", "fine_label_names"
    names = ([_text(n) for n in read_cifar_batch(meta, names_key)[names_key]] if meta.is_file()
             else [str(c) for c in range(ds.n_classes)])
    return dict(train=_cifar_arrays(train, labels), test=_cifar_arrays(test, labels)), names


# ---------------------------------------------------------------- finding, reading, providing

def _complete(ds: DataSet, folder: Path) -> bool:
    """Whether `folder` holds every file the data set's reader needs."""
    if ds.layout == "idx":
        return all(_idx_file(folder, stem) for pair in IDX_FILES.values() for stem in pair)
    return all((folder / f).is_file() for f in CIFAR_FILES[ds.name])


def candidates(name: str, root: Path) -> list[Path]:
    """Where the data set is looked for, in order: torchvision's layout under `root`, `root` itself, the
    folders a system package installs it in."""
    ds = DATASETS[name]
    return [Path(root) / ds.folder, Path(root)] + [Path(p) for p in ds.system]


def locate(name: str, root: Path) -> Path | None:
    """The first of `candidates` that holds the whole data set, or None."""
    return next((folder for folder in candidates(name, root) if _complete(DATASETS[name], folder)), None)


def read(name: str, folder: Path) -> tuple[Arrays, list[str]]:
    """Both splits of the data set in `folder` as uint8 images (N, 1 or 3, H, W) and labels, and its class names."""
    ds = DATASETS[name]
    if ds.layout == "idx":
        return _read_idx_set(folder), list(ds.names)
    return _read_cifar_set(ds, folder)


def missing_message(name: str, root: Path) -> str:
    """One line naming every way to provide the data set."""
    ds = DATASETS[name]
    ways = [f"put its files in {Path(root) / ds.folder} (torchvision's layout)"]
    if ds.debian:
        ways.append(f"install Debian's {ds.debian} (apt-get install {ds.debian}, it fills {ds.system[0]})")
    ways.append("or run `python -m minima data` where torchvision can download it (allow_download=true does "
                "the same inside a study)")
    where = f"{root}" + (f" or {', '.join(ds.system)}" if ds.system else "")
    return f"{ds.title} not found under {where}: " + ", ".join(ways)


def download(name: str, root: Path) -> None:
    """Fetch the data set into `root` with torchvision, which checks every archive (needs the internet)."""
    import torchvision.datasets

    cls = getattr(torchvision.datasets, DATASETS[name].torchvision)
    for train in (True, False):
        cls(str(root), train=train, download=True)


def provide(name: str, root: Path, download_it: bool = True, install: bool = True,
            log: Callable[[str], None] = print) -> Path:
    """The data set's folder: found on disk, else downloaded by torchvision, else installed from its Debian
    package (as root, with apt); DataError naming every way to provide it when none works."""
    found = locate(name, root)
    if found is None and download_it:
        try:
            download(name, root)
        except Exception as err:  # torchvision raises RuntimeError, URLError or OSError, by mirror and version
            log(f"{DATASETS[name].title}: torchvision could not download it ({str(err).splitlines()[0]})")
        found = locate(name, root)
    if found is None and install and DATASETS[name].debian and can_install():
        install_package(DATASETS[name].debian, log)
        found = locate(name, root)
    if found is None:
        raise DataError(missing_message(name, root))
    return found


def can_install() -> bool:
    """Whether this process may install Debian packages: apt-get is there and we are root."""
    return shutil.which("apt-get") is not None and hasattr(os, "geteuid") and os.geteuid() == 0


def install_package(package: str, log: Callable[[str], None] = print) -> bool:
    """`apt-get install` the package, refreshing the package lists once if the first try fails."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    log(f"installing Debian's {package} with apt-get")
    for refresh in (False, True):
        if refresh:
            subprocess.run(["apt-get", "update", "-qq"], env=env, stdout=subprocess.DEVNULL, stderr=sys.stderr)
        done = subprocess.run(["apt-get", "install", "-y", "-qq", package], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
        if done.returncode == 0:
            return True
    log(f"apt-get could not install {package}")
    return False
