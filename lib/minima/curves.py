"""Curves between two minima: a trained quadratic Bezier curve or one-bend chain (Garipov et al. 2018) and
the report's path traced by optimisation, evaluated with batchnorm re-estimated at every point, and their
barriers beside the straight line's."""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from minima import data, executor, landscape, pretraining
from minima.config import Study
from minima.evaluation import autocast, evaluate, recompute_bn, to_input
from minima.landscape import Key, State

Weights = dict[str, torch.Tensor]  # parameter name -> tensor: a point of weight space
# the config keys the curve table depends on (with the pretraining keys)
KEYS = ("eval_subset_per_class", "batch_size", "curve_kinds", "curve_epochs", "curve_lr", "curve_points",
        "curve_distance_weight")
BN_MODE = "recompute"  # every point of every path (the line too) is judged with its own batchnorm statistics
NO_PAIRS = "No curves between minima: they join the pairs of the slices, and this study has none."


# ---------------------------------------------------------------- the curves

def bezier(a: torch.Tensor, theta: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """(1 - t)^2 a + 2 t (1 - t) theta + t^2 b: exactly a at t = 0 and exactly b at t = 1 (the other terms are 0)."""
    return (1 - t) ** 2 * a + 2 * t * (1 - t) * theta + t ** 2 * b


def chain(a: torch.Tensor, theta: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """The polygonal chain a -> theta -> b with its bend at t = 0.5 (lerp: exact at both ends)."""
    return torch.lerp(a, theta, 2 * t) if t < 0.5 else torch.lerp(theta, b, 2 * t - 1)


CURVES: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]] = dict(
    bezier=bezier, chain=chain)


def parameters(model: nn.Module, state: State) -> Weights:
    """The learned parameters of `state` (running statistics are not on a curve: they are re-estimated)."""
    return {n: state[n].detach() for n, _ in model.named_parameters()}


def on_curve(kind: str, a: Weights, theta: Weights, b: Weights, t: float) -> Weights:
    """The point at `t` of the `kind` curve from a to b through the bend theta."""
    return {n: CURVES[kind](a[n], theta[n], b[n], t) for n in a}


