import dataclasses
import gzip
import io
import json
import pickle
import shutil
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from minima import catalog, data, datasets
from minima.config import Study


def test_synthetic_images_are_deterministic_uint8_and_seed_dependent():
    vocab = data.synthetic_vocabulary(0, 6)
    y = torch.arange(6).repeat(4)
    a = data.synthetic_images(vocab, y, 16, seed=3)
    assert a.dtype == torch.uint8 and a.shape == (24, 3, 16, 16)
    assert torch.equal(a, data.synthetic_images(vocab, y, 16, seed=3))
    assert not torch.equal(a, data.synthetic_images(vocab, y, 16, seed=4))
    assert len({tuple(img.flatten()[:50].tolist()) for img in a}) == len(a), "every image differs"


def test_source_and_target_classes_are_disjoint_but_share_the_vocabulary(tiny):
    source, target = data.load_task(tiny, "source"), data.load_task(tiny, "target")
    assert source.n_classes == tiny.source_classes and target.n_classes == data.TARGET_CLASSES
    assert not set(source.classes) & set(target.classes)
    assert source.x_train.shape[1:] == (3, tiny.image_size, tiny.image_size)
    assert torch.bincount(source.y_train).tolist() == [tiny.source_train_per_class] * tiny.source_classes
    assert not torch.equal(source.x_train[:4], source.x_test[:4])


def test_task_cache_round_trips(tiny):
    first = data.load_task(tiny, "source")
    assert data.cache_path(tiny, "source").is_file()
    again = data.load_task(tiny, "source")
    assert torch.equal(first.x_train, again.x_train) and first.classes == again.classes


def test_too_many_synthetic_classes_is_a_config_error():
    with pytest.raises(Exception, match="synthetic vocabulary has 256 classes"):
        data.synthetic_vocabulary(0, 300)


def _save(path, image, fmt="JPEG", **options):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, fmt, **options)


def _jpeg(path, size, colour):
    _save(path, Image.new("RGB", size, colour))


def test_imagenet_plain_layout_draws_classes_resizes_and_skips_broken_files(tmp_path):
    root = tmp_path / "folder"
    for c in range(4):
        for i in range(5):
            _jpeg(root / f"n0{c}" / f"img{i}.JPEG", (40 + 7 * i, 30), (60 * c, 10, 200))
    (root / "n00" / "broken.JPEG").write_bytes(b"not a jpeg")
    task = data.imagenet_task(root, n_classes=3, per_class=3, test_per_class=2, size=12, seed=0)
    assert task.x_train.shape[1:] == (3, 12, 12) and task.x_train.dtype == torch.uint8
    assert task.n_classes == 3 and len(set(task.classes)) == 3
    assert len(task.y_test) == 6
    assert len(task.y_train) + task.info["skipped"] == 9
    again = data.imagenet_task(root, n_classes=3, per_class=3, test_per_class=2, size=12, seed=0)
    assert again.classes == task.classes and torch.equal(again.x_train, task.x_train)


def test_imagenet100_layout_uses_train_folders_val_folder_and_labels(tmp_path):
    root = tmp_path / "imagenet100"
    for c, wnid in enumerate(["n01", "n02", "n03"]):
        for part in ("train.X1", "train.X2"):
            for i in range(2):
                _jpeg(root / part / wnid / f"{part}_{i}.JPEG", (20, 20), (80 * c, 0, 0))
        _jpeg(root / "val.X" / wnid / "v.JPEG", (20, 20), (80 * c, 0, 0))
    (root / "Labels.json").write_text(json.dumps({"n01": "tench", "n02": "goldfish", "n03": "shark"}))
    task = data.imagenet_task(root, n_classes=2, per_class=10, test_per_class=5, size=8, seed=1)
    assert set(task.classes) <= {"tench", "goldfish", "shark"}
    assert len(task.y_train) == 8 and len(task.y_test) == 2


def _palette_with_transparent_red():
    im = Image.new("P", (20, 20), 1)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    return im


