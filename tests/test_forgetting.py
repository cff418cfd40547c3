"""Forgetting of the source task: exact when nothing moved, a probe that finds what is linearly there, a table the
conclusions can read, and a loss once finetuning changed the backbone."""
import copy

import numpy as np
import pytest
import torch

from minima import conclusions, data, forgetting, methods, models, runstore, tables
from minima.config import Study
from minima.evaluation import evaluate
from minima.train import TrainSpec, fit


def test_an_unfinetuned_backbone_keeps_its_pretrained_source_accuracy_exactly(pretrained_adam, tiny, source):
    pretrained = runstore.load_model(tiny, pretrained_adam, source.n_classes)
    start = models.replace_head(copy.deepcopy(pretrained), tiny.n_classes("target"), seed=3)  # a finetune's start
    # exact: the same weights through the same evaluation give the same logits, so no step means no forgetting
    assert forgetting.head_accuracy(start, pretrained.fc, source.x_test, source.y_test) == \
        pretrained_adam.final()["test_accuracy"]
    keep = forgetting.probe_subset(tiny, source)
    assert forgetting.source_probe(start, source, keep) == forgetting.source_probe(pretrained, source, keep)
    assert start.fc.out_features == tiny.n_classes("target"), "grafting copies the head: the backbone keeps its own"


def test_the_probe_recovers_a_linearly_separable_task():
    rng = np.random.default_rng(0)
    centres = 4.0 * np.eye(3, 8)  # 3 classes, separable along 3 of 8 feature dimensions; the others are noise

    def draw(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = np.repeat(np.arange(3), per_class)
        x = centres[y] + 0.3 * rng.standard_normal((len(y), 8))
        return torch.tensor(x * [1, 100, 0.01, 1, 1, 1, 1, 1]), torch.tensor(y)  # scales differ: it standardises

    x_train, y_train = draw(10)
    x_test, y_test = draw(200)
    # 1.0 exactly: the classes are 4 / 0.3 > 13 noise sds apart, so no test point falls on the wrong side
    assert forgetting.probe_accuracy(x_train, y_train, x_test, y_test, 3) == 1.0
    with pytest.raises(ValueError, match="each in \\[0, 1\\]"):
        forgetting.fit_probe(x_train, y_train, 2)


def test_the_table_has_one_row_per_finetuned_run_with_the_outcomes_the_conclusions_read():
    study = Study.load("tiny", methods=["adam"], protocols=["full", "linear_probe"], sweeps={})
    table = tables.forgetting(study)
    assert list(table.columns) == forgetting.COLUMNS
    assert len(table) == table.run.nunique() == 2 * 1 * 2, "protocols x pretrained starts x finetuning seeds"
    # a linear probe trains the head alone, batchnorm statistics frozen: the backbone took no step
    frozen = table[table.protocol == "linear_probe"]
    assert (frozen.forgetting_head == 0).all() and (frozen.forgetting_probe == 0).all()
    finetuned = tables.finetuned(study)
    scratch = finetuned.method == "scratch"
    assert finetuned.loc[scratch, ["forgetting_head", "forgetting_probe"]].isna().all().all(), "no source head"
    assert finetuned.loc[~scratch, ["forgetting_head", "forgetting_probe"]].notna().all().all()
    outcomes = conclusions.run_outcomes(finetuned, "full")
    assert {"forgetting_head", "forgetting_head_std", "forgetting_probe", "forgetting_probe_std"} <= set(outcomes)


def test_a_finetune_that_changes_the_backbone_forgets(tiny, source, target):
    torch.manual_seed(0)
    model = models.model_for(tiny, source.n_classes).to(memory_format=torch.channels_last)
    seen = data.Task("seen", source.x_train, source.y_train, source.x_train, source.y_train, source.classes)
    pretrained, _ = fit(model, seen, TrainSpec(epochs=15, batch_size=16, lr=0.003, weight_decay=0.0, label="toy"),
                        methods.Adam())
    before = evaluate(pretrained, seen.x_test, seen.y_test)["accuracy"]
    start = models.replace_head(copy.deepcopy(pretrained), target.n_classes)
    finetuned, _ = fit(start, target, TrainSpec(epochs=3, batch_size=16, lr=0.01, weight_decay=0.0, label="toy ft"),
                       methods.Adam())
    after = forgetting.head_accuracy(finetuned, pretrained.fc, seen.x_test, seen.y_test)
    assert before > 0.9, "the toy's source task was learnt"
    assert before - after > 0.2, (before, after)
