"""A linear path between two minima: our `landscape.linear_slice` against the `loss_landscapes` package.

    .venv/bin/python benchmarks/landscape.py [--preset default] [--steps 12] [--repeats 3] [key=value ...]

Both evaluate the same model (the study's first two methods at the first seed, start -> end) on
the same images (the stratified train subset) at t = 1/steps, 2/steps, ..., 1. Three things the
package does differently are handled so that both compute the same numbers:
- it never evaluates t = 0 (its first point is start + direction): ours is given the same t;
- it moves the parameters of the model it is given: it gets a deep copy (`deepcopy_model=True`);
- it does not set eval mode: the copy is put in eval mode first. It moves parameters only, so
  the batchnorm running statistics stay the start model's: ours runs in `keep` mode.
The package's metric gets the images already as float (one batch); ours converts uint8 per batch.
Each path is timed `repeats` times, alternating, after a warm-up; the median is reported.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F
from loss_landscapes import linear_interpolation
from loss_landscapes.metrics import Loss

from common import parse_study
from minima import landscape
from minima.evaluation import to_input


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    args, study = parse_study(parser)
    minima = landscape.load_minima(study)
    a, b = landscape.slice_pairs(study)[0]
    x, y = minima.splits["train"]
    device = next(minima.model.parameters()).device
    start, end = copy.deepcopy(minima.model), copy.deepcopy(minima.model)
    start.load_state_dict(minima.states[a])
    end.load_state_dict(minima.states[b])
    start.eval()
    end.eval()
    metric = Loss(F.cross_entropy, to_input(x, device), y.to(device))
    ts = [i / args.steps for i in range(1, args.steps + 1)]

    def ours() -> list[float]:
        rows = landscape.linear_slice(minima.model, minima.states[a], minima.states[b], ts,
                                      {"train": (x, y)}, ["keep"])
        return rows.loss.tolist()

    def theirs() -> list[float]:
        with torch.no_grad():
            return linear_interpolation(start, end, metric, steps=args.steps, deepcopy_model=True).tolist()

    ours(), theirs()  # warm-up
    times = {"ours": [], "loss_landscapes": []}
    for _ in range(args.repeats):
        for name, path in (("ours", ours), ("loss_landscapes", theirs)):
            t0 = time.perf_counter()
            losses = path()
            times[name].append(time.perf_counter() - t0)
            if name == "ours":
                our_losses = losses
            else:
                their_losses = losses
    gap = max(abs(p - q) / max(abs(q), 1e-12) for p, q in zip(our_losses, their_losses))
    print(f"{study.name}: {a[0]} seed {a[1]} -> {b[0]} seed {b[1]}, {len(ts)} points, {len(y)} images "
          f"({study.image_size} px), device {device}, {torch.get_num_threads()} threads")
    print(f"{'t':>6} {'ours':>12} {'loss_landscapes':>16}")
    for t, p, q in zip(ts, our_losses, their_losses):
        print(f"{t:6.3f} {p:12.6f} {q:16.6f}")
    print(f"largest relative difference of the losses: {gap:.2e}")
    assert gap < 1e-4, "the two paths disagree"
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"wall time (median of {args.repeats}): ours {med['ours']:.2f} s, loss_landscapes "
          f"{med['loss_landscapes']:.2f} s, ratio ours / theirs = {med['ours'] / med['loss_landscapes']:.2f}")


if __name__ == "__main__":
    main()
