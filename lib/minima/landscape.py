"""Weight-space geometry between the pretraining minima: distances, linear slices, barriers, a plane."""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Mapping, Sequence

import pandas as pd
import torch
from torch import nn

from minima import data, executor, models, pretraining, runstore, store
from minima.config import BN_MODES, Study
from minima.evaluation import evaluate, pick_device, recompute_bn

Key = tuple[str, int]  # (method, seed) of a pretraining run
State = Mapping[str, torch.Tensor]

GROUPS = ("all", "non_bn", "bn")
LAYER_COLUMNS = ["method_a", "pretrain_seed_a", "method_b", "pretrain_seed_b", "layer", "group", "distance", "norm_a",
                 "norm_b", "relative", "parameters"]


# ---------------------------------------------------------------- distances

def _groups(model: nn.Module) -> dict[str, list[str]]:
    """Parameter names of each group; batchnorm is decided by module type (models.batchnorm_names)."""
    bn = models.batchnorm_names(model)
    names = [n for n, _ in model.named_parameters()]
    return {"all": names, "non_bn": [n for n in names if n not in bn], "bn": [n for n in names if n in bn]}


def distances(states: Mapping[Key, State], model: nn.Module) -> pd.DataFrame:
    """Euclidean distance ||a - b|| (square root of the sum of squares) between every ordered pair of runs.

    Groups: all learned parameters, non-batchnorm ones, batchnorm ones (the BN layers' weight and
    bias; no rows for an architecture without batchnorm). Running statistics are not counted in any group: they are estimates of activation
    moments, not optimised weights, and `num_batches_tracked` is an integer counter. `model` only
    supplies the parameter names and which of them are batchnorm. `relative_a` = distance / ||a||.
    """
    groups = {g: names for g, names in _groups(model).items() if names}  # no "bn" group without batchnorm
    flat = {k: {g: torch.cat([s[n].detach().double().flatten().cpu() for n in names])
                for g, names in groups.items()} for k, s in states.items()}
    rows = []
    for (ka, fa), (kb, fb) in itertools.product(flat.items(), repeat=2):
        for g in groups:
            d, na, nb = (fa[g] - fb[g]).norm().item(), fa[g].norm().item(), fb[g].norm().item()
            rows.append(dict(method_a=ka[0], pretrain_seed_a=ka[1], method_b=kb[0], pretrain_seed_b=kb[1], group=g,
                             distance=d, norm_a=na, norm_b=nb, relative_a=d / na, relative_b=d / nb,
                             parameters=len(fa[g])))
    return pd.DataFrame(rows)


def layer_distances(states: Mapping[Key, State], model: nn.Module) -> pd.DataFrame:
    """Per layer (module: weight and bias together) distance of every unordered pair of distinct runs."""
    groups = _groups(model)
    bn = set(groups["bn"])
    layers: dict[str, list[str]] = {}
    for n in groups["all"]:
        layers.setdefault(n.rpartition(".")[0], []).append(n)
    rows = []
    for (ka, sa), (kb, sb) in itertools.combinations(states.items(), 2):
        for layer, names in layers.items():
            a = torch.cat([sa[n].detach().double().flatten().cpu() for n in names])
            b = torch.cat([sb[n].detach().double().flatten().cpu() for n in names])
            d = (a - b).norm().item()
            rows.append(dict(method_a=ka[0], pretrain_seed_a=ka[1], method_b=kb[0], pretrain_seed_b=kb[1], layer=layer,
                             group="bn" if names[0] in bn else "non_bn", distance=d,
                             norm_a=a.norm().item(), norm_b=b.norm().item(),
                             relative=d / max(a.norm().item(), b.norm().item()), parameters=len(a)))
    return pd.DataFrame(rows, columns=LAYER_COLUMNS)  # one run: no pair, but a table that reads back


# ---------------------------------------------------------------- slices

def slice_points(steps: int, margin: float) -> list[float]:
    """`steps` evenly spaced t from about -margin to 1 + margin with t = 0 and t = 1 exactly on the grid.

    The spacing is 1/k for the whole number of intervals k in [0, 1] that brings the reached margin
    closest to `margin` (with 3 points and margin 0.25: t = 0, 0.5, 1).
    """
    if steps < 3 or margin < 0:
        raise ValueError(f"steps={steps}, margin={margin}; expected steps >= 3 and margin >= 0")
    options = [k for k in range(2, steps) if (steps - 1 - k) % 2 == 0]
    k = min(options, key=lambda k: (abs((steps - 1 - k) / 2 / k - margin), -k))
    m = (steps - 1 - k) // 2
    return [float(Fraction(i - m, k)) for i in range(steps)]


