"""Image tasks as uint8 tensors: a procedural synthetic task, an ImageNet subset, torchvision's data sets."""
from __future__ import annotations

import json
import math
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from minima import datasets, paths, store
from minima.catalog import DATASETS
from minima.config import ConfigError, Study
from minima.datasets import DataError

if TYPE_CHECKING:  # pandas is imported where a table is made, not when the data module loads
    import pandas as pd

SHAPES = ("disk", "square", "triangle", "ring", "cross", "diamond", "bar", "star")
TEXTURES = ("solid", "stripes", "checker", "dots")
COLOURS = {
    "red": (0.90, 0.15, 0.15), "orange": (0.95, 0.55, 0.10), "yellow": (0.92, 0.85, 0.15),
    "green": (0.20, 0.75, 0.25), "cyan": (0.15, 0.80, 0.85), "blue": (0.15, 0.30, 0.90),
    "purple": (0.55, 0.20, 0.80), "magenta": (0.90, 0.20, 0.65),
}
TARGET_CLASSES = 10
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
BACKGROUND = (255, 255, 255)  # transparent pixels are composited onto white, as a viewer shows them


@dataclass
class Task:
    """A classification task: uint8 images (N, 3, H, W) in [0, 255] and int64 labels."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[str]
    info: dict = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def summary(self) -> dict:
        """Sizes and shapes, for a table."""
        return dict(task=self.name, classes=self.n_classes, train=len(self.y_train),
                    test=len(self.y_test), image=tuple(self.x_train.shape[1:]), **self.info)


# ---------------------------------------------------------------- synthetic

def synthetic_vocabulary(seed: int, n_classes: int) -> list[tuple[str, str, str]]:
    """`n_classes` distinct (shape, texture, colour) triples drawn with `seed`."""
    combos = [(s, t, c) for s in SHAPES for t in TEXTURES for c in COLOURS]
    if n_classes > len(combos):
        raise ConfigError(f"the synthetic vocabulary has {len(combos)} classes; "
                          f"{n_classes} were asked for (source_classes + {TARGET_CLASSES} target)")
    random.Random(seed).shuffle(combos)
    return combos[:n_classes]


def synthetic_images(classes: list[tuple[str, str, str]], labels: torch.Tensor, size: int,
                     seed: int, chunk: int = 2048) -> torch.Tensor:
    """Render one uint8 image per label: the class's object with random pose, colour and clutter."""
    g = torch.Generator().manual_seed(seed)
    shape_of = torch.tensor([SHAPES.index(c[0]) for c in classes])
    texture_of = torch.tensor([TEXTURES.index(c[1]) for c in classes])
    colour_of = torch.tensor([COLOURS[c[2]] for c in classes])
    out = []
    for start in range(0, len(labels), chunk):
        y = labels[start:start + chunk]
        out.append(_render(shape_of[y], texture_of[y], colour_of[y], size, g))
    return torch.cat(out) if out else torch.empty(0, 3, size, size, dtype=torch.uint8)


def _render(shape: torch.Tensor, texture: torch.Tensor, colour: torch.Tensor, size: int,
            g: torch.Generator) -> torch.Tensor:
    n = len(shape)
    lin = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(lin, lin, indexing="ij")

    def u(*s):
        return torch.rand(*s, generator=g)

    # background: a random muted colour with a linear gradient
    base = 0.2 + 0.6 * u(n, 3, 1, 1)
    base = base.mean(1, keepdim=True) * 0.6 + base * 0.4
    tilt = (u(n, 2, 1, 1) - 0.5) * 0.5
    img = (base + tilt[:, :1] * xx + tilt[:, 1:] * yy).expand(n, 3, size, size).clone()

    # clutter: two small solid distractors of any shape and colour
    for _ in range(2):
        kind = torch.randint(len(SHAPES), (n,), generator=g)
        paint = u(n, 3, 1, 1)
        mask = _shape_mask(kind, xx, yy, centre=(u(n, 2) - 0.5) * 1.6, scale=0.12 + 0.1 * u(n),
                           angle=u(n) * 2 * math.pi, size=size)
        img = img * (1 - mask) + paint * mask

    # the object: class shape, texture and colour, random pose and shade
    centre, scale, angle = (u(n, 2) - 0.5) * 0.7, 0.38 + 0.25 * u(n), u(n) * 2 * math.pi
    mask = _shape_mask(shape, xx, yy, centre, scale, angle, size)
    pattern = _texture(texture, xx, yy, centre, scale, angle, size, u(n) * 2 * math.pi)
    shade = (colour[:, :, None, None] * (0.75 + 0.35 * u(n, 1, 1, 1))
             + 0.06 * torch.randn(n, 3, 1, 1, generator=g))
    paint = shade * pattern + shade * 0.35 * (1 - pattern)
    img = img * (1 - mask) + paint * mask

    img = img + torch.randn(img.shape, generator=g) * (0.06 * u(n, 1, 1, 1))
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


