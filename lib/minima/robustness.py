"""Robustness of a minimum: input noise, masking, FGSM and PGD attacks, and local energy.

Every measure takes a model, uint8 images and labels and returns a tidy table with one row per
(measure, strength, repeat): the mean cross-entropy and the accuracy of the model, in eval mode,
on the perturbed images (or with perturbed weights, for local energy). A strength of 0 is the
clean model, evaluated once (repeat 0).

The study measures every run on a stratified train subset once and on the test set `measure_replicates` times,
independently: disjoint stratified test subsets, each with its own noise, masks, attack starts and weight
perturbations (`measure_run`). A run's robustness on the test set is the mean of its replicates' summaries
(`run_summaries`), and their agreement the test-retest reliability of each area (`minima.reliability`).
"""
from __future__ import annotations

import time
from typing import Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minima import data, models, pretraining, runstore, train
from minima.attacks import fgsm_images, pgd_images
from minima.config import Study
from minima.evaluation import autocast, eval_mode, evaluate, pick_device, to_input

# what a run's measures depend on beyond the run itself (its folder name holds the data keys and seed)
KEYS = ("eval_subset_per_class", "robustness_repeats", "noise_sigmas", "mask_sizes", "fgsm_eps", "pgd_eps",
        "pgd_steps", "pgd_step_fraction", "energy_sigmas", "energy_repeats", "energy_include_bn",
        "robustness_per_class", "measure_replicates")

MEASURES = ("gaussian", "masking", "fgsm", "pgd", "energy")
COLUMNS = ["measure", "strength", "repeat", "loss", "accuracy"]

# makes (strength, repeat, perturbed images) from one batch of clean images and their labels
Perturbation = Callable[[Tensor, Tensor], Iterator[tuple[float, int, Tensor]]]


# ---------------------------------------------------------------- perturbed images

def gaussian_images(x: Tensor, sigma: float, noise: Tensor) -> Tensor:
    """x + sigma * noise, clamped to [0, 1]."""
    return (x + sigma * noise).clamp_(0, 1)


