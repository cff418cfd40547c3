"""Fixtures shared by the tests: isolated folders, the tiny study, its tasks, a fresh and a trained model."""
import pytest
import torch

from minima import data, models, pretraining, runstore
from minima.config import Study


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """For xdist: the heavy tests first, so that the workers finish together instead of one of them starting a
    minutes-long test at the end."""
    items.sort(key=lambda item: not item.get_closest_marker("heavy"))


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path, monkeypatch):
    """Every test writes outputs and data caches into its own temporary folders."""
    monkeypatch.setenv("MINIMA_OUTPUTS", str(tmp_path / "outputs"))
    monkeypatch.setenv("MINIMA_DATA", str(tmp_path / "data"))
    return tmp_path


@pytest.fixture
def tiny() -> Study:
    return Study.load("tiny")


@pytest.fixture
def source(tiny) -> data.Task:
    """The tiny study's source (pretraining) task."""
    return data.load_task(tiny, "source")


@pytest.fixture
def target(tiny) -> data.Task:
    """The tiny study's target (finetuning) task."""
    return data.load_task(tiny, "target")


@pytest.fixture
def tiny_model(tiny, source) -> torch.nn.Module:
    """A fresh (untrained, seed 0) model of the tiny study, channels_last as the library uses it."""
    torch.manual_seed(0)
    return models.model_for(tiny, source.n_classes).to(memory_format=torch.channels_last)


@pytest.fixture(scope="session")
def pretrained_adam(tmp_path_factory) -> runstore.Run:
    """A tiny adam run, trained once for the whole test session in folders of its own."""
    with pytest.MonkeyPatch.context() as mp:
        root = tmp_path_factory.mktemp("pretrained")
        mp.setenv("MINIMA_OUTPUTS", str(root / "outputs"))
        mp.setenv("MINIMA_DATA", str(root / "data"))
        return pretraining.pretrain(Study.load("tiny"), "adam", 0)
