import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torchattacks

from minima import attacks, data, models, prose, robustness, runstore, tables
from minima.config import Study
from minima.evaluation import eval_mode, to_input
from tolerances import mean_loss_two_ways, roundings


@pytest.fixture
def trained(tiny, source, pretrained_adam):
    """The source task and the session's trained tiny adam model."""
    return source, runstore.load_model(tiny, pretrained_adam, source.n_classes)


def test_fgsm_images_match_torchattacks(trained):
    source, trained_model = trained
    x, y = to_input(source.x_test), source.y_test
    epsilons = [0.0, 0.01, 0.03, 0.1]
    with eval_mode(trained_model):
        ours = dict(attacks.fgsm_images(trained_model, x, y, epsilons))
    for eps in epsilons:
        theirs = torchattacks.FGSM(trained_model, eps=eps)(x, y)
        # the same gradient (same operations), so the same signs; each side then rounds twice
        # (eps * sign, x + that) on values <= 1 + eps. A flipped sign moves a pixel by eps >> this.
        torch.testing.assert_close(ours[eps], theirs, rtol=0, atol=2 * roundings(2, 1 + eps))


def test_pgd_images_match_torchattacks_given_the_same_random_start(trained):
    source, trained_model = trained
    # torchattacks draws its start from the global RNG with empty_like(x).uniform_(-eps, eps);
    # ours draws the same call from a generator: seeded alike, both starts are identical.
    x, y = to_input(source.x_test), source.y_test
    eps, steps, step_size = 0.03, 4, 0.01
    torch.manual_seed(7)
    theirs = torchattacks.PGD(trained_model, eps=eps, alpha=step_size, steps=steps, random_start=True)(x, y)
    with eval_mode(trained_model):
        ours = attacks.pgd_images(trained_model, x, y, eps, steps, step_size, torch.Generator().manual_seed(7))
    # the same operations step by step (start, signed step, projection, clamp), so the same signs;
    # each step rounds 4 times on values <= 1 + eps (+ 2 for the start), on both sides.
    # A flipped sign or a missed projection moves a pixel by step_size or more.
    torch.testing.assert_close(ours, theirs, rtol=0, atol=2 * roundings(4 * steps + 2, 1 + eps))
    # the projection x + clamp(adv - x, -eps, eps) and this test's subtraction: 3 roundings on <= 1 + eps
    assert (ours - x).abs().max() <= eps + roundings(3, 1 + eps)


def test_fgsm_raises_the_loss_of_a_trained_model(trained):
    source, trained_model = trained
    table = robustness.fgsm(trained_model, source.x_train, source.y_train, [0.0, 0.01, 0.03, 0.1])
    loss = table.set_index("strength")["loss"]
    assert loss[0.01] > loss[0.0] and loss[0.1] > loss[0.03] > loss[0.0]
    assert table.accuracy.iloc[-1] < table.accuracy.iloc[0]


def test_every_perturbed_input_stays_in_the_unit_interval(tiny_model, source):
    x, y = to_input(source.x_test), source.y_test
    g = torch.Generator().manual_seed(0)
    with eval_mode(tiny_model):
        images = [robustness.gaussian_images(x, 0.5, torch.randn(x.shape, generator=g)),
                  robustness.mask_images(x, 8, g),
                  *[adv for _, adv in attacks.fgsm_images(tiny_model, x, y, [0.1, 0.5])],
                  attacks.pgd_images(tiny_model, x, y, 0.3, 2, 0.15, g)]
    for image in images:
        assert image.min() >= 0 and image.max() <= 1