def mask_images(x: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """A black size x size square at an independent random place in each image, fully inside it."""
    n, _, h, w = x.shape
    if size == 0:
        return x.clone()
    top = torch.randint(0, h - size + 1, (n, 1), generator=generator, device=x.device)
    left = torch.randint(0, w - size + 1, (n, 1), generator=generator, device=x.device)
    rows, cols = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    in_rows = (rows >= top) & (rows < top + size)
    in_cols = (cols >= left) & (cols < left + size)
    square = in_rows[:, :, None] & in_cols[:, None, :]
    return x.masked_fill(square[:, None], 0.0)


# ---------------------------------------------------------------- measures on images

def gaussian_noise(model: nn.Module, x: Tensor, y: Tensor, sigmas: Sequence[float], repeats: int,
                   seed: int = 0, batch_size: int = 512) -> pd.DataFrame:
    """Accuracy under additive Gaussian noise of each sigma (pixel scale 0-1), clamped to [0, 1].

    One noise draw per repeat serves every sigma (common random numbers: smoother curves).
    """
    _check_numbers("sigmas", sigmas)
    _check_positive(repeats=repeats, batch_size=batch_size)
    g = _generator(model, seed)

    def perturb(xb: Tensor, yb: Tensor) -> Iterator[tuple[float, int, Tensor]]:
        yield from _clean(xb, sigmas)
        for r in range(repeats):
            noise = torch.empty_like(xb).normal_(generator=g)
            for sigma in _nonzero(sigmas):
                yield sigma, r, gaussian_images(xb, sigma, noise)

    return _evaluate_perturbed(model, x, y, "gaussian", perturb, batch_size)


def masking(model: nn.Module, x: Tensor, y: Tensor, sizes: Sequence[int], repeats: int,
            seed: int = 0, batch_size: int = 512) -> pd.DataFrame:
    """Accuracy with a black square of each size (pixels) at a random place per image and repeat."""
    _check_numbers("sizes", sizes)
    _check_positive(repeats=repeats, batch_size=batch_size)
    side = min(x.shape[-2:])
    if max(sizes) > side:
        raise ValueError(f"mask size {max(sizes)} does not fit in {side}x{side} images; valid: 0 to {side}")
    g = _generator(model, seed)

    def perturb(xb: Tensor, yb: Tensor) -> Iterator[tuple[float, int, Tensor]]:
        yield from _clean(xb, sizes)
        for r in range(repeats):
            for size in _nonzero(sizes):
                yield size, r, mask_images(xb, int(size), g)

    return _evaluate_perturbed(model, x, y, "masking", perturb, batch_size)


def fgsm(model: nn.Module, x: Tensor, y: Tensor, epsilons: Sequence[float],
         batch_size: int = 512) -> pd.DataFrame:
    """Accuracy under FGSM (true labels) for every eps (pixel scale 0-1), one input gradient per batch."""
    _check_numbers("epsilons", epsilons)
    _check_positive(batch_size=batch_size)

    def perturb(xb: Tensor, yb: Tensor) -> Iterator[tuple[float, int, Tensor]]:
        for eps, adv in fgsm_images(model, xb, yb, epsilons):
            yield eps, 0, adv

    return _evaluate_perturbed(model, x, y, "fgsm", perturb, batch_size)


def pgd(model: nn.Module, x: Tensor, y: Tensor, epsilons: Sequence[float], steps: int, step_fraction: float,
        seed: int = 0, batch_size: int = 512) -> pd.DataFrame:
    """Accuracy under L-infinity PGD for every eps: `steps` steps of size step_fraction * eps, random start."""
    _check_numbers("epsilons", epsilons)
    _check_positive(steps=steps, step_fraction=step_fraction, batch_size=batch_size)
    g = _generator(model, seed)

    def perturb(xb: Tensor, yb: Tensor) -> Iterator[tuple[float, int, Tensor]]:
        yield from _clean(xb, epsilons)
        for eps in _nonzero(epsilons):
            yield eps, 0, pgd_images(model, xb, yb, eps, steps, step_fraction * eps, g)

    return _evaluate_perturbed(model, x, y, "pgd", perturb, batch_size)


# ---------------------------------------------------------------- local energy (weights)

def energy_names(model: nn.Module, include_bn: bool = False) -> list[str]:
    """The parameters local energy perturbs: every conv/linear weight and bias; batchnorm's only if asked."""
    bn = models.batchnorm_names(model)
    return [n for n, _ in model.named_parameters() if include_bn or n not in bn]


def local_energy(model: nn.Module, x: Tensor, y: Tensor, sigmas: Sequence[float], repeats: int,
                 include_bn: bool = False, seed: int = 0, batch_size: int = 512,
                 batched: bool | None = None) -> pd.DataFrame:
    """Accuracy with every perturbed weight w replaced by w * (1 + sigma * n), n ~ N(0, 1), per sigma and repeat.

    `batched`: True evaluates all repeats of a sigma at once (torch.func.vmap over the perturbed
    weights, the model untouched); False perturbs the model in place one repeat at a time and
    copies the original weights back; None (default) batches on CUDA, falling back to in place if
    vmap fails, and stays in place elsewhere (on CPU one repeat at a time measured faster:
    benchmarks/robustness.py). Both draw the same noise for the same seed.
    """
    _check_images(x, y)
    _check_numbers("sigmas", sigmas)
    _check_positive(repeats=repeats, batch_size=batch_size)
    names = energy_names(model, include_bn)
    g = _generator(model, seed)
    use_vmap = g.device.type == "cuda" if batched is None else batched
    rows = []
    with eval_mode(model):
        if any(s == 0 for s in sigmas):
            rows.append(dict(strength=0.0, repeat=0, **evaluate(model, x, y, batch_size)))
        for sigma in _nonzero(sigmas):
            noises = [_weight_noise(model, names, g) for _ in range(repeats)]
            results = None
            if use_vmap:
                try:
                    results = _energy_batched(model, x, y, names, sigma, noises, batch_size)
                except (RuntimeError, NotImplementedError):
                    if batched:  # asked for explicitly: do not hide the failure
                        raise
            if results is None:
                results = [_energy_in_place(model, x, y, names, sigma, noise, batch_size) for noise in noises]
            rows += [dict(strength=sigma, repeat=r, **res) for r, res in enumerate(results)]
    return pd.DataFrame(rows).assign(measure="energy")[COLUMNS]


def _weight_noise(model: nn.Module, names: list[str], g: torch.Generator) -> dict[str, Tensor]:
    params = dict(model.named_parameters())
    return {n: torch.empty_like(params[n]).normal_(generator=g) for n in names}


@torch.no_grad()
def _energy_in_place(model: nn.Module, x: Tensor, y: Tensor, names: list[str], sigma: float,
                     noise: dict[str, Tensor], batch_size: int) -> dict[str, float]:
    params = dict(model.named_parameters())
    originals = {n: params[n].detach().clone() for n in names}
    try:
        for n in names:
            params[n].mul_(1 + sigma * noise[n])
        return evaluate(model, x, y, batch_size)
    finally:
        for n in names:
            params[n].copy_(originals[n])


@torch.no_grad()
def _energy_batched(model: nn.Module, x: Tensor, y: Tensor, names: list[str], sigma: float,
                    noises: list[dict[str, Tensor]], batch_size: int) -> list[dict[str, float]]:
    from torch.func import functional_call, vmap

    params = dict(model.named_parameters())
    fixed = {**{n: p for n, p in params.items() if n not in names}, **dict(model.named_buffers())}
    stacked = {n: params[n] * (1 + sigma * torch.stack([noise[n] for noise in noises])) for n in names}
    device, r = params[names[0]].device, len(noises)
    forward = vmap(lambda p, xb: functional_call(model, {**fixed, **p}, (xb,)), in_dims=(0, None))
    loss = torch.zeros(r, device=device)
    correct = torch.zeros(r, device=device, dtype=torch.long)
    step = max(1, batch_size // r)  # the vmapped batch holds r copies of every image
    for i in range(0, len(y), step):
        xb, yb = to_input(x[i:i + step], device), y[i:i + step].to(device)
        with autocast(device):
            logits = forward(stacked, xb).float()
        loss += F.cross_entropy(logits.flatten(0, 1), yb.repeat(r), reduction="none").view(r, -1).sum(1)
        correct += (logits.argmax(-1) == yb).sum(1)
    return [dict(loss=l / len(y), accuracy=c / len(y)) for l, c in zip(loss.tolist(), correct.tolist())]


# ---------------------------------------------------------------- one model, every measure

def measure_model(model: nn.Module, x: Tensor, y: Tensor, study: Study,
                  measures: Sequence[str] = MEASURES, seed: int | None = None,
                  batch_size: int = 512) -> pd.DataFrame:
    """Every asked-for measure of one model on images `x`, with the study's strengths and repeats."""
    unknown = [m for m in measures if m not in MEASURES]
    if unknown:
        raise ValueError(f"unknown measure {unknown[0]!r}; valid: {', '.join(MEASURES)}")
    seed = study.seed if seed is None else seed
    reps = study.robustness_repeats
    calls = {
        "gaussian": lambda: gaussian_noise(model, x, y, study.noise_sigmas, reps, seed, batch_size),
        "masking": lambda: masking(model, x, y, study.mask_sizes, reps, seed, batch_size),
        "fgsm": lambda: fgsm(model, x, y, study.fgsm_eps, batch_size),
        "pgd": lambda: pgd(model, x, y, study.pgd_eps, study.pgd_steps, study.pgd_step_fraction, seed, batch_size),
        "energy": lambda: local_energy(model, x, y, study.energy_sigmas, study.energy_repeats,
                                       study.energy_include_bn, seed, batch_size),
    }
    return pd.concat([calls[m]() for m in measures], ignore_index=True)


def evaluate_study(study: Study) -> pd.DataFrame:
    """Every measure for every pretraining run, on a stratified train subset (eval_subset_per_class images per
    class) and on measure_replicates disjoint stratified test subsets (robustness_per_class images per class
    each); one job per run through the study's executor."""
    return pretraining.each_run(study, measure_run, "robustness",
                                ["run", "method", "pretrain_seed", "split", "replicate", *COLUMNS])


def measure_run(study: Study, method: str, seed: int) -> pd.DataFrame:
    """Every measure of one finished pretraining run on the stratified train subset (replicate 0, the study's
    seed) and on each replicate's test subset (`data.stratified_parts`; replicate r draws its perturbations from
    `data.replicate_seed(seed, r)`), stored in the run's folder for the study's KEYS (a knob-sweep value equal
    to the method's own reads the method's)."""
    run = pretraining.pretrain_run(study, method, seed)
    return run.measured("robustness", study.fingerprint(*KEYS), lambda: _measure_run(study, run, method, seed))


def _measure_run(study: Study, run: runstore.Run, method: str, seed: int) -> pd.DataFrame:
    start = time.perf_counter()
    task = data.load_task(study, "source")
    subset = data.stratified_indices(task.y_train, study.eval_subset_per_class, study.seed)
    held = data.stratified_parts(task.y_test, study.robustness_per_class, study.measure_replicates, study.seed)
    device = pick_device(study.device)
    # on the device once: every measure, strength and repeat evaluates these images
    splits = [("train", 0, study.seed, task.x_train[subset], task.y_train[subset])]
    splits += [("test", r, data.replicate_seed(study.seed, r), task.x_test[part], task.y_test[part])
               for r, part in enumerate(held)]
    model = runstore.load_model(study, run, task.n_classes, device)
    frames = [measure_model(model, x.to(device), y.to(device), study, seed=draws).assign(
                  run=run.name, method=method, pretrain_seed=seed, split=split, replicate=r)
              for split, r, draws, x, y in splits]
    train.log(f"robustness of {method} seed {seed}: {time.perf_counter() - start:.1f} s", run.path)
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------- what the notebooks show

def axis_titles(study: Study) -> dict[str, tuple[str, str]]:
    """Per measure: the perturbation in words (a figure title) and its strength axis with units."""
    eps = "eps (max change per pixel, pixel scale 0-1)"
    return {"gaussian": ("Gaussian pixel noise", "noise sigma (pixel scale 0-1)"),
            "masking": ("A black square at a random place per image", "square side (pixels)"),
            "fgsm": ("FGSM attack", eps),
            "pgd": (f"PGD attack ({study.pgd_steps} steps of {study.pgd_step_fraction} eps, random start)", eps),
            "energy": ("Local energy: weights multiplied by (1 + sigma n)", "weight noise sigma (relative)")}


def examples(model: nn.Module, x: Tensor, y: Tensor, study: Study) -> tuple[dict[str, Tensor], dict[str, list[str]]]:
    """Float images `x` under each input perturbation at every strength of the study (noise, masks and PGD
    starts from one generator seeded with the study's seed), and a caption per image."""
    g = torch.Generator().manual_seed(study.seed)
    noise = torch.randn(x.shape, generator=g)
    with eval_mode(model):
        images = {
            "gaussian": torch.cat([gaussian_images(x, s, noise) for s in study.noise_sigmas]),
            "masking": torch.cat([mask_images(x, s, g) for s in study.mask_sizes]),
            "fgsm": torch.cat([adv for _, adv in fgsm_images(model, x, y, study.fgsm_eps)]),
            "pgd": torch.cat([pgd_images(model, x, y, e, study.pgd_steps, study.pgd_step_fraction * e, g)
                              for e in study.pgd_eps]),
        }
    eps = {m: [f"eps {e}" for e in getattr(study, f"{m}_eps")] for m in ("fgsm", "pgd")}
    return images, {"gaussian": [f"sigma {s}" for s in study.noise_sigmas],
                    "masking": [f"{s} px" for s in study.mask_sizes], **eps}


# ---------------------------------------------------------------- one number per curve

def summaries(table: pd.DataFrame) -> pd.DataFrame:
    """Per curve (every column but strength, repeat, loss, accuracy): clean accuracy, normalised area, half strength.

    The curve is the mean accuracy over repeats at each strength; clean accuracy is its value at
    the smallest strength (0 in every preset). `auc` is the trapezoid area under the curve divided
    by the strength range and by the clean accuracy: the fraction of clean accuracy kept on average
    over the range (1 = unharmed; comparable between models of different clean accuracy).
    `half_strength` is the strength at which the curve first falls to half the clean accuracy
    (linear interpolation between the two strengths around it); NaN with `half_reached` False
    when it does not fall that far within the range.
    """
    by = [c for c in table.columns if c not in ("strength", "repeat", "loss", "accuracy")]
    curves = table.groupby(by + ["strength"], dropna=False)["accuracy"].mean().reset_index()
    rows = []
    for key, curve in curves.groupby(by, dropna=False, sort=False):
        s, a = curve["strength"].to_numpy(float), curve["accuracy"].to_numpy(float)
        rows.append(dict(zip(by, key if isinstance(key, tuple) else (key,)), **_curve_summary(s, a)))
    return pd.DataFrame(rows)


def run_summaries(summary: pd.DataFrame) -> pd.DataFrame:
    """`summaries` of replicated curves (a `replicate` column) as one row per curve of a run: clean accuracy,
    area and half strength the mean over its replicates, the half strength only where every replicate reached
    it (`half_reached` then True, else NaN and False)."""
    numbers = ("clean_accuracy", "auc", "half_strength", "half_reached")
    by = [c for c in summary.columns if c not in ("replicate", *numbers)]
    grouped = summary.groupby(by, dropna=False, sort=False)
    out = grouped[["clean_accuracy", "auc", "half_strength"]].mean().join(grouped.half_reached.all())
    out["half_strength"] = out.half_strength.where(out.half_reached)
    return out.reset_index()


def _curve_summary(s: np.ndarray, a: np.ndarray) -> dict[str, float | bool]:
    clean, span = a[0], s[-1] - s[0]
    area = float(np.sum((a[1:] + a[:-1]) / 2 * np.diff(s)))
    auc = area / (span * clean) if span > 0 and clean > 0 else float("nan")
    below = np.flatnonzero(a <= clean / 2)
    half = float("nan")
    if clean > 0 and len(below):
        j = below[0]  # >= 1, since a[0] = clean > clean / 2
        half = s[j - 1] + (clean / 2 - a[j - 1]) * (s[j] - s[j - 1]) / (a[j] - a[j - 1])
    return dict(clean_accuracy=clean, auc=auc, half_strength=half, half_reached=bool(np.isfinite(half)))


# ---------------------------------------------------------------- shared machinery

@torch.no_grad()
def _accumulate(model: nn.Module, xp: Tensor, yb: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
    with autocast(device):
        logits = model(xp).float()
    return F.cross_entropy(logits, yb, reduction="sum"), (logits.argmax(1) == yb).sum()


def _evaluate_perturbed(model: nn.Module, x: Tensor, y: Tensor, measure: str, perturb: Perturbation,
                        batch_size: int) -> pd.DataFrame:
    """Loss and accuracy of `model` on every (strength, repeat) that `perturb` makes of each batch."""
    _check_images(x, y)
    device = next(model.parameters()).device
    totals: dict[tuple[float, int], list[Tensor]] = {}
    with eval_mode(model):
        for i in range(0, len(y), batch_size):
            xb, yb = to_input(x[i:i + batch_size], device), y[i:i + batch_size].to(device)
            for strength, repeat, xp in perturb(xb, yb):
                loss, correct = _accumulate(model, xp, yb, device)
                acc = totals.setdefault((float(strength), repeat), [0, 0])
                acc[0], acc[1] = acc[0] + loss, acc[1] + correct
    rows = [dict(measure=measure, strength=s, repeat=r, loss=loss.item() / len(y), accuracy=correct.item() / len(y))
            for (s, r), (loss, correct) in totals.items()]
    return pd.DataFrame(rows, columns=COLUMNS)


def _clean(xb: Tensor, strengths: Sequence[float]) -> Iterator[tuple[float, int, Tensor]]:
    if any(s == 0 for s in strengths):
        yield 0.0, 0, xb


def _nonzero(strengths: Sequence[float]) -> list[float]:
    return [s for s in strengths if s != 0]


def _generator(model: nn.Module, seed: int) -> torch.Generator:
    return torch.Generator(device=next(model.parameters()).device).manual_seed(seed)


def _check_images(x: Tensor, y: Tensor) -> None:
    if x.dtype != torch.uint8 or x.ndim != 4 or len(x) != len(y):
        raise ValueError(f"expected uint8 images (N, 3, H, W) and N labels; got {x.dtype} {tuple(x.shape)} "
                         f"and {len(y)} labels")


def _check_numbers(name: str, values: Sequence[float]) -> None:
    if len(values) == 0 or any(not isinstance(v, (int, float)) or v < 0 for v in values):
        raise ValueError(f"{name}={list(values)!r}; expected a non-empty list of numbers >= 0")


def _check_positive(**values: float) -> None:
    for name, v in values.items():
        if not v > 0:
            raise ValueError(f"{name}={v!r}; expected a number > 0")
