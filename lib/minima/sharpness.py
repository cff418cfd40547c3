"""Flatness of a minimum the way the literature measures it: Hessian eigenvalues and trace, adaptive sharpness.

Every measure takes a model, uint8 images (N, 3, H, W) and labels, and works on one loss: the mean
cross-entropy over all the given images (what `evaluation.evaluate` reports), summed from batches of at most
`batch_size` images, each batch its own graph (memory bounded by one batch, not by all of them), with the
model in eval mode (batchnorm uses its running statistics, so the loss is a deterministic function of
the weights), in the model's own dtype and without autocast (curvature in bf16 is mostly rounding).
The model's weights, gradients and mode are left as they were: the measures never write to it.

Which weights: every trainable parameter except batchnorm's scale and shift unless `include_bn`.
A batchnorm layer renormalises what comes before it, so its input weights only matter up to scale,
and its own scale and shift reparameterise the next layer: curvature along them says more about the
parameterisation than about the minimum. The same choice as local energy (`robustness.energy_names`).

The Hessian measures change when a layer is scaled up and the next one down (Dinh et al. 2017), the
network function staying the same; adaptive sharpness does not (Andriushchenko et al. 2023): `INVARIANT`.

The study measures every finished pretraining run `measure_replicates` times, independently: on disjoint
stratified train subsets, with their own start vectors, probes and noise draws (`evaluate_study`, one row per
run, replicate and measure). One number per measure and run is the mean of its replicates (`run_measures`;
for the Hessian measures the mean of the logs, back-transformed: the geometric mean, `LOG`), and their
agreement is the measure's test-retest reliability (`minima.reliability`). `method_difference` asks whether
the methods differ beyond the spread between seeds.
"""
from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from curvlinops import HessianLinearOperator
from scipy.sparse.linalg import eigsh
from scipy.stats import f_oneway
from torch import Tensor, nn
from torch.func import functional_call

from minima import data, models, pretraining, runstore, train
from minima.config import Study
from minima.evaluation import eval_mode, pick_device, to_input

# what a run's measures depend on beyond the run itself; seed draws the subsets and the random vectors
# (the run's folder name holds it too; named for who reads this)
KEYS = ("seed", "flatness_per_class", "hessian_top_k", "hutchinson_probes", "sharpness_rho_average",
        "sharpness_rho_worst", "sharpness_samples", "sharpness_steps", "measure_replicates")
BATCH_SIZE = 128  # images per graph: a Hessian-vector product holds the second-order graph of one batch

KINDS = ("average", "worst")
NORMS = ("linf", "l2")
INVARIANT = {"hessian_eigenvalue": False, "hessian_trace": False, "adaptive_average": True, "adaptive_worst": True}
COLUMNS = ["run", "method", "pretrain_seed", "replicate", "measure", "rank", "value", "std_error", "invariant",
           "seconds"]
# one number per run and measure: its column -> (measure, rank) in `flatness`'s table
RUN_MEASURES = {"hessian_top": ("hessian_eigenvalue", 1), "hessian_trace": ("hessian_trace", 0),
                "adaptive_average": ("adaptive_average", 0), "adaptive_worst": ("adaptive_worst", 0)}
LOG = ("hessian_top", "hessian_trace")  # averaged over replicates as logs (they scale multiplicatively)
NAMES = {"hessian_top": "Top Hessian eigenvalue", "hessian_trace": "Hessian trace",
         "adaptive_average": "Average-case adaptive sharpness", "adaptive_worst": "Worst-case adaptive sharpness"}
ALPHA = 0.05  # the level at which `method_difference` says the methods differ


def hessian_names(model: nn.Module, include_bn: bool = False) -> list[str]:
    """The trainable parameters the measures look at: all but batchnorm's, unless `include_bn`."""
    bn = models.batchnorm_names(model)
    return [n for n, p in model.named_parameters() if p.requires_grad and (include_bn or n not in bn)]


