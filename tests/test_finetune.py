import math

import pandas as pd
import pytest
import torch

from minima import finetuning, models, pretraining, runstore, store
from minima.config import Study
from minima.protocols import DistanceTracker, apply_protocol, epochs_to_threshold
from minima.methods import Adam
from minima.train import TrainSpec, fit
from tolerances import gamma


@pytest.fixture
def pretrained(pretrained_adam):
    return pretrained_adam


def _start(tiny, pretrained, target, protocol="full"):
    model = models.replace_head(runstore.load_model(tiny, pretrained, tiny.source_classes), target.n_classes, seed=0)
    return apply_protocol(model, protocol, frozen_stages=2)


def _spec(epochs=2):
    return TrainSpec(epochs=epochs, batch_size=16, lr=1e-3, weight_decay=5e-4, label="ft")


def test_replace_head_keeps_the_backbone_of_the_checkpoint(tiny, pretrained, target):
    saved = store.load_tensors(pretrained.weights)
    model = _start(tiny, pretrained, target)
    assert model.fc.out_features == target.n_classes
    for name, value in model.state_dict().items():
        if not name.startswith("fc."):
            assert torch.equal(value, saved[name]), name  # a copy: bit for bit


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
    assert table.step.iloc[0] == 0 and table.distance_all.iloc[0] == 0  # the first record is a literal 0
    assert table.distance_all.iloc[-1] > table.distance_all.iloc[1] > 0
    # the non-batchnorm sum of squares is part of the whole one: with T per-tensor squares (>= 0),
    # each float32 sum is within gamma_T of its exact value and each square root adds one rounding
    t = len(tracker.names)
    assert (table.distance_non_bn <= table.distance_all * (1 + 2 * gamma(t + 2))).all()
    start = store.load_tensors(pretrained.weights)
    backbone = {n: p.detach() for n, p in model.named_parameters() if not n.startswith("fc.")}
    # by hand in float64 from the same float32 differences (their squares are exact in float64):
    # its own error, gamma_n in float64, is negligible. The tracker's squared float32 norm of a
    # tensor of n elements is within gamma_(n+3) of the exact sum of squares (nonnegative terms:
    # Higham, sec. 4.2; + a root and a square), the sum over T tensors adds gamma_T, and the root
    # halves a relative error. Leaving batchnorm out of distance_all moves it by ~4e-3 here, the head
    # in it by far more: both caught (checked by breaking DistanceTracker).
    by_hand = math.sqrt(sum((p - start[n]).double().pow(2).sum().item() for n, p in backbone.items()))
    largest = max(p.numel() for p in backbone.values())
    rel = (gamma(largest + 3) + gamma(t)) / 2 + gamma(1)
    assert table.distance_all.iloc[-1] == pytest.approx(by_hand, rel=rel)


def test_epochs_to_threshold_is_not_reached_when_never_met():
    history = pd.DataFrame(dict(epoch=[1, 2, 3], train_accuracy=[0.5, 0.96, 0.99]))
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
    # bit for bit: the records saved before the crash come back as they were, and the resumed run does
    # the same operations as the straight one (test_train: resumed runs end with the same weights)
    pd.testing.assert_frame_equal(tracker.table(), tracker3.table(), check_exact=True)


def test_finetune_all_covers_every_start_seed_and_protocol(tiny):
    study = Study.load("tiny", methods=["adam", "swa"], protocols=["full", "linear_probe"])
    pretraining.pretrain_all(study)
    table = finetuning.finetune_all(study)
    assert len(table) == 2 * (2 * 1 + 1) * 2
    assert set(table.method) == {"adam", "swa", "scratch"}
    assert (table[table.protocol == "full"].distance_all > 0).all()
    distances = finetuning.finetune_tables(study, "distances")
    assert set(distances.protocol) == {"full", "linear_probe"}
    lp = distances[(distances.protocol == "linear_probe")]
    assert (lp.distance_all == 0).all(), "a linear probe does not move the backbone"  # exact: p - p is 0