def _interpolated(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The tensors a slice moves: every parameter and every float buffer (BN running statistics)."""
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    return [(n, t) for n, t in tensors if t.is_floating_point()]


def _endpoints(model: nn.Module, *states: State) -> list[tuple[torch.Tensor, ...]]:
    """(model tensor, a copy of its value in each state) for every interpolated tensor, on the model's device.

    Copies, so that a state which shares storage with the model (its own state_dict) is not overwritten.
    """
    return [(t, *(s[n].to(t.device, t.dtype, copy=True) for s in states)) for n, t in _interpolated(model)]


def _check_modes(bn_modes: Sequence[str]) -> None:
    bad = [m for m in bn_modes if m not in BN_MODES]
    if bad or not bn_modes:
        raise ValueError(f"bn_modes={list(bn_modes)!r}; choose from {', '.join(BN_MODES)}")


@torch.no_grad()
def linear_slice(model: nn.Module, start: State, end: State, ts: Sequence[float],
                 splits: Mapping[str, tuple[torch.Tensor, torch.Tensor]], bn_modes: Sequence[str],
                 recompute_x: torch.Tensor | None = None, batch_size: int = 512) -> pd.DataFrame:
    """Loss and accuracy at (1 - t) start + t end for every t, split and batchnorm mode.

    The weights are written into `model` in place (one lerp per tensor and point) and the model's
    own state is restored at the end. Batchnorm modes: `interpolate` moves the running statistics
    with the weights, `keep` uses the start model's, `recompute` re-estimates them on `recompute_x`
    at every point. Rows: bn_mode, split, t, loss, accuracy.
    """
    _check_modes(bn_modes)
    if "recompute" in bn_modes and recompute_x is None:
        raise ValueError("bn_mode 'recompute' needs recompute_x (the images to re-estimate batchnorm on)")
    buffers = {id(b) for _, b in model.named_buffers()}
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    tensors = _endpoints(model, start, end)
    rows = []
    try:
        for t in ts:
            for p, a, b in tensors:
                if id(p) not in buffers:
                    p.copy_(a).lerp_(b, t)  # lerp is exact at t = 0 and t = 1
            for mode in bn_modes:
                for buf, a, b in tensors:
                    if id(buf) in buffers:
                        buf.copy_(a)
                        if mode == "interpolate":
                            buf.lerp_(b, t)
                if mode == "recompute":
                    recompute_bn(model, recompute_x)
                for split, (x, y) in splits.items():
                    rows.append(dict(bn_mode=mode, split=split, t=t, **evaluate(model, x, y, batch_size)))
    finally:
        model.load_state_dict(saved)
    return pd.DataFrame(rows)


def barriers(slices: pd.DataFrame) -> pd.DataFrame:
    """Per pair, split and batchnorm mode: the largest excess of the loss over the straight line
    between the two end losses, for t in [0, 1] (0 when the path never rises above that line).

    Also the largest accuracy drop below the line between the end accuracies, and where (t) the
    loss barrier peaks.
    """
    ids = [c for c in ("pair", "kind", "method_a", "pretrain_seed_a", "method_b", "pretrain_seed_b") if c in slices]
    rows = []
    for key, g in slices[(slices.t >= 0) & (slices.t <= 1)].groupby(ids + ["bn_mode", "split"], sort=False):
        g = g.sort_values("t")
        first, last = g.iloc[0], g.iloc[-1]
        if first.t != 0 or last.t != 1:
            raise ValueError(f"slice {key} lacks t = 0 or t = 1; barriers need both ends")
        excess = g.loss - ((1 - g.t) * first.loss + g.t * last.loss)
        drop = (1 - g.t) * first.accuracy + g.t * last.accuracy - g.accuracy
        rows.append(dict(zip(ids + ["bn_mode", "split"], key), barrier=excess.max(),
                         t_peak=g.t.iloc[excess.argmax()], loss_a=first.loss, loss_b=last.loss,
                         accuracy_drop=drop.max(), accuracy_a=first.accuracy, accuracy_b=last.accuracy))
    return pd.DataFrame(rows, columns=ids + ["bn_mode", "split", "barrier", "t_peak", "loss_a", "loss_b",
                                             "accuracy_drop", "accuracy_a", "accuracy_b"])


def modes_for(model: nn.Module, bn_modes: Sequence[str]) -> list[str]:
    """The batchnorm modes worth computing for `model`: all of them, or only the judging mode when it has no
    batchnorm (every mode then gives the same slice)."""
    return list(bn_modes) if models.batchnorm_names(model) else [judging_mode(bn_modes)]


def judging_mode(bn_modes: Sequence[str]) -> str:
    """The batchnorm mode verdicts are judged in: `recompute` (the weights alone) when computed, else the first."""
    return "recompute" if "recompute" in bn_modes else bn_modes[0]


# ---------------------------------------------------------------- the plane through three minima

def plane_basis(model: nn.Module, a: State, b: State, c: State) -> dict[str, float]:
    """Coordinates of three minima in the plane they span, with orthonormal directions over the
    learned parameters: u along b - a, v the part of c - a orthogonal to u (Gram-Schmidt).

    a sits at (0, 0), b at (|b - a|, 0), c at (cx, cy) with cy > 0.
    """
    names = [n for n, _ in model.named_parameters()]
    da = torch.cat([(b[n].double() - a[n].double()).flatten().cpu() for n in names])
    dc = torch.cat([(c[n].double() - a[n].double()).flatten().cpu() for n in names])
    bx = da.norm().item()
    if bx == 0:
        raise ValueError("the first two minima of the plane are the same weights: they span no plane")
    cx = (dc @ da).item() / bx
    cy = (dc - cx * da / bx).norm().item()
    if cy <= 1e-12 * dc.norm().item():
        raise ValueError("the three minima are (nearly) collinear: they span no plane")
    return dict(bx=bx, cx=cx, cy=cy)


def plane_axes(basis: Mapping[str, float], steps: int, margin: float) -> tuple[list[float], list[float]]:
    """`steps` grid values on each axis covering the three minima plus `margin` of the span each side."""
    lo_x, hi_x = min(0.0, basis["cx"]), max(basis["bx"], basis["cx"])
    lo_y, hi_y = 0.0, basis["cy"]
    pad_x, pad_y = margin * (hi_x - lo_x), margin * (hi_y - lo_y)
    xs = torch.linspace(lo_x - pad_x, hi_x + pad_x, steps, dtype=torch.float64).tolist()
    ys = torch.linspace(lo_y - pad_y, hi_y + pad_y, steps, dtype=torch.float64).tolist()
    return xs, ys


@torch.no_grad()
def plane(model: nn.Module, minima: Sequence[State], labels: Sequence[str], steps: int, margin: float,
          splits: Mapping[str, tuple[torch.Tensor, torch.Tensor]], bn_mode: str,
          recompute_x: torch.Tensor | None = None, batch_size: int = 512) -> pd.DataFrame:
    """Loss and accuracy on a steps x steps grid over the plane through three minima, plus the three
    minima themselves (rows with point = 'minimum' and their label), all through the same coordinates.

    The point (x, y) is a + alpha (b - a) + beta (c - a) with alpha, beta solving
    x u + y v = alpha (b - a) + beta (c - a); the running statistics follow the same alpha, beta
    (`interpolate`), stay at a's (`keep`) or are re-estimated on `recompute_x` (`recompute`).
    The model's own state is restored at the end.
    """
    _check_modes([bn_mode])
    if bn_mode == "recompute" and recompute_x is None:
        raise ValueError("bn_mode 'recompute' needs recompute_x (the images to re-estimate batchnorm on)")
    if len(minima) != 3 or len(labels) != 3:
        raise ValueError(f"a plane needs exactly three minima and labels; got {len(minima)} and {len(labels)}")
    basis = plane_basis(model, *minima)
    xs, ys = plane_axes(basis, steps, margin)
    points = [("grid", "", x, y) for y in ys for x in xs]
    points += [("minimum", lab, x, y) for lab, (x, y) in
               zip(labels, [(0.0, 0.0), (basis["bx"], 0.0), (basis["cx"], basis["cy"])])]
    buffers = {id(b) for _, b in model.named_buffers()}
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    tensors = [(t, a, b - a, c - a) for t, a, b, c in _endpoints(model, *minima)]
    rows = []
    try:
        for point, label, x, y in points:
            beta = y / basis["cy"]
            alpha = (x - beta * basis["cx"]) / basis["bx"]
            for t, a, db, dc in tensors:
                if id(t) in buffers and bn_mode != "interpolate":
                    t.copy_(a)
                else:
                    t.copy_(a).add_(db, alpha=alpha).add_(dc, alpha=beta)
            if bn_mode == "recompute":
                recompute_bn(model, recompute_x)
            for split, (xx, yy) in splits.items():
                rows.append(dict(point=point, label=label, x=x, y=y, alpha=alpha, beta=beta, bn_mode=bn_mode,
                                 split=split, **evaluate(model, xx, yy, batch_size)))
    finally:
        model.load_state_dict(saved)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- the study's tables

@dataclass
class Minima:
    """The study's finished pretraining runs, one working model, and the images to evaluate on."""

    model: nn.Module
    states: dict[Key, dict[str, torch.Tensor]]
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]]
    recompute_x: torch.Tensor