class _Composite(nn.Module):
    """An activation written with operations that have forward-mode AD (the Hessian-vector products need it)."""

    def __init__(self, fn: Callable[[Tensor], Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)


# torch has no forward-mode AD for silu_backward (EfficientNet) or hardsigmoid_backward (MobileNetV3); the same
# functions from sigmoid, relu6 and products have it
COMPOSITES = {nn.SiLU: lambda x: x * torch.sigmoid(x), nn.Hardsigmoid: lambda x: F.relu6(x + 3) / 6,
              nn.Hardswish: lambda x: x * F.relu6(x + 3) / 6}


@contextlib.contextmanager
def composite_activations(model: nn.Module) -> Iterator[nn.Module]:
    """`model` with every activation of `COMPOSITES` swapped for its composite form, restored on exit."""
    swapped = []
    for name, module in list(model.named_modules()):
        if type(module) in COMPOSITES:
            parent, _, child = name.rpartition(".")
            owner = model.get_submodule(parent) if parent else model
            setattr(owner, child, _Composite(COMPOSITES[type(module)]))
            swapped.append((owner, child, module))
    try:
        yield model
    finally:
        for owner, child, module in swapped:
            setattr(owner, child, module)


def hessian_operator(model: nn.Module, x: Tensor, y: Tensor, include_bn: bool = False,
                     batch_size: int = BATCH_SIZE) -> HessianLinearOperator:
    """curvlinops' Hessian of the mean cross-entropy on (x, y) in the named parameters, each product summed over
    batches of at most `batch_size` images (curvlinops weights each batch's mean by its share of the images).

    Use it inside `eval_mode(model)`: it calls the model as it is when multiplied.
    """
    params = dict(model.named_parameters())
    return HessianLinearOperator(model, nn.CrossEntropyLoss(), [params[n] for n in hessian_names(model, include_bn)],
                                 _batches(model, x, y, batch_size), check_deterministic=False, num_data=len(y))


def hessian_eigenvalues(model: nn.Module, x: Tensor, y: Tensor, k: int, include_bn: bool = False,
                        seed: int = 0, tol: float = 1e-3, batch_size: int = BATCH_SIZE) -> list[float]:
    """The k largest (algebraic) eigenvalues of the loss Hessian, largest first: Lanczos (scipy's eigsh).

    ARPACK stops when every Ritz pair (theta, v) has ||H v - theta v|| <= tol |theta|; for a symmetric
    matrix some eigenvalue then lies within that residual of theta, so each value is within about
    tol relative of an eigenvalue (plus the rounding of the Hessian-vector products themselves).
    The start vector is drawn from `seed`. The Lanczos basis holds 2k + 4 vectors, not ARPACK's default
    of at least 20: that default spends 20 products before its first convergence check, where a trained
    model's top eigenvalue (k = 1) converges in about 7; tol, not the basis, sets the accuracy.
    """
    _check_images(x, y)
    with eval_mode(model), composite_activations(model):
        op = hessian_operator(model, x, y, include_bn, batch_size)
        if not 0 < k < op.shape[0]:
            raise ValueError(f"k={k}; expected 0 < k < {op.shape[0]} (the number of parameters)")
        v0 = np.random.default_rng(seed).standard_normal(op.shape[0])
        values = eigsh(op.to_scipy(), k=k, which="LA", v0=v0, tol=tol, ncv=min(2 * k + 4, op.shape[0]),
                       return_eigenvectors=False)
    return sorted(values.tolist(), reverse=True)


def hessian_trace(model: nn.Module, x: Tensor, y: Tensor, probes: int, include_bn: bool = False,
                  seed: int = 0, batch_size: int = BATCH_SIZE) -> dict[str, float]:
    """Hutchinson's estimate of the Hessian's trace: the mean of v'Hv over Rademacher probes v, and its
    standard error (the probes' standard deviation / sqrt(probes))."""
    _check_images(x, y)
    if probes < 2:
        raise ValueError(f"probes={probes}; expected at least 2 (for a standard error)")
    with eval_mode(model), composite_activations(model):
        op = hessian_operator(model, x, y, include_bn, batch_size)
        g = torch.Generator(device=op.device).manual_seed(seed)
        quad = []
        for _ in range(probes):
            v = torch.randint(0, 2, (op.shape[0],), generator=g, device=op.device).to(op.dtype).mul_(2).sub_(1)
            quad.append(torch.dot(v, op @ v).item())
    return _mean_and_error(quad)


def adaptive_sharpness(model: nn.Module, x: Tensor, y: Tensor, rho: float, kind: str, norm: str = "linf",
                       samples: int = 10, steps: int = 10, include_bn: bool = False,
                       seed: int = 0, batch_size: int = BATCH_SIZE) -> dict[str, float]:
    """Adaptive sharpness (Andriushchenko et al. 2023): the loss increase under weight perturbations
    delta = |w| * u, elementwise, so that scaling a weight scales its perturbation.

    `average`: E[L(w + |w| u)] - L(w) with u ~ N(0, rho^2 I), from `samples` draws (seeded); the
    standard error is that of the mean of the draws' losses. (The same perturbation as local energy's
    w (1 + rho n), since n and -n are alike.) `worst`: max L(w + |w| u) - L(w) over ||u||_p <= rho
    (p = `norm`: linf or l2), by `steps` steps of projected gradient ascent in u from u = 0 with step
    size 2 rho / steps (signed gradient for linf, normalised gradient for l2), the largest loss seen
    along the way; a lower bound of the maximum, with a standard error of 0 (deterministic).
    The paper averages over mini-batches; here the loss is the mean over all of (x, y), so the worst case
    ascends the gradient of that one loss, summed from its batches.
    """
    _check_images(x, y)
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}; expected one of {', '.join(KINDS)}")
    if norm not in NORMS:
        raise ValueError(f"norm={norm!r}; expected one of {', '.join(NORMS)}")
    if not rho > 0:
        raise ValueError(f"rho={rho!r}; expected a number > 0")
    names = hessian_names(model, include_bn)
    with eval_mode(model):
        losses = _perturbed_losses(model, x, y, batch_size)
        clean = _total(losses, {})
        if kind == "average":
            return _average_case(losses, model, names, rho, samples, seed, clean)
        return _worst_case(losses, model, names, rho, norm, steps, clean)


