"""What the benchmarks share: their command line and the model they measure."""
from __future__ import annotations

import argparse
import time
from typing import Any, Callable

import torch
from torch import nn

from minima import data, models, pretraining, runstore
from minima.config import Study, parse_overrides


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Seconds `fn` takes (the GPU's queue drained before the clock stops) and what it returns."""
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def parse_study(parser: argparse.ArgumentParser) -> tuple[argparse.Namespace, Study]:
    """The benchmark's arguments plus `--preset` and key=value overrides, and the study they describe."""
    parser.add_argument("--preset", default="default")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args()
    return args, Study.load(args.preset, **parse_overrides(args.overrides))


def adam_checkpoint_or_fresh(study: Study, task: data.Task, device: torch.device) -> tuple[nn.Module, str]:
    """The study's finished adam seed-0 run, or fresh seed-0 weights when there is none; and which it is."""
    run = pretraining.pretrain_run(study, "adam", 0)
    if run.finished:
        return runstore.load_model(study, run, task.n_classes, device), f"run {run.name}"
    torch.manual_seed(0)
    model = models.model_for(study, task.n_classes).to(device, memory_format=torch.channels_last)
    return model, "fresh weights (no finished adam seed-0 run)"