# (image, format, save options, expected RGB, tolerance). Every image is one flat colour, so resizing
# cannot change it: lossless formats must match exactly. JPEG at quality 95 moves a flat colour by a
# level or two (YCbCr rounding, quantised DC coefficients; 1 measured with this Pillow), so 3 of 255
# leaves room for other libjpeg builds while a wrong colour (e.g. CMYK read uninverted) is off by 100+.
DECODE_CASES = {
    "rgb-jpeg": (Image.new("RGB", (30, 20), (200, 30, 40)), "JPEG", dict(quality=95), (200, 30, 40), 3),
    "grey-jpeg": (Image.new("L", (30, 20), 90), "JPEG", dict(quality=95), (90, 90, 90), 3),
    # Pillow writes Adobe-inverted CMYK with an APP14 marker and must read it back: pure red stays red
    "cmyk-jpeg": (Image.new("CMYK", (30, 20), (0, 255, 255, 0)), "JPEG", dict(quality=95), (255, 0, 0), 3),
    "rgb-png": (Image.new("RGB", (30, 20), (10, 120, 250)), "PNG", {}, (10, 120, 250), 0),
    "transparent-rgba-png": (Image.new("RGBA", (30, 20), (255, 0, 0, 0)), "PNG", {}, data.BACKGROUND, 0),
    # half-transparent blue over white: 255 * (1 - 128/255) = 127 in R and G; 1 level for how it is rounded
    "half-rgba-png": (Image.new("RGBA", (30, 20), (0, 0, 255, 128)), "PNG", {}, (127, 127, 255), 1),
    "transparent-la-png": (Image.new("LA", (30, 20), (0, 0)), "PNG", {}, data.BACKGROUND, 0),
    "palette-png": (_palette_with_transparent_red(), "PNG", dict(transparency=1), data.BACKGROUND, 0),
    # 40000 of 65535 is 155.6 of 255; a plain convert("RGB") would clip it to 255
    "16-bit-grey-png": (Image.fromarray(np.full((20, 30), 40000, np.uint16)), "PNG", {}, (156, 156, 156), 0),
}


@pytest.mark.parametrize("case", DECODE_CASES)
def test_every_image_mode_decodes_to_rgb_uint8_of_the_right_colour_and_size(tmp_path, case):
    image, fmt, options, expected, tolerance = DECODE_CASES[case]
    _save(tmp_path / f"img.{fmt.lower()}", image, fmt, **options)
    if case == "16-bit-grey-png":
        assert Image.open(tmp_path / "img.png").mode.startswith("I;16"), "Pillow wrote a 16-bit PNG"
    pixels = data._decode(tmp_path / f"img.{fmt.lower()}", 12)
    assert pixels.dtype == np.uint8 and pixels.shape == (12, 12, 3)
    assert np.abs(pixels.astype(int) - expected).max() <= tolerance


def _class_folder_of_mixed_files(folder, colour):
    """Six images with every suffix case, one corrupt image, and files that are not images."""
    for suffix in (".JPEG", ".jpeg", ".JPG", ".jpg"):
        _jpeg(folder / f"img{suffix}", (20, 20), colour)
    for suffix in (".png", ".PNG"):
        _save(folder / f"png{suffix}", Image.new("RGB", (20, 20), colour), "PNG")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (folder / "notes.txt").write_text("not an image")
    (folder / "Thumbs.db").write_bytes(b"\x00" * 64)
    (folder / "._img.JPEG").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")


@pytest.mark.parametrize("layout", ["plain", "imagenet100"])
def test_imagenet_reads_every_suffix_case_ignores_other_files_and_counts_corrupt_ones(tmp_path, layout):
    root = tmp_path / layout
    for c, wnid in enumerate(["n01", "n02"]):
        _class_folder_of_mixed_files(root / ("train.X1" if layout == "imagenet100" else "") / wnid, (90 * c, 0, 0))
        if layout == "imagenet100":
            _class_folder_of_mixed_files(root / "val.X" / wnid, (90 * c, 0, 0))
    task = data.imagenet_task(root, n_classes=2, per_class=10, test_per_class=3, size=8, seed=0)
    read = len(task.y_train) + len(task.y_test)
    if layout == "imagenet100":  # all 7 train files per class; the first 3 val files by name, corrupt.jpg first
        assert (len(task.y_train), len(task.y_test), task.info["skipped"]) == (2 * 6, 2 * 2, 2 * 2)
    else:  # all 7 files per class, 3 held out for testing
        assert (read, task.info["skipped"]) == (2 * 6, 2 * 1)
    assert task.x_train.shape[1:] == (3, 8, 8) and json.dumps(task.summary())


def test_missing_imagenet_folder_says_where_to_put_it(tmp_path):
    with pytest.raises(data.DataError, match="docs/data.md"):
        data.imagenet_task(tmp_path / "none", 2, 2, 2, 8, 0)