def flatness(model: nn.Module, x: Tensor, y: Tensor, k: int = 3, probes: int = 20, rho_average: float = 0.05,
             rho_worst: float = 0.002, norm: str = "linf", samples: int = 10, steps: int = 10,
             include_bn: bool = False, seed: int = 0, batch_size: int = BATCH_SIZE) -> pd.DataFrame:
    """Every flatness measure of one model on (x, y): one row per measure and value, with its standard
    error (NaN where there is none) and whether it is invariant to rescaling layers (`INVARIANT`).

    The Hessian measures multiply by the Hessian with forward-mode AD through the network (SiLU and the hard
    activations swapped for composite forms that have it): an architecture with another operation that has
    none gets NaN for them, and one line saying so."""
    try:
        eigenvalues = hessian_eigenvalues(model, x, y, k, include_bn, seed, batch_size=batch_size)
        trace = hessian_trace(model, x, y, probes, include_bn, seed, batch_size)
    except NotImplementedError as err:
        print(f"Hessian measures of {type(model).__name__} not computed: {str(err).splitlines()[0]}", flush=True)
        eigenvalues, trace = [math.nan] * k, dict(value=math.nan, std_error=math.nan)
    rows = [dict(measure="hessian_eigenvalue", rank=i + 1, value=v, std_error=math.nan)
            for i, v in enumerate(eigenvalues)]
    rows.append(dict(measure="hessian_trace", rank=0, **trace))
    for kind, rho in (("average", rho_average), ("worst", rho_worst)):
        result = adaptive_sharpness(model, x, y, rho, kind, norm, samples, steps, include_bn, seed, batch_size)
        rows.append(dict(measure=f"adaptive_{kind}", rank=0, **result))
    table = pd.DataFrame(rows)
    return table.assign(invariant=table.measure.map(INVARIANT))


