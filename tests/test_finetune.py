import math

import pandas as pd
import pytest
import torch

from minima import data, models, runs, store
from minima.config import Study
from minima.finetune import DistanceTracker, apply_protocol, epochs_to_threshold
from minima.methods import Adam
from minima.train import TrainSpec, fit


@pytest.fixture
def pretrained(tiny):
    return runs.pretrain(tiny, "adam", 0)


@pytest.fixture
def target(tiny):
    return data.load_task(tiny, "target")


def _start(tiny, pretrained, target, protocol="full"):
    model = models.replace_head(runs.load_model(tiny, pretrained, tiny.source_classes), target.n_classes, seed=0)
    return apply_protocol(model, protocol, frozen_stages=2)


def _spec(epochs=2):
    return TrainSpec(epochs=epochs, batch_size=16, lr=1e-3, weight_decay=5e-4, label="ft")


def test_replace_head_keeps_the_backbone_of_the_checkpoint(tiny, pretrained, target):
    saved = store.load_tensors(pretrained.weights)
    model = _start(tiny, pretrained, target)
    assert model.fc.out_features == target.n_classes
    for name, value in model.state_dict().items():
        if not name.startswith("fc."):
            assert torch.equal(value, saved[name]), name


def test_linear_probe_leaves_the_backbone_bit_identical(tiny, pretrained, target):
    model = _start(tiny, pretrained, target, "linear_probe")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model, history = fit(model, target, _spec(), Adam())
    after = model.state_dict()
    for name in before:
        same = torch.equal(before[name], after[name])
        assert same != name.startswith("fc."), name  # backbone identical (BN statistics too), head trained


def test_partial_freezes_the_first_stages_only(tiny, pretrained, target):
    model = _start(tiny, pretrained, target, "partial")
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"layer2", "layer3", "layer4", "fc"}
    with pytest.raises(ValueError, match="protocol='ful'"):
        apply_protocol(model, "ful")


def test_distance_starts_at_zero_grows_and_leaves_the_head_out(tiny, pretrained, target):
    model = _start(tiny, pretrained, target)
    tracker = DistanceTracker(model, every=1, steps_per_epoch=len(target.y_train) // 16)
    fit(model, target, _spec(epochs=3), Adam(), step_hook=tracker)
    table = tracker.table()
    assert table.step.iloc[0] == 0 and table.distance_all.iloc[0] == 0
    assert table.distance_all.iloc[-1] > table.distance_all.iloc[1] > 0
    assert (table.distance_non_bn <= table.distance_all + 1e-6).all()
    start = store.load_tensors(pretrained.weights)
    by_hand = math.sqrt(sum((p.detach() - start[n]).pow(2).sum().item()
                            for n, p in model.named_parameters() if not n.startswith("fc.")))
    assert table.distance_all.iloc[-1] == pytest.approx(by_hand, rel=1e-4)


def test_epochs_to_threshold_is_not_reached_when_never_met():
    history = pd.DataFrame(dict(epoch=[1, 2, 3], train_acc=[0.5, 0.96, 0.99]))
    assert epochs_to_threshold(history, 0.95) == 2
    assert math.isnan(epochs_to_threshold(history, 0.999))


def test_resumed_finetuning_keeps_its_distance_record(tiny, pretrained, target, tmp_path):
    def tracked():
        model = _start(tiny, pretrained, target)
        return model, DistanceTracker(model, every=1, steps_per_epoch=len(target.y_train) // 16)

    model, tracker = tracked()
    fit(model, target, _spec(epochs=3), Adam(), checkpoint=tmp_path / "a.pt", step_hook=tracker)
    model2, tracker2 = tracked()

    def crash_after_two_epochs(step, m):
        tracker2(step, m)
        if step == 2 * (len(target.y_train) // 16) + 1:
            raise KeyboardInterrupt

    crash_after_two_epochs.state_dict = tracker2.state_dict
    with pytest.raises(KeyboardInterrupt):
        fit(model2, target, _spec(epochs=3), Adam(), checkpoint=tmp_path / "b.pt", step_hook=crash_after_two_epochs)
    model3, tracker3 = tracked()
    fit(model3, target, _spec(epochs=3), Adam(), checkpoint=tmp_path / "b.pt", step_hook=tracker3)
    pd.testing.assert_frame_equal(tracker.table(), tracker3.table())


def test_finetune_all_covers_every_start_seed_and_protocol(tiny):
    study = Study.load("tiny", methods=["adam", "swa"], protocols=["full", "linear_probe"])
    runs.pretrain_all(study)
    table = runs.finetune_all(study)
    assert len(table) == 2 * (2 * 1 + 1) * 2
    assert set(table.method) == {"adam", "swa", "scratch"}
    assert (table[table.protocol == "full"].distance_all > 0).all()
    distances = runs.finetune_tables(study, "distances")
    assert set(distances.protocol) == {"full", "linear_probe"}
    lp = distances[(distances.protocol == "linear_probe")]
    assert (lp.distance_all == 0).all(), "a linear probe does not move the backbone"