def _batches(n: int, batch_size: int, epochs: int, seed: int) -> Iterator[tuple[int, torch.Tensor]]:
    """(step, indices) of `epochs` shuffled passes over n images in batches of min(batch_size, n), the last
    partial batch dropped, as train.fit does; from a CPU generator, so no step waits for a device."""
    g = torch.Generator().manual_seed(seed)
    batch = min(batch_size, n)
    step = 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=g)
        for i in range(n // batch):
            yield step, order[i * batch:(i + 1) * batch]
            step += 1


def _loss(model: nn.Module, weights: Weights, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the model with `weights` on a batch, batchnorm in train mode (batch statistics)."""
    with autocast(x.device):
        logits = functional_call(model, weights, (to_input(x),)).float()
    return F.cross_entropy(logits, y)


def fit_bend(model: nn.Module, kind: str, a: Weights, b: Weights, x: torch.Tensor, y: torch.Tensor,
             epochs: int, batch_size: int, lr: float, seed: int) -> Weights:
    """The bend theta of the `kind` curve from a to b, started at the midpoint (a + b) / 2 and trained with
    Adam to minimise the loss along the curve: one t ~ U(0, 1) per minibatch (Garipov et al. 2018).

    The model only lends its structure: its own tensors are untouched, except the batchnorm running
    statistics, which train-mode forward passes update and which are restored at the end.
    """
    if kind not in CURVES:
        raise ValueError(f"kind={kind!r}; a trained curve is one of {', '.join(CURVES)}")
    theta = {n: torch.lerp(a[n], b[n], 0.5).requires_grad_(True) for n in a}
    optimizer = torch.optim.Adam(theta.values(), lr=lr)
    ts = torch.rand(epochs * (len(y) // min(batch_size, len(y))), generator=torch.Generator().manual_seed(seed + 1))
    with _training(model):
        for step, idx in _batches(len(y), batch_size, epochs, seed):
            idx = idx.to(x.device)
            loss = _loss(model, on_curve(kind, a, theta, b, ts[step].item()), x[idx], y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return {n: v.detach() for n, v in theta.items()}


@contextmanager
def _training(model: nn.Module) -> Iterator[nn.Module]:
    """The model in train mode for a block (batchnorm from each batch), its mode and buffers restored after."""
    saved = {n: v.clone() for n, v in model.named_buffers()}
    was_training = model.training
    model.train()
    try:
        yield model
    finally:
        model.train(was_training)
        with torch.no_grad():
            for n, v in model.named_buffers():
                v.copy_(saved[n])


def trace_path(model: nn.Module, a: Weights, b: Weights, x: torch.Tensor, y: torch.Tensor, epochs: int,
               batch_size: int, lr: float, weight: float, nodes: int, seed: int) -> list[Weights]:
    """The report's path: from a, Adam on loss + weight * ||w - b|| (Euclidean, over every learned
    parameter), its iterates at `nodes` evenly spaced steps (the first is a itself, the last the final
    iterate), then b exactly, closing the path with a straight segment.

    The distance term pulls with a constant force `weight` (nats per weight unit) towards b, where the loss
    gradient vanishes, so the iterates end near b when `weight` exceeds the loss gradients on the way.
    """
    if nodes < 2:
        raise ValueError(f"nodes={nodes}; the path needs at least its start and its final iterate")
    steps = epochs * (len(y) // min(batch_size, len(y)))
    if steps < nodes - 1:
        raise ValueError(f"{steps} optimisation steps cannot give {nodes} distinct nodes; raise curve_epochs "
                         "or lower curve_points")
    keep = {k * steps // (nodes - 1) for k in range(1, nodes)}  # distinct: steps >= nodes - 1
    w = {n: v.clone().requires_grad_(True) for n, v in a.items()}
    optimizer = torch.optim.Adam(w.values(), lr=lr)
    path = [{n: v.clone() for n, v in a.items()}]
    with _training(model):
        for step, idx in _batches(len(y), batch_size, epochs, seed):
            idx = idx.to(x.device)
            distance = torch.sqrt(sum(((w[n] - b[n]) ** 2).sum() for n in w))
            loss = _loss(model, w, x[idx], y[idx]) + weight * distance
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step + 1 in keep:
                path.append({n: v.detach().clone() for n, v in w.items()})
    return path + [{n: v.clone() for n, v in b.items()}]


# ---------------------------------------------------------------- evaluation along a path

def _flat(weights: Weights) -> torch.Tensor:
    return torch.cat([v.detach().double().flatten().cpu() for v in weights.values()])


def arc_positions(points: Sequence[Weights]) -> list[float]:
    """t of each point by the path's length (Euclidean, through the points in order): 0 at the first, 1 at the last."""
    flat = [_flat(p) for p in points]
    steps = [0.0] + [(q - p).norm().item() for p, q in zip(flat, flat[1:])]
    total = sum(steps)
    if total == 0:
        raise ValueError("the path has length 0: its ends are the same weights")
    cumulative = torch.tensor(steps, dtype=torch.float64).cumsum(0)
    return [*(cumulative[:-1] / total).tolist(), 1.0]


@torch.no_grad()
def evaluate_path(model: nn.Module, points: Iterable[tuple[float, Weights]], a: Weights, b: Weights,
                  splits: Mapping[str, tuple[torch.Tensor, torch.Tensor]], recompute_x: torch.Tensor,
                  batch_size: int = 512) -> pd.DataFrame:
    """Loss and accuracy at each (t, weights), written into `model` with its batchnorm statistics re-estimated
    on `recompute_x` (evaluation.recompute_bn, as the slices' recompute mode), and where the point lies:
    x its coordinate along b - a, y its distance from the line through a and b, arc the length of the
    path so far (all in weight units). The model's own state is restored at the end.

    For a Bezier curve or a chain, (x, y) are exact coordinates in the plane of a, b and the bend.
    """
    params = dict(model.named_parameters())
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    origin = _flat(a)
    u = _flat(b) - origin
    u /= u.norm()
    rows, arc, last = [], 0.0, None
    try:
        for t, weights in points:
            for n, v in weights.items():
                params[n].copy_(v)
            recompute_bn(model, recompute_x)
            offset = _flat(weights) - origin
            along = (offset @ u).item()
            arc += 0.0 if last is None else (offset - last).norm().item()
            last = offset
            where = dict(t=t, x=along, y=(offset - along * u).norm().item(), arc=arc)
            for split, (xs, ys) in splits.items():
                rows.append(dict(split=split, **where, **evaluate(model, xs, ys, batch_size)))
    finally:
        model.load_state_dict(saved)
    return pd.DataFrame(rows)


def grid(points: int) -> list[float]:
    """`points` evenly spaced t from 0 to 1, both ends exactly."""
    if points < 3:
        raise ValueError(f"points={points}; a path needs at least 3 (its ends and one point between)")
    return [i / (points - 1) for i in range(points)]


# ---------------------------------------------------------------- one pair, every path

def pair_paths(model: nn.Module, a: Weights, b: Weights, train: tuple[torch.Tensor, torch.Tensor],
               splits: Mapping[str, tuple[torch.Tensor, torch.Tensor]], recompute_x: torch.Tensor,
               kinds: Sequence[str], epochs: int, batch_size: int, lr: float, points: int,
               distance_weight: float, seed: int) -> pd.DataFrame:
    """The line and every path of `kinds` (bezier, chain: trained curves; report: the optimised path) from a
    to b, each evaluated at `points` t (the report's path at its nodes, t by length). Rows: path, point
    ('curve', or 'bend' for a trained curve's bend, t = NaN), split, t, x, y, arc, loss, accuracy,
    fit_seconds (the time spent finding the path)."""
    bad = [k for k in kinds if k not in (*CURVES, "report")]
    if bad or not kinds:
        raise ValueError(f"kinds={list(kinds)!r}; choose from {', '.join((*CURVES, 'report'))}")
    ts = grid(points)
    x, y = train
    frames = [evaluate_path(model, ((t, {n: torch.lerp(a[n], b[n], t) for n in a}) for t in ts), a, b, splits,
                            recompute_x).assign(path="line", point="curve", fit_seconds=0.0)]
    for kind in kinds:
        start = time.perf_counter()
        if kind == "report":
            nodes = trace_path(model, a, b, x, y, epochs, batch_size, lr, distance_weight, points - 1, seed)
            seconds = time.perf_counter() - start
            frames.append(evaluate_path(model, zip(arc_positions(nodes), nodes), a, b, splits, recompute_x)
                          .assign(path=kind, point="curve", fit_seconds=seconds))
            continue
        theta = fit_bend(model, kind, a, b, x, y, epochs, batch_size, lr, seed)
        seconds = time.perf_counter() - start
        along = ((t, on_curve(kind, a, theta, b, t)) for t in ts)
        frames.append(evaluate_path(model, along, a, b, splits, recompute_x)
                      .assign(path=kind, point="curve", fit_seconds=seconds))
        frames.append(evaluate_path(model, [(float("nan"), theta)], a, b, splits, recompute_x)
                      .assign(path=kind, point="bend", fit_seconds=seconds))
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------- the study's table

COLUMNS = ["pair", "kind", "method_a", "pretrain_seed_a", "method_b", "pretrain_seed_b", "path", "point", "bn_mode",
           "split", "t", "x", "y", "arc", "loss", "accuracy", "fit_seconds"]


def study_curves(study: Study) -> pd.DataFrame:
    """The paths of every pair of `landscape.slice_pairs` (runs of one architecture), one job per pair
    through the study's executor."""
    pretraining.pretrain_all(study)
    jobs = [executor.Job(f"{a[0]}-{a[1]}--{b[0]}-{b[1]}", pair_curves, (a, b)) for a, b in landscape.slice_pairs(study)]
    if not jobs:  # one run: no pair
        return pd.DataFrame(columns=COLUMNS)
    return pd.concat(executor.run(study, jobs, "curves"), ignore_index=True)[COLUMNS]


def pair_curves(study: Study, a: Key, b: Key) -> pd.DataFrame:
    """The line and the study's curves from run `a` to run `b`, trained on the source train set and evaluated
    on the slices' subsets, labelled with the pair."""
    minima = landscape.load_minima(study, [a, b])
    task = data.load_task(study, "source")
    device = minima.recompute_x.device
    part = pair_paths(minima.model, parameters(minima.model, minima.states[a]),
                      parameters(minima.model, minima.states[b]),
                      (task.x_train.to(device), task.y_train.to(device)), minima.splits, minima.recompute_x,
                      study.curve_kinds, study.curve_epochs, study.batch_size, study.curve_lr, study.curve_points,
                      study.curve_distance_weight, study.seed)
    return part.assign(pair=landscape.pair_label(a, b), kind="within" if a[0] == b[0] else "across",
                       method_a=a[0], pretrain_seed_a=a[1], method_b=b[0], pretrain_seed_b=b[1], bn_mode=BN_MODE)


# ---------------------------------------------------------------- barriers and verdicts

def barriers(curves: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """landscape.barriers of every path of every pair (the line's definition, for every path), with its
    length relative to the line's and `connected`: barrier < threshold (nats)."""
    along = curves[curves.point == "curve"]
    if along.empty:
        raise ValueError("the curves table has no pair: curves need two runs of one architecture")
    parts = []
    for path, g in along.groupby("path", sort=False):
        length = g.groupby(["pair", "split"]).arc.max().rename("length")
        bars = landscape.barriers(g).join(length, on=["pair", "split"])
        parts.append(bars.assign(path=path))
    bars = pd.concat(parts, ignore_index=True)
    line = bars[bars.path == "line"].set_index(["pair", "split"]).length
    bars["relative_length"] = bars.length / line.loc[list(zip(bars.pair, bars.split))].to_numpy()
    return bars.assign(threshold=threshold, connected=bars.barrier < threshold)


def beside(bars: pd.DataFrame, split: str = "train") -> pd.DataFrame:
    """One row per pair: each path's barrier on `split` side by side, and the verdict on the pair."""
    part = bars[bars.split == split]
    wide = part.pivot_table(index=["kind", "pair"], columns="path", values="barrier", sort=False)
    connected = part.pivot_table(index=["kind", "pair"], columns="path", values="connected", sort=False).astype(bool)
    curves = [p for p in wide.columns if p != "line"]
    threshold = part.threshold.iloc[0]

    def verdict(row: pd.Series) -> str:
        found = [p for p in curves if row[p]]
        if row["line"]:
            return "linearly connected"
        if found:
            return f"connected by a low-loss curve ({', '.join(found)}), not by the line"
        return f"no path tried stays under {threshold:g} nats"

    return wide.assign(verdict=connected.apply(verdict, axis=1)).reset_index()

