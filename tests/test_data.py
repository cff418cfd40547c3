import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from minima import data
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


def _jpeg(path, size, colour):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, "JPEG")


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


def test_missing_imagenet_folder_says_where_to_put_it(tmp_path):
    with pytest.raises(data.DataError, match="README"):
        data.imagenet_task(tmp_path / "none", 2, 2, 2, 8, 0)


def _cifar_batches(folder, n_per_batch=20):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ["data_batch_1", "data_batch_2", "test_batch"]:
        batch = {b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                 b"labels": [i % 10 for i in range(n_per_batch)], b"batch_label": name.encode()}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"class{i}" for i in range(10)]}, f)
    return folder


def test_cifar10_reads_python_batches_subsamples_and_resizes(tmp_path):
    folder = _cifar_batches(tmp_path / "cifar10" / "cifar-10-batches-py")
    task = data.cifar10_task(tmp_path / "cifar10", size=16, train_per_class=3, test_per_class=1,
                             allow_download=False, seed=0)
    assert task.x_train.shape == (30, 3, 16, 16) and task.x_train.dtype == torch.uint8
    assert torch.bincount(task.y_train).tolist() == [3] * 10
    assert len(task.y_test) == 10 and task.classes[0] == "class0"
    full = data.cifar10_task(folder, size=32, train_per_class=100, test_per_class=100,
                             allow_download=False, seed=0)
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
        data.cifar10_task(folder, 32, 1, 1, allow_download=False, seed=0)


def test_missing_cifar10_without_download_says_what_to_do(tmp_path):
    with pytest.raises(data.DataError, match="allow_download=true"):
        data.cifar10_task(tmp_path, 32, 1, 1, allow_download=False, seed=0)


def test_real_data_flows_through_load_task(tmp_path):
    _cifar_batches(tmp_path / "data" / "cifar10")
    study = Study.load("tiny", target="cifar10", target_train_per_class=2, target_test_per_class=1)
    task = data.load_task(study, "target")
    assert task.info["kind"] == "cifar10" and task.x_train.shape == (20, 3, 16, 16)


def test_stratified_indices_take_the_same_number_of_each_class():
    y = torch.tensor([0] * 10 + [1] * 3 + [2] * 7)
    idx = data.stratified_indices(y, 3, seed=0)
    assert torch.bincount(y[idx]).tolist() == [3, 3, 3]