def load_minima(study: Study, keys: Sequence[Key] | None = None) -> Minima:
    """The runs `keys` (default: every method x seed, trained first if missing; given keys must be
    finished), a model to write weights into, the stratified train subset (eval_subset_per_class
    per class) and the test set, on the study's device.

    `recompute` mode re-estimates batchnorm on the same stratified train subset (cheaper than the
    full train set; the same images for every point). The test split is a stratified subset of
    the same size per class (the whole test set when it is no larger), to bound the cost of the
    hundreds of evaluations a slice makes.
    """
    task = data.load_task(study, "source")
    if keys is None:
        keys = pretraining.keys(study)
        if not all(pretraining.pretrain_run(study, *key).finished for key in keys):
            pretraining.pretrain_all(study)
    unfinished = [f"{m} seed {s}" for m, s in keys if not pretraining.pretrain_run(study, m, s).finished]
    if unfinished:  # a job on a worker: it must not start a batch of jobs of its own
        raise RuntimeError(f"pretraining runs not finished: {', '.join(unfinished)}; run pretraining.pretrain_all(study) first")
    device = pick_device(study.device)
    specs = {json.dumps(pretraining.spec(study, key), sort_keys=True) for key in keys}
    if len(specs) > 1:
        raise ValueError(f"runs {keys!r} have different architectures; weight space is shared only within one")
    def load(key: Key) -> nn.Module:
        return runstore.load_model(study, pretraining.pretrain_run(study, *key), task.n_classes, device)

    states = {key: load(key).state_dict() for key in keys}
    model = load(keys[0])  # its own tensors: the slices write weights into it, never into `states`
    keep = data.stratified_indices(task.y_train, study.eval_subset_per_class, study.seed)
    held = data.stratified_indices(task.y_test, study.eval_subset_per_class, study.seed)
    # on the device once: a slice evaluates these images hundreds of times
    splits = {"train": (task.x_train[keep].to(device), task.y_train[keep].to(device)),
              "test": (task.x_test[held].to(device), task.y_test[held].to(device))}
    return Minima(model, states, splits, splits["train"][0])