def _local(xx, yy, centre, scale, angle):
    """Each image's pixel grid in the object's own frame (unit size, rotated)."""
    dx = (xx[None] - centre[:, 0, None, None]) / scale[:, None, None]
    dy = (yy[None] - centre[:, 1, None, None]) / scale[:, None, None]
    c, s = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    return c * dx + s * dy, -s * dx + c * dy


def _shape_mask(kind, xx, yy, centre, scale, angle, size):
    """Soft (anti-aliased) masks (N, 1, H, W) of each image's shape."""
    a, b = _local(xx, yy, centre, scale, angle)
    r, ax, ay = torch.sqrt(a * a + b * b), a.abs(), b.abs()
    inside = torch.stack([
        1 - r,
        0.8 - torch.maximum(ax, ay),
        torch.minimum(b + 0.5, 1 - (1.7 * ax + b)) * 0.8,
        torch.minimum(r - 0.55, 1 - r),
        torch.maximum(torch.minimum(0.3 - ax, 1 - ay), torch.minimum(0.3 - ay, 1 - ax)),
        1 - (ax + ay),
        torch.minimum(1 - ax, 0.35 - ay),
        0.6 + 0.35 * torch.cos(5 * torch.atan2(b, a)) - r,
    ])
    d = inside.gather(0, kind[None, :, None, None].expand(1, *a.shape))[0]
    sharpness = scale[:, None, None] * size / 2 * 1.5
    return torch.sigmoid(d * sharpness)[:, None]


def _texture(kind, xx, yy, centre, scale, angle, size, phase):
    """Soft fill patterns (N, 1, H, W) in [0, 1] that move and turn with the object."""
    a, b = _local(xx, yy, centre, scale, angle)
    f = 2 * math.pi * 1.6
    p = phase[:, None, None]
    waves = torch.stack([
        torch.ones_like(a),
        torch.sin(f * a + p),
        torch.sin(f * a + p) * torch.sin(f * b + p),
        0.45 - torch.sqrt(torch.sin(f * a / 2 + p) ** 2 + torch.sin(f * b / 2 + p) ** 2),
    ])
    w = waves.gather(0, kind[None, :, None, None].expand(1, *a.shape))[0]
    return torch.sigmoid(w * scale[:, None, None] * size / 2)[:, None]


def synthetic_task(study: Study, which: str) -> Task:
    """The synthetic source (pretraining) or target (finetuning) task; classes never overlap."""
    vocab = synthetic_vocabulary(study.seed, study.source_classes + TARGET_CLASSES)
    classes = vocab[:study.source_classes] if which == "source" else vocab[study.source_classes:]
    per_train, per_test = _per_class(study, which)
    offset = {"source": 0, "target": 1}[which]
    splits = []
    for k, (split, per) in enumerate([("train", per_train), ("test", per_test)]):
        y = torch.arange(len(classes)).repeat_interleave(per)
        y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(study.seed + 7))]
        x = synthetic_images(classes, y, study.image_size, seed=study.seed * 1000 + 10 * offset + k)
        splits += [x, y]
    return Task(which, *splits, classes=["-".join(c) for c in classes], info=dict(kind="synthetic"))


def _per_class(study: Study, which: str) -> tuple[int, int]:
    if which == "source":
        return study.source_train_per_class, study.source_test_per_class
    return study.target_train_per_class, study.target_test_per_class


# ---------------------------------------------------------------- ImageNet subset

