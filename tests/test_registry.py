"""A pretraining method added through the registry alone goes through the whole study."""
import pytest
import torch

from minima import finetuning, methods, pretraining, robustness
from minima.config import ConfigError, Study, field_names


class LowContrast(methods.Method):
    """A toy method: Adam on images pulled towards mid-grey by `toy_contrast`."""

    name = "low_contrast"
    knobs = {"toy_contrast": methods.Knob(0.5, "a number in (0, 1]", lambda v: 0 < v <= 1)}
    strength = "toy_contrast"
    toy_contrast: float

    def corrupt(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return 0.5 + self.toy_contrast * (x - 0.5)


@pytest.fixture
def registered():
    """LowContrast in the registry for one test only (other tests see the built-in methods)."""
    before = dict(methods.REGISTRY)
    methods.register(LowContrast)
    yield
    methods.REGISTRY.clear()
    methods.REGISTRY.update(before)


def test_a_registered_method_is_pretrained_measured_and_finetuned(registered):
    study = Study.load("tiny", methods=["low_contrast"], toy_contrast=0.8)
    assert "toy_contrast" in field_names() and study.toy_contrast == 0.8
    pretrained = pretraining.pretrain_all(study)
    assert list(pretrained.method) == ["low_contrast"] and pretrained.train_accuracy.notna().all()
    table = robustness.evaluate_study(study)
    assert set(table.method) == {"low_contrast"} and set(table.measure) == set(robustness.MEASURES)
    finetuned = finetuning.finetune_all(study)
    assert set(finetuned.method) == {"low_contrast", finetuning.SCRATCH}
    assert len(finetuned[finetuned.method == "low_contrast"]) == len(study.finetune_seeds)


def test_a_method_knob_is_validated_and_names_its_own_runs(registered):
    with pytest.raises(ConfigError, match=r"toy_contrast=1.5 is out of range; expected a number in \(0, 1\]"):
        Study.load("tiny", methods=["low_contrast"], toy_contrast=1.5)
    a, b = (Study.load("tiny", methods=["low_contrast"], toy_contrast=v) for v in (0.5, 0.8))
    assert pretraining.pretrain_run(a, "low_contrast", 0) != pretraining.pretrain_run(b, "low_contrast", 0)
    # a knob of one method leaves the other methods' runs where they are
    assert pretraining.pretrain_run(a, "adam", 0) == pretraining.pretrain_run(b, "adam", 0)


def test_the_registry_refuses_a_taken_name_or_knob(registered):
    with pytest.raises(ValueError, match="taken"):
        methods.register(LowContrast)
    clash = type("Clash", (methods.Method,), dict(name="clash", knobs={"noise_sigma": methods.Knob(0.1, "")}))
    with pytest.raises(ValueError, match="noise_sigma"):
        methods.register(clash)
