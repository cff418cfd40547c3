"""What the benchmarks share: the model they measure."""
from __future__ import annotations

import torch
from torch import nn

from minima import data, models, pretraining, runstore
from minima.config import Study


def adam_checkpoint_or_fresh(study: Study, task: data.Task, device: torch.device) -> tuple[nn.Module, str]:
    """The study's finished adam seed-0 run, or fresh seed-0 weights when there is none; and which it is."""
    run = pretraining.pretrain_run(study, "adam", 0)
    if run.finished:
        return runstore.load_model(study, run, task.n_classes, device), f"run {run.name}"
    torch.manual_seed(0)
    model = models.model_for(study, task.n_classes).to(device, memory_format=torch.channels_last)
    return model, "fresh weights (no finished adam seed-0 run)"