def imagenet_task(root: Path, n_classes: int, per_class: int, test_per_class: int,
                  size: int, seed: int) -> Task:
    """`n_classes` random classes of an ImageNet-style folder, decoded and resized to size x size."""
    root = Path(root)
    train_dirs, test_dirs, names = _imagenet_layout(root)
    available = sorted(train_dirs)
    if n_classes > len(available):
        raise DataError(f"{root} has {len(available)} classes; source_classes={n_classes} asks for more")
    chosen = sorted(random.Random(seed).sample(available, n_classes))
    train_files, test_files = [], []
    for label, wnid in enumerate(chosen):
        files = _image_files(train_dirs[wnid])
        random.Random(f"{seed}-{wnid}").shuffle(files)
        if test_dirs:
            held = _image_files(test_dirs.get(wnid, []))[:test_per_class]
            train = files[:per_class]
        else:
            held, train = files[:test_per_class], files[test_per_class:test_per_class + per_class]
        train_files += [(f, label) for f in train]
        test_files += [(f, label) for f in held]
    x_train, y_train, bad_train = _decode_all(train_files, size)
    x_test, y_test, bad_test = _decode_all(test_files, size)
    if len(y_train) == 0:
        raise DataError(f"no readable images in the chosen classes under {root}")
    return Task("source", x_train, y_train, x_test, y_test, classes=[names.get(w, w) for w in chosen],
                info=dict(kind="imagenet", root=str(root), skipped=bad_train + bad_test))


def _imagenet_layout(root: Path) -> tuple[dict, dict, dict]:
    """Class folders for training and testing, and readable names, for both layouts."""
    if not root.is_dir():
        raise DataError(f"no ImageNet folder at {root}. Put class folders there (root/<class>/*.JPEG), "
                        "or the ImageNet100 layout (train.X1 ... train.X4, val.X, Labels.json), "
                        "or set imagenet_dir=<path>. See docs/data.md, 'ImageNet subsets'.")
    train_roots = sorted(d for d in root.glob("train.X*") if d.is_dir())
    names = {}
    if (root / "Labels.json").is_file():
        names = json.loads((root / "Labels.json").read_text())
    if not train_roots:
        classes = {d.name: [d] for d in sorted(root.iterdir()) if d.is_dir()}
        return classes, {}, names
    train, test = {}, {}
    for tr in train_roots:
        for d in sorted(tr.iterdir()):
            if d.is_dir():
                train.setdefault(d.name, []).append(d)
    if (root / "val.X").is_dir():
        for d in sorted((root / "val.X").iterdir()):
            if d.is_dir():
                test.setdefault(d.name, []).append(d)
    return train, test, names


def _image_files(dirs: list[Path]) -> list[Path]:
    """Image files in `dirs` by suffix in any case, sorted; hidden ones (macOS '._x.JPEG' forks) left out."""
    return sorted(f for d in dirs for f in d.iterdir()
                  if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".") and f.is_file())