class _Python2Pickler(pickle._Pickler):
    """Writes bytes with Python 2's `str` opcodes, as cPickle wrote the official CIFAR-10 batches."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_python2_str(self, obj: bytes) -> None:
        n = len(obj)
        self.write((pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_python2_str


def _pickle_bytes(obj, style):
    """`obj` (bytes keys and names) pickled as a Python 2 or 3 writer would, or with str keys and names."""
    if style == "python2":
        buffer = io.BytesIO()
        _Python2Pickler(buffer, protocol=2).dump(obj)
        return buffer.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    if style == "python3-str":
        obj = {k.decode(): [n.decode() for n in v] if k == b"label_names" else v for k, v in obj.items()}
    return pickle.dumps(obj, protocol=2 if style == "python3-protocol2" else pickle.DEFAULT_PROTOCOL)


CIFAR_STYLES = ["python2", "python3-protocol2", "python3", "python3-str"]


def _cifar_batches(folder, n_per_batch=20, style="python3-protocol2"):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ["data_batch_1", "data_batch_2", "test_batch"]:
        batch = {b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                 b"labels": [i % 10 for i in range(n_per_batch)], b"batch_label": name.encode()}
        (folder / name).write_bytes(_pickle_bytes(batch, style))
    meta = {b"label_names": [f"class{i}".encode() for i in range(10)], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(_pickle_bytes(meta, style))
    return folder


def _cifar10(root, size=32, train_per_class=100, test_per_class=100, labels=()):
    return data.torchvision_task("cifar10", root, list(labels), size, train_per_class, test_per_class,
                                 allow_download=False, seed=0, which="target")


def test_cifar10_reads_python_batches_subsamples_and_resizes(tmp_path):
    folder = _cifar_batches(tmp_path / "cifar10" / "cifar-10-batches-py")
    task = _cifar10(tmp_path / "cifar10", size=16, train_per_class=3, test_per_class=1)
    assert task.x_train.shape == (30, 3, 16, 16) and task.x_train.dtype == torch.uint8
    assert torch.bincount(task.y_train).tolist() == [3] * 10
    assert len(task.y_test) == 10 and task.classes[0] == "class0"
    full = _cifar10(folder)
    raw = pickle.load(open(folder / "data_batch_1", "rb"), encoding="bytes")
    first = torch.from_numpy(raw[b"data"][0]).view(3, 32, 32)
    assert any(torch.equal(first, img) for img in full.x_train), "pixels arrive unchanged at 32 px"


def test_cifar10_batches_that_would_run_code_are_refused(tmp_path):
    folder = _cifar_batches(tmp_path / "c")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": Evil(), "labels": []}, f)
    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        _cifar10(folder, 32, 1, 1)


@pytest.mark.parametrize("style", CIFAR_STYLES)
def test_cifar10_of_any_pickle_style_gives_str_class_names_and_json_metadata(tmp_path, style):
    folder = _cifar_batches(tmp_path / "data" / "cifar-10-batches-py", style=style)
    raw = pickle.loads((folder / "data_batch_1").read_bytes(), encoding="latin1")
    study = Study.load("tiny", target="cifar10", target_train_per_class=2, target_test_per_class=1)
    built, cached = data.load_task(study, "target"), data.load_task(study, "target")
    assert built.info["kind"] == "cifar10" and built.x_train.shape == (20, 3, 16, 16)
    for task in (built, cached):
        assert task.classes == [f"class{i}" for i in range(10)] and all(type(c) is str for c in task.classes)
        assert json.dumps(task.summary()) and json.dumps(data.class_counts(task).to_dict("records"))
    assert torch.equal(built.x_train, cached.x_train)
    first = torch.from_numpy(raw.get("data", raw.get(b"data"))[0])
    full = _cifar10(folder)
    assert any(torch.equal(first.view(3, 32, 32), img) for img in full.x_train), "pixels arrive unchanged"


def test_cifar10_batch_without_data_or_labels_says_which_keys_it_has(tmp_path):
    folder = _cifar_batches(tmp_path / "c")
    (folder / "test_batch").write_bytes(pickle.dumps({b"images": np.zeros((2, 3072), np.uint8)}))
    with pytest.raises(data.DataError, match=r"lacks \['data', 'labels'\].*images"):
        _cifar10(folder, 32, 1, 1)


def test_missing_cifar10_without_download_says_every_way_to_provide_it(tmp_path):
    with pytest.raises(data.DataError, match="cifar-10-batches-py.*python -m minima data.*allow_download=true"):
        _cifar10(tmp_path, 32, 1, 1)


def _cifar100(folder, n=40):
    """CIFAR-100's python files: train, test (fine and coarse labels) and meta, as pickled by Python 3."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in ("train", "test"):
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"fine_labels": [i % 100 for i in range(n)],
                 b"coarse_labels": [i % 20 for i in range(n)], b"filenames": [b"x.png"] * n}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
                                                b"coarse_label_names": [f"c{i}".encode() for i in range(20)]}))
    return folder


def test_cifar100_reads_fine_labels_and_names_of_a_class_list(tmp_path):
    _cifar100(tmp_path / "cifar-100-python")
    task = data.torchvision_task("cifar100", tmp_path, [7, 3, 39], 8, 1, 1, False, 0, "source")
    assert task.classes == ["fine7", "fine3", "fine39"] and task.x_train.shape == (3, 3, 8, 8)
    assert sorted(task.y_train.tolist()) == [0, 1, 2] and sorted(task.y_test.tolist()) == [0, 1, 2]