def arch_groups(study: Study) -> list[list[Key]]:
    """The study's runs by weight space (same architecture, width, head and preprocessing), in run order:
    distances, slices and planes join runs of one group only."""
    groups: dict[str, list[Key]] = {}
    for key in pretraining.keys(study):
        groups.setdefault(json.dumps(pretraining.spec(study, key), sort_keys=True), []).append(key)
    return list(groups.values())


def study_distances(study: Study, measure: Callable[[Mapping[Key, State], nn.Module], pd.DataFrame]) -> pd.DataFrame:
    """`measure` (distances or layer_distances) of the study's runs within each weight space, stacked."""
    pretraining.pretrain_all(study)
    frames = []
    for group in arch_groups(study):
        m = load_minima(study, group)
        frames.append(measure(m.states, m.model))
    return pd.concat(frames, ignore_index=True)


def method_seeds(group: Sequence[Key]) -> dict[str, list[int]]:
    """The seeds of each method of a group of runs, methods in run order."""
    seeds: dict[str, list[int]] = {}
    for m, s in group:
        seeds.setdefault(m, []).append(s)
    return seeds


def slice_pairs(study: Study) -> list[tuple[Key, Key]]:
    """Every pair of methods, and the first two seeds of each method, within each weight space.

    With two seeds or more every pair joins two different seeds (first to second), so pairs across
    methods differ from pairs within a method in the method alone: runs that share a seed share
    their initial weights and batch order (SWA even follows Adam's exact path until its threshold).
    """
    pairs = []
    for group in arch_groups(study):
        seeds = method_seeds(group)
        pairs += [((ma, seeds[ma][0]), (mb, seeds[mb][min(1, len(seeds[mb]) - 1)]))
                  for ma, mb in itertools.combinations(seeds, 2)]
        pairs += [((m, s[0]), (m, s[1])) for m, s in seeds.items() if len(s) > 1]
    return pairs