def _decode_all(items: list[tuple[Path, int]], size: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        images = list(pool.map(lambda item: _decode(item[0], size), items))
    keep = [(img, label) for img, (_, label) in zip(images, items) if img is not None]
    if not keep:
        return torch.empty(0, 3, size, size, dtype=torch.uint8), torch.empty(0, dtype=torch.long), len(items)
    x = torch.from_numpy(np.stack([img for img, _ in keep])).permute(0, 3, 1, 2).contiguous()
    y = torch.tensor([label for _, label in keep], dtype=torch.long)
    return x, y, len(items) - len(keep)


def _decode(path: Path, size: int) -> np.ndarray | None:
    """Decode, resize the shorter side to `size`, centre-crop; None if the file is unreadable."""
    try:
        with Image.open(path) as im:
            im = _to_rgb(im)
            w, h = im.size
            s = size / min(w, h)
            im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BILINEAR)
            left, top = (im.size[0] - size) // 2, (im.size[1] - size) // 2
            return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def _to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB from any mode: 16-bit grey rescaled, transparency composited onto BACKGROUND.

    CMYK is left to Pillow, which reads the Adobe (inverted) CMYK that Photoshop and Pillow write;
    checked by a round trip of pure red. Embedded ICC profiles are not applied.
    """
    if im.mode.startswith("I;16"):
        im = Image.fromarray((np.asarray(im, dtype=np.float32) / 257).round().astype(np.uint8))
    if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
        im = Image.alpha_composite(Image.new("RGBA", im.size, BACKGROUND + (255,)), im.convert("RGBA"))
    return im.convert("RGB")


# ---------------------------------------------------------------- torchvision's data sets

def torchvision_task(name: str, root: Path, labels: list[int], size: int, train_per_class: int,
                     test_per_class: int, allow_download: bool, seed: int, which: str) -> Task:
    """The classes `labels` (all when empty) of one of torchvision's data sets (catalog.DATASETS), found under
    `root` or in a system copy (downloaded when allowed), subsampled per class, relabelled 0..k-1 in the
    order given, greyscale repeated to 3 channels and resized to size x size."""
    folder = datasets.locate(name, root)
    if folder is None and allow_download:
        folder = datasets.provide(name, root, install=False)
    if folder is None:
        raise DataError(datasets.missing_message(name, root))
    arrays, names = datasets.read(name, folder)
    labels = list(labels) or list(range(len(names)))
    x_train, y_train = _subset(*arrays["train"], labels, train_per_class, seed, size)
    x_test, y_test = _subset(*arrays["test"], labels, test_per_class, seed + 1, size)
    return Task(which, x_train, y_train, x_test, y_test, classes=[names[c] for c in labels],
                info=dict(kind=name, root=str(folder), labels=labels))


def _subset(x: np.ndarray, y: np.ndarray, labels: list[int], per_class: int, seed: int,
            size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to `per_class` images of each label in `labels`, relabelled by their place in it, as RGB size x size."""
    y = torch.from_numpy(y)
    position = torch.full((int(max(y.max().item(), max(labels))) + 1,), -1, dtype=torch.long)
    position[torch.tensor(labels)] = torch.arange(len(labels))
    empty = [c for c in labels if not (y == c).any()]
    if empty:
        raise DataError(f"no images of class {empty[0]} in the data set (its labels: {sorted(set(y.tolist()))})")
    wanted = torch.nonzero(position[y] >= 0).flatten()
    keep = wanted[stratified_indices(y[wanted], per_class, seed)]
    images = torch.from_numpy(x[keep.numpy()])
    return resize_uint8(images.expand(-1, 3, -1, -1), size), position[y[keep]]