def _idx_bytes(array, gz):
    """`array` as an IDX file (big-endian dims after the 0x0000, type and rank bytes), gzipped if asked."""
    raw = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    return gzip.compress(raw) if gz else raw


def _idx_set(folder, per_class=6, size=28, gz=True):
    """A small MNIST-family data set in torchvision's file names: class c's images all have pixel value 20c + k."""
    folder.mkdir(parents=True)
    for split, (images, labels) in datasets.IDX_FILES.items():
        y = np.tile(np.arange(10, dtype=np.uint8), per_class)
        x = (20 * y[:, None, None] + np.arange(len(y))[:, None, None] % 7 + np.zeros((1, size, size))).astype(np.uint8)
        suffix = ".gz" if gz else ""
        (folder / f"{images}{suffix}").write_bytes(_idx_bytes(x, gz))
        (folder / f"{labels}{suffix}").write_bytes(_idx_bytes(y, gz))
    return folder


@pytest.mark.parametrize("name, folder", [("fashion_mnist", "FashionMNIST"), ("mnist", "MNIST"), ("kmnist", "KMNIST")])
@pytest.mark.parametrize("gz", [True, False])
def test_mnist_family_reads_idx_in_torchvisions_layout_as_rgb_with_a_class_list(tmp_path, name, folder, gz):
    _idx_set(tmp_path / folder / "raw", gz=gz)
    task = data.torchvision_task(name, tmp_path, [7, 2], 28, 4, 3, False, 0, "target")
    assert task.x_train.shape == (8, 3, 28, 28) and task.x_train.dtype == torch.uint8
    assert torch.bincount(task.y_train).tolist() == [4, 4] and torch.bincount(task.y_test).tolist() == [3, 3]
    assert torch.equal(task.x_train[:, 0], task.x_train[:, 2]), "grey repeated to three channels"
    base = task.x_train[:, 0, 0, 0].long() - task.x_train[:, 0, 0, 0].long() % 20
    assert torch.equal(base, torch.where(task.y_train == 0, 140, 40)), "label 0 is class 7, label 1 is class 2"
    assert task.classes == [catalog.DATASETS[name].names[7], catalog.DATASETS[name].names[2]]


def test_idx_reader_refuses_a_file_that_is_not_idx_or_is_cut_short(tmp_path):
    (tmp_path / "a").write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(data.DataError, match="not an IDX file"):
        datasets.read_idx(tmp_path / "a")
    (tmp_path / "b").write_bytes(_idx_bytes(np.zeros((3, 4, 4), np.uint8), gz=False)[:-5])
    with pytest.raises(data.DataError, match=r"shape \(3, 4, 4\)"):
        datasets.read_idx(tmp_path / "b")


def test_a_system_copy_is_found_when_data_has_none(tmp_path, monkeypatch):
    system = _idx_set(tmp_path / "usr" / "share" / "datasets" / "fashion-mnist")
    monkeypatch.setitem(catalog.DATASETS, "fashion_mnist",
                        dataclasses.replace(catalog.DATASETS["fashion_mnist"], system=(str(system),)))
    assert datasets.locate("fashion_mnist", tmp_path / "data") == system
    _idx_set(tmp_path / "data" / "FashionMNIST" / "raw", gz=False)
    assert datasets.locate("fashion_mnist", tmp_path / "data") == tmp_path / "data" / "FashionMNIST" / "raw"


def test_provide_tries_the_download_then_the_debian_package_then_names_every_way(tmp_path, monkeypatch):
    system = tmp_path / "system"
    monkeypatch.setitem(catalog.DATASETS, "fashion_mnist",
                        dataclasses.replace(catalog.DATASETS["fashion_mnist"], system=(str(system),)))
    tried = []

    def offline(name, root):
        tried.append("download")
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nname or service not known")

    monkeypatch.setattr(datasets, "download", offline)
    monkeypatch.setattr(datasets, "can_install", lambda: True)
    monkeypatch.setattr(datasets, "install_package", lambda package, log: tried.append(package) or _idx_set(system))
    lines = []
    assert datasets.provide("fashion_mnist", tmp_path / "data", log=lines.append) == system
    assert tried == ["download", "dataset-fashion-mnist"] and "could not download" in lines[0]
    shutil.rmtree(system)
    monkeypatch.setattr(datasets, "can_install", lambda: False)
    with pytest.raises(data.DataError, match="FashionMNIST/raw.*apt-get install dataset-fashion-mnist.*download"):
        datasets.provide("fashion_mnist", tmp_path / "data", log=lines.append)
    assert tried == ["download", "dataset-fashion-mnist", "download"], "no install where it cannot"


def test_stratified_indices_take_the_same_number_of_each_class():
    y = torch.tensor([0] * 10 + [1] * 3 + [2] * 7)
    idx = data.stratified_indices(y, 3, seed=0)
    assert torch.bincount(y[idx]).tolist() == [3, 3, 3]