def pair_label(a: Key, b: Key) -> str:
    return f"{a[0]} {a[1]} -> {b[0]} {b[1]}"


def study_slices(study: Study) -> pd.DataFrame:
    """The slice of every pair in `slice_pairs`, for every BN mode of the study, on train subset and
    test; one job per pair through the study's executor."""
    pretraining.pretrain_all(study)
    jobs = [executor.Job(f"{a[0]}-{a[1]}--{b[0]}-{b[1]}", pair_slice, (a, b)) for a, b in slice_pairs(study)]
    cols = ["pair", "kind", "method_a", "pretrain_seed_a", "method_b", "pretrain_seed_b", "bn_mode", "split", "t", "loss", "accuracy"]
    if not jobs:  # one run (a sweep point with one seed): no pair to slice
        return pd.DataFrame(columns=cols)
    return pd.concat(executor.run(study, jobs, "slices"), ignore_index=True)[cols]


def pair_slice(study: Study, a: Key, b: Key) -> pd.DataFrame:
    """The slice from run `a` to run `b` in every BN mode of the study, labelled with the pair."""
    minima = load_minima(study, [a, b])
    part = linear_slice(minima.model, minima.states[a], minima.states[b],
                        slice_points(study.slice_steps, study.slice_margin), minima.splits,
                        modes_for(minima.model, study.bn_modes), minima.recompute_x)
    return part.assign(pair=pair_label(a, b), kind="within" if a[0] == b[0] else "across",
                       method_a=a[0], pretrain_seed_a=a[1], method_b=b[0], pretrain_seed_b=b[1])


PLANE_COLUMNS = ["point", "label", "x", "y", "alpha", "beta", "bn_mode", "split", "loss", "accuracy"]


def study_plane(study: Study) -> pd.DataFrame:
    """The plane through three methods' minima (`plane_keys`) in the study's first BN mode; no rows when
    no weight space has three distinct ones (`prose.no_plane_sentence` says why)."""
    pretraining.pretrain_all(study)
    keys = plane_keys(study)
    if not keys:
        return pd.DataFrame(columns=PLANE_COLUMNS)
    minima = load_minima(study, keys)
    return plane(minima.model, [minima.states[k] for k in keys], [k[0] for k in keys], study.plane_steps,
                 study.plane_margin, minima.splits, study.bn_modes[0], minima.recompute_x)[PLANE_COLUMNS]


def plane_keys(study: Study) -> list[Key]:
    """The plane's three finished runs: the first three methods of the first weight space that has three with
    distinct minima, the first two at their first seed, the third at its second seed when it has one (so that
    SWA, which follows Adam's path until its threshold, does not share Adam's seed). A method whose run holds
    the very weights of one chosen before (a zoo's noisy Adam at noise_sigma 0 is its Adam, bit for bit) is
    passed over: two identical minima span no plane. [] when no weight space has three."""
    for group in arch_groups(study):
        seeds = method_seeds(group)
        if len(seeds) < 3:
            continue
        chosen: dict[Key, dict[str, torch.Tensor]] = {}
        for m, s in seeds.items():
            key = (m, s[0] if len(chosen) < 2 else s[min(1, len(s) - 1)])
            state = store.load_tensors(pretraining.pretrain_run(study, *key).weights)
            if not any(_identical(state, other) for other in chosen.values()):
                chosen[key] = state
            if len(chosen) == 3:
                return list(chosen)
    return []


def _identical(a: State, b: State) -> bool:
    """Whether two stored states are the same tensors, bit for bit."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