def resize_uint8(x: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """Resize uint8 images (N, 3, h, w) to size x size with antialiased bilinear filtering."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x.contiguous()
    out = [F.interpolate(x[i:i + chunk].float(), size=(size, size), mode="bilinear",
                         antialias=True, align_corners=False).round().clamp(0, 255).to(torch.uint8)
           for i in range(0, len(x), chunk)]
    return torch.cat(out)


# ---------------------------------------------------------------- helpers and entry point

def stratified_indices(y: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    """Up to `per_class` random indices of each class, sorted."""
    return stratified_parts(y, per_class, 1, seed)[0]


def stratified_parts(y: torch.Tensor, per_class: int, parts: int, seed: int) -> list[torch.Tensor]:
    """`parts` disjoint stratified draws of up to `per_class` indices of each class, each sorted: one random
    order per class, cut into consecutive pieces, so part 0 is `stratified_indices` with the same seed."""
    g = torch.Generator().manual_seed(seed)
    picks: list[list[torch.Tensor]] = [[] for _ in range(parts)]
    for c in torch.unique(y):
        idx = torch.nonzero(y == c).flatten()
        order = idx[torch.randperm(len(idx), generator=g)]
        for r in range(parts):
            picks[r].append(order[r * per_class:(r + 1) * per_class])
    return [torch.sort(torch.cat(p)).values for p in picks]


def replicate_seed(seed: int, replicate: int) -> int:
    """The seed of one replicate of a measure: independent streams for every (seed, replicate)."""
    return int(np.random.SeedSequence([seed, replicate]).generate_state(1)[0])


def cache_path(study: Study, which: str) -> Path:
    """Where a task's tensors are cached, keyed by every setting that shapes them."""
    kind = study.source if which == "source" else study.target
    keys = ["seed", "image_size", "source_classes"] + [f"{which}_train_per_class", f"{which}_test_per_class"]
    keys += ["imagenet_dir"] if kind == "imagenet" else ["datasets_dir", f"{which}_labels"] if kind in DATASETS else []
    return paths.data_dir() / "cache" / f"{which}-{kind}-{study.fingerprint(*keys)}.safetensors"


def load_task(study: Study, which: str) -> Task:
    """The study's source or target task, from the cache under data/ or built and cached."""
    if which not in ("source", "target"):
        raise ValueError(f"which={which!r}; expected 'source' or 'target'")
    path = cache_path(study, which)
    if path.is_file():
        return _from_cache(path, which)
    task = _build(study, which)
    meta = dict(classes=json.dumps(task.classes), info=json.dumps(task.info))
    store.save_tensors(path, dict(x_train=task.x_train, y_train=task.y_train,
                                  x_test=task.x_test, y_test=task.y_test), meta)
    return task


def provide(study: Study, log=print) -> list[Task]:
    """Both tasks of the study, their data found, downloaded or installed first (`datasets.provide`) and
    cached: what `python -m minima data` and `run` do before any notebook starts."""
    for which in ("source", "target"):
        kind = study.source if which == "source" else study.target
        if kind in DATASETS and not cache_path(study, which).is_file():
            datasets.provide(kind, paths.resolve_data_path(study.datasets_dir), log=log)
    return [load_task(study, which) for which in ("source", "target")]


def _build(study: Study, which: str) -> Task:
    kind = study.source if which == "source" else study.target
    per_train, per_test = _per_class(study, which)
    if kind == "synthetic":
        return synthetic_task(study, which)
    if kind == "imagenet":
        return imagenet_task(paths.resolve_data_path(study.imagenet_dir), study.source_classes,
                             per_train, per_test, study.image_size, study.seed)
    labels = study.source_labels if which == "source" else study.target_labels
    return torchvision_task(kind, paths.resolve_data_path(study.datasets_dir), labels, study.image_size,
                            per_train, per_test, study.allow_download, study.seed, which)


def _from_cache(path: Path, which: str) -> Task:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    t = store.load_tensors(path)
    return Task(which, t["x_train"], t["y_train"], t["x_test"], t["y_test"],
                classes=json.loads(meta["classes"]), info=json.loads(meta["info"]))


def class_counts(*tasks: Task) -> "pd.DataFrame":
    """Images per class, split and task: one row each."""
    import pandas as pd

    rows = [dict(task=t.name, split=split, cls=t.classes[c], count=int(n))
            for t in tasks for split, y in (("train", t.y_train), ("test", t.y_test))
            for c, n in enumerate(torch.bincount(y, minlength=t.n_classes))]
    return pd.DataFrame(rows)


def pixel_stats(*tasks: Task) -> "pd.DataFrame":
    """Mean and standard deviation of each colour channel, on the 0-1 scale, per task and split."""
    import pandas as pd

    rows = []
    for t in tasks:
        for split, x in (("train", t.x_train), ("test", t.x_test)):
            v = x.float().div_(255)
            for ch, name in enumerate("RGB"):
                rows.append(dict(task=t.name, split=split, channel=name, mean=v[:, ch].mean().item(),
                                 std=v[:, ch].std().item(), min=v[:, ch].min().item(), max=v[:, ch].max().item()))
    return pd.DataFrame(rows)


def pixel_histogram(task: Task, bins: int = 32) -> "pd.DataFrame":
    """Share of train pixels in each intensity bin, per channel."""
    import pandas as pd

    rows = []
    for ch, name in enumerate("RGB"):
        counts = torch.bincount(task.x_train[:, ch].flatten().long() * bins // 256, minlength=bins)
        for b, n in enumerate(counts / counts.sum()):
            rows.append(dict(task=task.name, channel=name, intensity=(b + 0.5) / bins, share=n.item()))
    return pd.DataFrame(rows)


def cache_files(study: Study) -> "pd.DataFrame":
    """Where each task's cache is and how big it is."""
    import pandas as pd

    rows = []
    for which in ("source", "target"):
        path = cache_path(study, which)
        rows.append(dict(task=which, path=str(path), exists=path.is_file(),
                         megabytes=round(store.folder_size(path) / 2**20, 2)))
    return pd.DataFrame(rows)
