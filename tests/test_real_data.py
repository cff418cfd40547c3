"""A small study on real images (Fashion-MNIST, which `make test` gets first the way `make study` does).

Never skipped: a machine without the data fails here with the one line that says how to provide it.
"""
import pytest

from minima import catalog, data, datasets, paths, tables
from minima.config import Study

pytestmark = pytest.mark.xdist_group("real_data")  # one worker: its tests share the module's study (`real`)

SOURCE, TARGET = [0, 1, 8], [5, 7, 9]  # T-shirt/top, trouser, bag; sandal, sneaker, ankle boot


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> Study:
    """The tiny study's sizes on three Fashion-MNIST classes per task, read from the project's data/ or the
    system copy (the tests' own data folder holds only the caches)."""
    with pytest.MonkeyPatch.context() as mp:
        root = tmp_path_factory.mktemp("real")
        mp.setenv("MINIMA_OUTPUTS", str(root / "outputs"))
        mp.setenv("MINIMA_DATA", str(root / "data"))
        study = Study.load("tiny", source="fashion_mnist", target="fashion_mnist", source_labels=SOURCE,
                           target_labels=TARGET, source_classes=3, source_train_per_class=40,
                           source_test_per_class=20, image_size=16, datasets_dir=str(paths.ROOT / "data"),
                           methods=["adam", "sam"], pretrain_epochs=4, sweeps={}, eval_subset_per_class=10,
                           noise_sigmas=[0.0, 0.3, 1.0])
        found = datasets.locate("fashion_mnist", paths.ROOT / "data")
        assert found is not None, datasets.missing_message("fashion_mnist", paths.ROOT / "data")
        yield study, tables.pretrained(study), tables.robustness_curves(study), tables.flatness(study)


def test_the_real_tasks_are_the_named_fashion_mnist_classes(real):
    study = real[0]
    source, target = data.load_task(study, "source"), data.load_task(study, "target")
    names = catalog.DATASETS["fashion_mnist"].names
    assert source.classes == [names[c] for c in SOURCE] and target.classes == [names[c] for c in TARGET]
    assert source.info["kind"] == "fashion_mnist" and source.x_train.shape == (120, 3, 16, 16)
    # real photographs of garments: a dark background with most pixels near 0, unlike any synthetic scene
    assert (source.x_train[:, 0] < 20).float().mean() > 0.3


def test_pretraining_learns_the_real_source_well_above_chance(real):
    _, pretrained, _, _ = real
    # three visually distinct classes: 4 epochs reach ~80-95% here; chance is 33%
    assert (pretrained.test_accuracy > 0.6).all(), pretrained[["method", "test_accuracy"]]
    assert (pretrained.train_loss > 0).all()


def test_robustness_and_flatness_measure_every_real_run(real):
    _, pretrained, curves, flat = real
    test = curves[curves.split == "test"].groupby(["method", "measure", "strength"]).accuracy.mean()
    for method in pretrained.method:
        noise = test.loc[method, "gaussian"]
        # noise of sd 1 on [0, 1] pixels leaves little of a garment: accuracy falls towards chance (1/3)
        assert noise.loc[1.0] < noise.loc[0.0] - 0.2, f"{method}: Gaussian noise of sd 1 barely hurts: {noise}"
    assert set(flat.method) == {"adam", "sam"} and flat.value.notna().all()
    assert (flat[flat.measure.isin(["hessian_eigenvalue", "hessian_trace"])].value > 0).all()