def test_masks_are_squares_inside_the_image_at_a_different_place_per_image():
    x = torch.ones(64, 3, 16, 16)
    size = 5
    masked = robustness.mask_images(x, size, torch.Generator().manual_seed(0))
    black = masked[:, 0] == 0
    assert torch.equal(black, (masked == 0).all(1)), "all channels blacked out together"
    assert (black.sum((1, 2)) == size * size).all(), "the whole square lies inside every image"
    rows, cols = black.any(2).float(), black.any(1).float()
    assert (rows.sum(1) == size).all() and (cols.sum(1) == size).all(), "a square, not scattered pixels"
    tops = rows.argmax(1) * 16 + cols.argmax(1)
    assert len(torch.unique(tops)) > 32, "positions differ between images"


def test_local_energy_restores_weights_bit_for_bit_and_the_training_mode(tiny_model, source):
    tiny_model.train()
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    for batched in (False, True):
        robustness.local_energy(tiny_model, source.x_test, source.y_test, [0.0, 0.5], repeats=2,
                                include_bn=True, batched=batched)
        after = tiny_model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(m.training for m in tiny_model.modules())


def _perturbed_logit_scale(model, x, sigma, repeats, seed):
    """The largest |logit| of the model with its weights perturbed like local energy does, over a few draws."""
    g, scale = torch.Generator().manual_seed(seed), 0.0
    for _ in range(repeats):
        perturbed = copy.deepcopy(model).eval()
        with torch.no_grad():
            for n in robustness.energy_names(perturbed):
                p = perturbed.get_parameter(n)
                p.mul_(1 + sigma * torch.randn(p.shape, generator=g))
            scale = max(scale, perturbed(to_input(x)).abs().max().item())
    return scale


def test_local_energy_batched_and_one_at_a_time_agree(tiny_model, source):
    x, y = source.x_test, source.y_test
    args = (tiny_model, x, y, [0.0, 0.2], 3)
    batched = robustness.local_energy(*args, seed=3, batched=True)
    looped = robustness.local_energy(*args, seed=3, batched=False)
    # Accuracies are counts of argmaxes: they could differ only where an image's two largest logits
    # lie within the forward-pass tolerance below (~1e-3 relative; measured differences ~1e-7), a
    # near-tie that continuous random logits of 30 images practically never have.
    assert list(batched.accuracy) == list(looped.accuracy)
    # The losses are the same perturbed networks evaluated by different kernels (vmap over stacked
    # weights vs one model at a time) and summed in different orders: the forward-pass rule through
    # cross-entropy plus two orders of a mean of len(y) float32 losses (tests/tolerances.py).
    scale = _perturbed_logit_scale(tiny_model, x, 0.2, 3, seed=3)
    for b, l in zip(batched.loss, looped.loss):
        assert abs(b - l) <= mean_loss_two_ways(tiny_model, len(y), scale, l), (b, l)
    assert batched.loss[batched.strength == 0.2].std() > 0, "fresh noise per repeat"


def test_energy_leaves_batchnorm_alone_unless_asked(tiny_model):
    bn = models.batchnorm_names(tiny_model)
    assert not bn & set(robustness.energy_names(tiny_model))
    assert {n for n, _ in tiny_model.named_parameters()} <= set(robustness.energy_names(tiny_model, True))


def test_measure_model_gives_every_measure_and_restores_the_mode(tiny, tiny_model, source):
    tiny_model.train()
    table = robustness.measure_model(tiny_model, source.x_test, source.y_test, tiny, batch_size=16)
    assert tiny_model.training
    assert list(table.columns) == robustness.COLUMNS
    assert set(table.measure) == set(robustness.MEASURES)
    assert table.accuracy.between(0, 1).all() and (table.loss > 0).all()
    repeats = table[(table.measure == "gaussian") & (table.strength > 0)].groupby("strength").size()
    assert (repeats == tiny.robustness_repeats).all()