# ---------------------------------------------------------------- the study's table

def evaluate_study(study: Study) -> pd.DataFrame:
    """Every flatness measure of every pretraining run; one job per run through the study's executor."""
    return pretraining.each_run(study, measure_run, "flatness", COLUMNS)


def measure_run(study: Study, method: str, seed: int) -> pd.DataFrame:
    """Every flatness measure of one finished pretraining run, once per replicate, with the seconds each replicate took.

    Replicate r is measured on its own stratified train subset of `flatness_per_class` images per class, disjoint
    from the others' (`data.stratified_parts`; replicate 0 is drawn as robustness's and landscape's train subset
    is, same seed: the first images of theirs when flatness_per_class <= eval_subset_per_class), with start
    vectors, probes and noise drawn from its own seed (`data.replicate_seed`). Stored in the run's folder for the
    study's KEYS (a knob-sweep value equal to the method's own reads the method's).
    """
    run = pretraining.pretrain_run(study, method, seed)
    return run.measured("flatness", study.fingerprint(*KEYS), lambda: _measure_run(study, run, method, seed))


def _measure_run(study: Study, run: runstore.Run, method: str, seed: int) -> pd.DataFrame:
    task = data.load_task(study, "source")
    parts = data.stratified_parts(task.y_train, study.flatness_per_class, study.measure_replicates, study.seed)
    device = pick_device(study.device)
    model = runstore.load_model(study, run, task.n_classes, device)
    frames = []
    for replicate, subset in enumerate(parts):
        start = time.perf_counter()
        table = flatness(model, task.x_train[subset].to(device), task.y_train[subset].to(device), study.hessian_top_k,
                         study.hutchinson_probes, study.sharpness_rho_average, study.sharpness_rho_worst,
                         samples=study.sharpness_samples, steps=study.sharpness_steps,
                         seed=data.replicate_seed(study.seed, replicate))
        frames.append(table.assign(replicate=replicate, seconds=time.perf_counter() - start))
    table = pd.concat(frames, ignore_index=True)
    seconds = " + ".join(f"{s:.1f}" for s in table.groupby("replicate").seconds.first())
    train.log(f"flatness of {method} seed {seed}: {seconds} s ({len(parts)} replicates)", run.path)
    return table.assign(run=run.name, method=method, pretrain_seed=seed)[COLUMNS]


def replicate_measures(table: pd.DataFrame) -> pd.DataFrame:
    """One row per run and replicate of a flatness table, one column per `RUN_MEASURES` entry (lower is flatter)."""
    # unstack, not pivot_table: pivot_table drops a measure that is NaN for every run (no Hessian for an arch
    # without forward-mode AD), and with dropna=False it makes every combination of run, method and seed
    index = ["run", "method", "pretrain_seed", "replicate", "measure", "rank"]
    wide = table.set_index(index).value.unstack(["measure", "rank"])
    return pd.DataFrame({column: wide.get(key, pd.Series(np.nan, index=wide.index))
                         for column, key in RUN_MEASURES.items()}).reset_index()


def run_measures(table: pd.DataFrame) -> pd.DataFrame:
    """One row per run of a flatness table, one column per `RUN_MEASURES` entry (lower is flatter): the mean of
    the run's replicates, for `LOG` the geometric mean (the mean of the logs, back-transformed). NaN where a
    replicate is missing, or for `LOG` not above 0 (it has no log)."""
    per = replicate_measures(table).set_index(["run", "method", "pretrain_seed", "replicate"])
    per[list(LOG)] = np.log(per[list(LOG)].where(per[list(LOG)] > 0))
    runs = per.groupby(level=["run", "method", "pretrain_seed"])
    mean = runs.mean().where(runs.count() == runs.size().to_numpy()[:, None])
    mean[list(LOG)] = np.exp(mean[list(LOG)])
    return mean.reset_index()


