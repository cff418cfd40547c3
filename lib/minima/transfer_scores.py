"""Transferability scores of every pretraining run: one forward pass over the target training set.

The scores (`minima.transferability`) are the field's baseline for "which checkpoint will finetune best",
computed without finetuning: every property of a minimum (robustness, flatness) has to beat them to be
worth measuring.
"""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch
from torch import nn

from minima import data, models, pretraining, runstore, transferability
from minima.config import Study
from minima.evaluation import eval_mode, pick_device, to_input

SCORES = ("logme", "leep", "nce", "h_score", "sfda")  # higher predicts a better start, for every one
COLUMNS = ["run", "method", "pretrain_seed", *SCORES, "seconds"]
# what a run's scores depend on beyond the run itself: the target training set
KEYS = ("seed", "target", "image_size", "source_classes", "target_labels", "target_train_per_class", "datasets_dir")


def features_and_outputs(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """The penultimate features (the classifier's inputs) and the source head's softmax outputs of uint8 images."""
    head = models.head(model)
    captured: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0].detach()))
    outputs = []
    device = next(model.parameters()).device
    try:
        with eval_mode(model), torch.no_grad():
            for i in range(0, len(x), batch_size):
                outputs.append(torch.softmax(model(to_input(x[i:i + batch_size], device)).float(), 1))
    finally:
        hook.remove()
    return torch.cat(captured).float().cpu().numpy(), torch.cat(outputs).cpu().numpy()


def scores(features: np.ndarray, probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Every score of one checkpoint from its features and source outputs on the target training set."""
    return dict(logme=transferability.logme(features, labels), leep=transferability.leep(probabilities, labels),
                nce=transferability.nce(probabilities.argmax(1), labels),
                h_score=transferability.h_score(features, labels), sfda=transferability.sfda(features, labels))


def evaluate_study(study: Study) -> pd.DataFrame:
    """The scores of every pretraining run; one job per run through the study's executor."""
    return pretraining.each_run(study, measure_run, "transferability", COLUMNS, on_source=False)


def measure_run(study: Study, method: str, seed: int) -> pd.DataFrame:
    """The scores of one finished pretraining run, stored in its folder for the target's keys."""
    run = pretraining.pretrain_run(study, method, seed)
    return run.measured("transferability", study.fingerprint(*KEYS), lambda: _measure_run(study, run, method, seed))


def _measure_run(study: Study, run: runstore.Run, method: str, seed: int) -> pd.DataFrame:
    start = time.perf_counter()
    target = data.load_task(study, "target")
    model = runstore.load_model(study, run, study.n_classes("source"), pick_device(study.device))
    features, outputs = features_and_outputs(model, target.x_train)
    row = scores(features, outputs, target.y_train.numpy())
    return pd.DataFrame([dict(run=run.name, method=method, pretrain_seed=seed, **row,
                              seconds=time.perf_counter() - start)])[COLUMNS]