def test_pgd_uses_pgd_eps_and_fgsm_fgsm_eps_and_the_cache_knows_both(tiny_model, source):
    study = Study.load("tiny", fgsm_eps=[0.0, 0.01, 0.03], pgd_eps=[0.0, 0.02])
    x, y = source.x_test[:8], source.y_test[:8]
    table = robustness.measure_model(tiny_model, x, y, study, measures=["fgsm", "pgd"], batch_size=8)
    strengths = table.groupby("measure")["strength"].apply(sorted)
    assert strengths["fgsm"] == study.fgsm_eps and strengths["pgd"] == study.pgd_eps
    keys = tables.ROBUSTNESS_KEYS
    assert study.fingerprint(*keys) != Study.load("tiny", fgsm_eps=[0.0, 0.01, 0.03], pgd_eps=[0.0, 0.03]).fingerprint(*keys)


def test_bad_parameters_fail_before_any_work(tiny_model, source):
    with pytest.raises(ValueError, match="does not fit"):
        robustness.masking(tiny_model, source.x_test, source.y_test, [0, 17], repeats=1)
    with pytest.raises(ValueError, match="epsilons"):
        robustness.fgsm(tiny_model, source.x_test, source.y_test, [-0.1])
    with pytest.raises(ValueError, match="unknown measure"):
        robustness.measure_model(tiny_model, source.x_test, source.y_test, None, measures=["blur"])


def test_summaries_interpolate_the_half_strength_and_say_when_it_is_not_reached():
    falling = [0.8, 0.6, 0.3, 0.2]
    table = pd.concat([
        pd.DataFrame(dict(method="a", measure="m", strength=[0, 1, 2, 3], repeat=r,
                          loss=1.0, accuracy=[a + d for a in falling])) for r, d in ((0, 0.05), (1, -0.05))
    ] + [pd.DataFrame(dict(method="b", measure="m", strength=[0, 1, 2], repeat=0, loss=1.0,
                           accuracy=[0.8, 0.7, 0.6]))])
    s = robustness.summaries(table).set_index("method")
    # hand-computed values of a float64 table: pytest.approx's default rel=1e-6 covers the few float64
    # roundings (~1e-16 each) of a mean, a trapezoid and an interpolation, and no wrong formula
    assert s.loc["a", "clean_accuracy"] == pytest.approx(0.8)
    assert s.loc["a", "half_strength"] == pytest.approx(1 + 0.2 / 0.3)
    assert s.loc["a", "auc"] == pytest.approx((0.7 + 0.45 + 0.25) / (3 * 0.8))
    assert s.loc["a", "half_reached"] and not s.loc["b", "half_reached"]
    assert math.isnan(s.loc["b", "half_strength"])
    assert list(prose.half_strength_text(s.reset_index())) == ["1.67", "not reached"]


def test_the_replicates_are_disjoint_stratified_draws_and_the_first_is_the_single_draw():
    y = torch.arange(5).repeat_interleave(6)  # 5 classes of 6
    parts = data.stratified_parts(y, 3, 2, seed=4)
    assert not set(parts[0].tolist()) & set(parts[1].tolist())
    assert all(torch.bincount(y[p], minlength=5).tolist() == [3] * 5 for p in parts)
    assert torch.equal(parts[0], data.stratified_indices(y, 3, seed=4))
    assert data.replicate_seed(0, 0) != data.replicate_seed(0, 1) != data.replicate_seed(1, 0)


def test_a_runs_summary_is_the_mean_of_its_replicates_and_half_strength_needs_every_replicate():
    replicates = pd.DataFrame(dict(run="a", split="test", measure="m", replicate=[0, 1], clean_accuracy=[0.8, 0.6],
                                   auc=[0.5, 0.7], half_strength=[1.0, np.nan], half_reached=[True, False]))
    both = pd.concat([replicates, replicates.assign(run="b", half_strength=[1.0, 3.0], half_reached=True)])
    s = robustness.run_summaries(both).set_index("run")
    assert s.loc["a", "auc"] == pytest.approx(0.6) and s.loc["a", "clean_accuracy"] == pytest.approx(0.7)
    assert not s.loc["a", "half_reached"] and math.isnan(s.loc["a", "half_strength"])
    assert s.loc["b", "half_reached"] and s.loc["b", "half_strength"] == 2.0