def axis_titles(study: Study) -> dict[str, tuple[str, str]]:
    """Per `RUN_MEASURES` column: a figure title (what it measures, on which images, whether it is invariant to
    rescaling layers) and its axis title with units."""
    curvature = "nats per squared weight unit"
    increase = "loss increase (nats, mean cross-entropy)"
    what = {"hessian_top": ("curvature along the sharpest direction", f"top eigenvalue ({curvature})"),
            "hessian_trace": (f"total curvature (Hutchinson, {study.hutchinson_probes} probes per replicate)",
                              f"trace ({curvature})"),
            "adaptive_average": (f"mean loss increase under weight noise of sd {study.sharpness_rho_average} |w| "
                                 f"({study.sharpness_samples} draws)", increase),
            "adaptive_worst": (f"largest loss increase within {study.sharpness_rho_worst} |w| per weight "
                               f"({study.sharpness_steps} ascent steps)", increase)}
    invariance = {True: "invariant to rescaling layers", False: "changes when layers are rescaled"}
    return {column: (f"{NAMES[column]}: {title}<br><sup>{invariance[INVARIANT[RUN_MEASURES[column][0]]]}; "
                     f"{study.measure_replicates} replicates of {study.flatness_per_class} train images per class, "
                     f"{_average_word(column)}; error bars: +-1 sd over seeds</sup>", axis)
            for column, (title, axis) in what.items()}


def method_difference(runs: pd.DataFrame, column: str) -> dict[str, Any]:
    """One-way F test of `column` between the methods of a `run_measures` table, the pretraining run the unit.

    The seeds of a method are its independent replicates, so the question is whether the spread between
    method means exceeds the spread between seeds: an F test of a one-way layout. The test runs on the
    logs when every value is positive (curvatures and loss increases scale multiplicatively, and on the
    log scale the seed spread is comparable between a sharp and a flat method, as the test assumes), on the
    raw values otherwise (an average-case loss increase can come out slightly negative). Not Kruskal-Wallis:
    with two runs for each of three methods its smallest possible p is 6/90 = 0.067 (exact; 0.10 by its
    chi-square approximation), so it could never find a difference in that design; the F test is exact at
    any n when the seed noise is normal with one spread for all methods.
    Returns F, p (NaN with a single method or no seed spread: one run per method), the degrees of freedom,
    the number of runs and methods, whether logs were taken and the method with the lowest mean.
    """
    part = runs.dropna(subset=[column])
    log = bool((part[column] > 0).all())
    values = np.log(part[column]) if log else part[column]
    groups = [g.to_numpy(float) for _, g in values.groupby(part["method"])]
    n, k = len(values), len(groups)
    f, p = (math.nan, math.nan) if k < 2 or n <= k else map(float, f_oneway(*groups))
    lowest = values.groupby(part["method"]).mean().idxmin() if n else None
    return dict(f=f, p_value=p, df_between=k - 1, df_within=n - k, n=n, methods=k, log=log, lowest=lowest)


def _average_word(column: str) -> str:
    return "geometric mean of the replicates" if column in LOG else "mean of the replicates"


# ---------------------------------------------------------------- shared machinery

Loss = Callable[[dict[str, Tensor]], Tensor]


