import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch
from pyhessian import hessian as pyhessian
from scipy import stats
from torch import nn
from torch.func import functional_call

from minima import data, models, prose, sharpness
from minima.evaluation import to_input


def mlp(dtype: torch.dtype) -> nn.Sequential:
    """A ReLU network without batchnorm on 2x2 images: 12 -> 5 -> 3, 83 parameters."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.ReLU(), nn.Linear(5, 3)).to(dtype)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (16, 3, 2, 2), dtype=torch.uint8, generator=g), torch.randint(0, 3, (16,), generator=g)


def exact_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The full Hessian of the mean cross-entropy in every parameter, reverse over reverse mode (float64): no
    forward-mode AD, which some activations lack."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    shapes = {n: p.shape for n, p in params.items()}
    flat = torch.cat([p.flatten() for p in params.values()])
    xf = to_input(x).double()

    def loss(w: torch.Tensor) -> torch.Tensor:
        parts = dict(zip(shapes, torch.split(w, [s.numel() for s in shapes.values()])))
        weights = {n: parts[n].view(s) for n, s in shapes.items()}
        return nn.functional.cross_entropy(functional_call(model, weights, (xf,)), y)

    return torch.autograd.functional.hessian(loss, flat)


def test_hessian_eigenvalues_match_the_exact_hessian(batch):
    model = mlp(torch.float64)
    exact = torch.linalg.eigvalsh(exact_hessian(model, *batch)).flip(0)[:3]
    tol = 1e-10
    ours = sharpness.hessian_eigenvalues(model, *batch, k=3, tol=tol)
    # ARPACK stops at a residual ||Hv - theta v|| <= tol |theta|, and some eigenvalue of a symmetric
    # matrix lies within the residual of theta; the float64 Hessian-vector products (83 parameters,
    # a few dozen roundings each) add ~1e-14 relative. A wrong eigenvalue (the 4th instead of the 3rd,
    # a Hessian of the sum instead of the mean) is off by far more than 10 tol.
    np.testing.assert_allclose(ours, exact.numpy(), rtol=10 * tol, atol=0)


def test_hessian_trace_is_within_three_standard_errors_of_the_exact_trace(batch):
    model = mlp(torch.float64)
    exact = torch.trace(exact_hessian(model, *batch)).item()
    estimate = sharpness.hessian_trace(model, *batch, probes=50, seed=0)
    # Hutchinson is unbiased; with 50 probes its mean is close to normal, so 3 standard errors
    # fail a correct estimator about 0.3% of seeds (this seed is fixed). A factor of 2 (a trace of
    # the summed loss, probes of variance 2) moves it by the whole trace, many standard errors here.
    assert estimate["std_error"] > 0
    assert abs(estimate["value"] - exact) <= 3 * estimate["std_error"]


def test_every_measure_in_batches_is_the_measure_of_the_mean_loss_over_all_images(batch):
    model = mlp(torch.float64)
    whole, batched = (sharpness.flatness(model, *batch, k=2, probes=4, samples=3, steps=3, seed=5, batch_size=b)
                      for b in (len(batch[1]), 5))  # 16 images: batches of 5, 5, 5 and 1
    # each batch's mean weighted by its share of the images sums to the mean over all: the same numbers up to
    # float64 roundings of a few sums (~1e-15 relative) and ARPACK's own (both from one start vector, tol 1e-3,
    # so they may stop one iteration apart: 1e-6 relative bounds that); an unweighted mean of the batch means
    # (the last batch of 1 weighted as a batch of 5) is off by percents
    np.testing.assert_allclose(batched.value, whole.value, rtol=1e-6, atol=1e-12)


def test_adaptive_sharpness_is_unchanged_by_rescaling_layers_and_the_hessian_is_not(batch):
    model = mlp(torch.float32)
    scaled = copy.deepcopy(model)
    c = 8.0  # a power of two: c w, w / c and every product with them are exact in binary floats
    with torch.no_grad():
        scaled[1].weight.mul_(c), scaled[1].bias.mul_(c), scaled[3].weight.div_(c)
    xf = to_input(batch[0])
    # the same function: ReLU(c z) = c ReLU(z), and (w / c)(c h) rounds exactly as w h
    assert torch.equal(model(xf), scaled(xf))
    for kind, norm, rho in (("average", "linf", 0.1), ("worst", "linf", 0.05), ("worst", "l2", 0.1)):
        a = sharpness.adaptive_sharpness(model, *batch, rho, kind, norm, samples=5, steps=5, seed=3)
        b = sharpness.adaptive_sharpness(scaled, *batch, rho, kind, norm, samples=5, steps=5, seed=3)
        # perturbations |c w| u = c |w| u and gradients (g / c)|c w| = g |w| are exact multiples too,
        # so both runs do identical arithmetic on scaled numbers: equal to the last bit. A perturbation
        # not scaled by |w| changes the loss increase by orders of magnitude at c = 8.
        assert a == b and a["value"] > 0
    top = sharpness.hessian_eigenvalues(model, *batch, k=1)[0]
    top_scaled = sharpness.hessian_eigenvalues(scaled, *batch, k=1)[0]
    # Dinh et al. 2017: the same function, another raw Hessian (here 1.06 against 1.95; the blocks of the
    # two layers scale by 1 / c^2 and c^2, so how much the top moves depends on the network)
    assert abs(top_scaled / top - 1) > 0.5


@pytest.fixture
def resnet(tiny):
    task = data.load_task(tiny, "source")
    torch.manual_seed(0)
    model = models.model_for(tiny, task.n_classes).to(memory_format=torch.channels_last)
    return model, task.x_train[:20], task.y_train[:20]


def test_flatness_leaves_the_model_bit_for_bit_and_excludes_batchnorm(resnet):
    model, x, y = resnet
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    table = sharpness.flatness(model, x, y, k=1, probes=2, samples=2, steps=2)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training and all(p.grad is None for p in model.parameters())
    assert list(table.measure) == ["hessian_eigenvalue", "hessian_trace", "adaptive_average", "adaptive_worst"]
    assert list(table.invariant) == [False, False, True, True] and table.value.notna().all()
    bn = models.batchnorm_names(model)
    assert bn and not bn & set(sharpness.hessian_names(model))
    assert bn <= set(sharpness.hessian_names(model, include_bn=True)) | {n for n, _ in model.named_buffers()}


def test_top_eigenvalue_and_trace_agree_with_pyhessian(resnet):
    model, x, y = resnet
    model.eval()
    ours = sharpness.hessian_eigenvalues(model, x, y, k=2, include_bn=True, tol=1e-4)
    trace = sharpness.hessian_trace(model, x, y, probes=30, include_bn=True, seed=1)
    reference = copy.deepcopy(model)  # PyHessian leaves gradients on the model it is given
    torch.manual_seed(0)  # PyHessian draws its vectors from the global generator
    comp = pyhessian(reference, nn.CrossEntropyLoss(), data=(to_input(x), y), cuda=False)
    (theta,), (v,) = comp.eigenvalues(maxIter=300, tol=1e-6)
    theirs = comp.trace(maxIter=30, tol=0.0)  # tol 0: all 30 probes, no early stop

    # Power iteration's answer comes with no bound of its own; its vector's residual gives one: some
    # eigenvalue lies within r = ||Hv - theta v|| of theta (symmetric H), and that one is the largest
    # when theta - r is above our second eigenvalue. Ours is within 1e-4 relative (ARPACK's tol).
    with torch.no_grad(), torch.enable_grad():
        op = sharpness.hessian_operator(model, x, y, include_bn=True)
        flat_v = torch.cat([t.flatten() for t in v])
        r = (op @ flat_v - theta * flat_v).norm().item()
    assert theta - r > ours[1]
    assert abs(theta - ours[0]) <= r + 1e-4 * abs(ours[0])

    # two independent unbiased estimates of one trace: their difference has standard deviation
    # sqrt(se1^2 + se2^2); 3 of them fail a correct pair about 0.3% of seeds (the seeds are fixed)
    se_theirs = np.std(theirs, ddof=1) / math.sqrt(len(theirs))
    assert abs(trace["value"] - np.mean(theirs)) <= 3 * math.hypot(trace["std_error"], se_theirs)


def run_table(method_factor: float, seeds: int = 3) -> pd.DataFrame:
    """A `run_measures` table of three methods: values factor**i times a seed spread of 0.9, 1.0, 1.1
    (the same spread for every method), in every measure."""
    rows = [dict(run=f"{m}-seed{s}", method=m, pretrain_seed=s,
                 **dict.fromkeys(sharpness.RUN_MEASURES, method_factor ** i * (0.9, 1.0, 1.1)[s]))
            for i, m in enumerate(["adam", "sam", "swa"]) for s in range(seeds)]
    return pd.DataFrame(rows)


def test_the_methods_differ_when_their_means_are_far_apart_beyond_the_seed_spread():
    runs = run_table(method_factor=3.0)
    sentences = prose.difference_sentences(runs)
    assert len(sentences) == len(sharpness.RUN_MEASURES)
    for sentence in sentences:
        assert "the methods differ beyond the seed spread" in sentence
        assert "log values, F(2, 6) = " in sentence and "n = 9 runs of 3 methods" in sentence
        assert sentence.endswith("flattest: adam.")
    # on the logs, each method is the same three numbers shifted by i log 3: F from the group means
    d = sharpness.method_difference(runs, "hessian_top")
    groups = [np.log(g.hessian_top.to_numpy()) for _, g in runs.groupby("method")]
    assert d["f"] == pytest.approx(stats.f_oneway(*groups).statistic, rel=1e-12) and d["p_value"] < 1e-4


def test_the_methods_do_not_differ_when_each_holds_the_same_values():
    sentences = prose.difference_sentences(run_table(method_factor=1.0))
    # equal group means: F = 0 and p = 1, whatever the seed spread
    assert all("not shown to differ beyond the seed spread at the 5% level" in s and "F(2, 6) = 0.00, p = 1," in s
               and "flattest" not in s for s in sentences), sentences


def test_without_seed_spread_the_sentence_cannot_tell_and_a_value_below_zero_keeps_raw_values():
    one_seed = prose.difference_sentences(run_table(method_factor=3.0, seeds=1))
    assert all("cannot tell" in s and "one run per method" in s and "n = 3 runs" in s for s in one_seed)
    runs = run_table(method_factor=3.0)
    runs.loc[0, "adaptive_average"] = -0.01  # noise can lower the loss a little
    assert not sharpness.method_difference(runs, "adaptive_average")["log"]
    assert sharpness.method_difference(runs, "adaptive_worst")["log"]


def test_run_measures_has_one_row_per_run_and_keeps_a_measure_no_run_has():
    # a pivot over (run, method, seed) once made every combination of them: 3 runs became 9 rows, and every
    # run-level statistic downstream counted each run three times
    rows = [dict(run=f"{m}-seed{s}", method=m, pretrain_seed=s, replicate=r, measure=measure, rank=rank,
                 value=np.nan if measure.startswith("hessian") else 1.0 + s + r)
            for m, s in (("adam", 0), ("adam", 1), ("sam", 0)) for r in (0, 1)
            for measure, rank in sharpness.RUN_MEASURES.values()]
    wide = sharpness.run_measures(pd.DataFrame(rows))
    assert len(wide) == 3 and sorted(wide.run) == ["adam-seed0", "adam-seed1", "sam-seed0"]
    assert wide.hessian_top.isna().all() and wide.adaptive_worst.tolist() == [1.5, 2.5, 1.5]


def test_a_run_measure_is_the_mean_of_its_replicates_geometric_for_the_hessian_ones():
    values = {"adam": (2.0, 8.0), "sam": (-1.0, 3.0)}  # two replicates each; a trace estimate can come out < 0
    rows = [dict(run=m, method=m, pretrain_seed=0, replicate=r, measure=measure, rank=rank, value=v)
            for m, pair in values.items() for r, v in enumerate(pair)
            for measure, rank in sharpness.RUN_MEASURES.values()]
    wide = sharpness.run_measures(pd.DataFrame(rows)).set_index("run")
    # the Hessian measures scale multiplicatively: exp(mean(log 2, log 8)) = 4, where the mean would be 5
    assert wide.loc["adam", ["hessian_top", "hessian_trace"]].tolist() == pytest.approx([4.0, 4.0])
    assert wide.loc["adam", "adaptive_average"] == 5.0 and wide.loc["sam", "adaptive_worst"] == 1.0
    # a replicate with no log makes the run's geometric mean undefined, not the other replicate's value
    assert np.isnan(wide.loc["sam", "hessian_top"])
    assert np.isnan(sharpness.run_measures(pd.DataFrame(rows[1:])).set_index("run").loc["adam", "hessian_top"])


# Hardsigmoid is swapped the same way, but torch has no second derivative of it in either mode to compare with
@pytest.mark.parametrize("activation", [nn.SiLU, nn.Hardswish])
def test_the_hessian_of_an_activation_without_forward_ad_matches_the_exact_hessian(batch, activation):
    # EfficientNet's SiLU and MobileNetV3's hard activations have no forward-mode AD in torch; the measures swap
    # them for composite forms of the same function; the exact Hessian (reverse over reverse) uses torch's own
    model = mlp(torch.float64)
    model[2] = activation()
    exact = torch.linalg.eigvalsh(exact_hessian(model, *batch)).flip(0)[:1]
    # ARPACK's residual bound, as in the ReLU test above; the composite form rounds differently from torch's
    # kernel by ~1e-16 relative, far below it
    np.testing.assert_allclose(sharpness.hessian_eigenvalues(model, *batch, k=1, tol=1e-10), exact.numpy(),
                               rtol=1e-9, atol=0)
    assert type(model[2]) is activation  # restored