def _batches(model: nn.Module, x: Tensor, y: Tensor, batch_size: int) -> list[tuple[Tensor, Tensor]]:
    """(x, y) as model inputs in the model's dtype and device, in batches of at most `batch_size`."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; expected an integer >= 1")
    p = next(model.parameters())
    return [(to_input(x[i:i + batch_size], p.device).to(p.dtype), y[i:i + batch_size].to(p.device))
            for i in range(0, len(y), batch_size)]


def _perturbed_losses(model: nn.Module, x: Tensor, y: Tensor, batch_size: int) -> list[Loss]:
    """Per batch, a function of weight changes {name: delta} -> that batch's share of the mean cross-entropy at
    w + delta (its summed cross-entropy / all images; the shares add up to the mean; model untouched)."""
    params = dict(model.named_parameters())

    def share(xb: Tensor, yb: Tensor) -> Loss:
        def loss(delta: dict[str, Tensor]) -> Tensor:
            weights = {n: params[n].detach() + d for n, d in delta.items()}
            return F.cross_entropy(functional_call(model, weights, (xb,)), yb, reduction="sum") / len(y)
        return loss

    return [share(xb, yb) for xb, yb in _batches(model, x, y, batch_size)]


@torch.no_grad()
def _total(losses: list[Loss], delta: dict[str, Tensor]) -> float:
    """The mean cross-entropy at w + delta, from its batches' shares."""
    return sum(loss(delta).item() for loss in losses)


def _average_case(losses: list[Loss], model: nn.Module, names: list[str], rho: float, samples: int, seed: int,
                  clean: float) -> dict[str, float]:
    if samples < 2:
        raise ValueError(f"samples={samples}; expected at least 2 (for a standard error)")
    params = dict(model.named_parameters())
    g = torch.Generator(device=params[names[0]].device).manual_seed(seed)
    values = []
    with torch.no_grad():
        for _ in range(samples):
            delta = {n: params[n].detach().abs() * torch.randn(params[n].shape, generator=g, device=params[n].device,
                                                               dtype=params[n].dtype).mul_(rho) for n in names}
            values.append(_total(losses, delta))
    result = _mean_and_error(values)
    return dict(value=result["value"] - clean, std_error=result["std_error"])


def _worst_case(losses: list[Loss], model: nn.Module, names: list[str], rho: float, norm: str, steps: int,
                clean: float) -> dict[str, float]:
    if steps < 1:
        raise ValueError(f"steps={steps}; expected at least 1")
    params = dict(model.named_parameters())
    scale = {n: params[n].detach().abs() for n in names}
    u = {n: torch.zeros_like(scale[n]) for n in names}
    step, best = 2 * rho / steps, clean
    for _ in range(steps):
        u = {n: t.requires_grad_(True) for n, t in u.items()}
        value, grads = 0.0, [torch.zeros_like(u[n]) for n in names]
        for loss in losses:  # one batch's graph at a time: the gradient of the mean is the sum of the shares'
            share = loss({n: scale[n] * u[n] for n in names})
            value += share.item()
            for total, part in zip(grads, torch.autograd.grad(share, [u[n] for n in names])):
                total += part
        best = max(best, value)
        with torch.no_grad():
            if norm == "linf":
                u = {n: (u[n] + step * gr.sign()).clamp_(-rho, rho) for n, gr in zip(names, grads)}
            else:
                length = torch.sqrt(sum(gr.square().sum() for gr in grads)).clamp_min(1e-30)
                u = {n: u[n] + step * gr / length for n, gr in zip(names, grads)}
                size = torch.sqrt(sum(t.square().sum() for t in u.values()))
                u = {n: t * min(1.0, rho / size.item()) for n, t in u.items()}
    best = max(best, _total(losses, {n: scale[n] * u[n] for n in names}))
    return dict(value=best - clean, std_error=0.0)


def _mean_and_error(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=float)
    return dict(value=float(a.mean()), std_error=float(a.std(ddof=1) / math.sqrt(len(a))))


def _check_images(x: Tensor, y: Tensor) -> None:
    if x.dtype != torch.uint8 or x.ndim != 4 or len(x) != len(y):
        raise ValueError(f"expected uint8 images (N, 3, H, W) and N labels; got {x.dtype} {tuple(x.shape)} "
                         f"and {len(y)} labels")
