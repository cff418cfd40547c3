"""Pretraining methods, each a small piece plugged into the one training loop."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import SWALR, AveragedModel

from minima.config import Study
from minima.data import Task
from minima.evaluation import recompute_bn
from minima.train import Method, TrainSpec


class NoisyAdam(Method):
    """Adam on images corrupted by fresh additive Gaussian noise every time they are shown."""

    name = "noisy_adam"
    clean_train_metrics = True

    def __init__(self, sigma: float):
        self.sigma = sigma

    def corrupt(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (x + self.sigma * noise).clamp_(0, 1)


class SWA(Method):
    """Adam until train accuracy reaches `threshold`, then SWA: a linear anneal to a constant
    learning rate, weights averaged every `every` steps; batchnorm recomputed at the end.

    If the threshold is not reached within the spec's epochs, the SWA phase starts anyway
    (the history's `phase` column and `swa_start_epoch` say when it did).
    """

    name = "swa"

    def __init__(self, threshold: float, swa_lr: float, anneal_epochs: int, swa_epochs: int, every: int):
        self.threshold, self.swa_lr, self.every = threshold, swa_lr, every
        self.anneal_epochs, self.swa_epochs = anneal_epochs, swa_epochs
        self.start_epoch: int | None = None  # first epoch of the SWA phase
        self.steps_in_phase = 0
        self.averaged: AveragedModel | None = None
        self.swalr: SWALR | None = None

    def setup(self, model: nn.Module, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> None:
        self.model, self.optimizer, self.steps_per_epoch = model, optimizer, steps_per_epoch

    def _start_phase(self) -> None:
        # use_buffers=False: parameters are averaged; batchnorm statistics are recomputed at the end
        self.averaged = AveragedModel(self.model, use_buffers=False)
        self.swalr = SWALR(self.optimizer, swa_lr=self.swa_lr, anneal_strategy="linear",
                           anneal_epochs=self.anneal_epochs * self.steps_per_epoch)

    def scheduler(self) -> Any | None:
        return self.swalr

    def after_step(self, model: nn.Module, step: int) -> None:
        if self.averaged is None:
            return
        self.steps_in_phase += 1
        annealed = self.steps_in_phase > self.anneal_epochs * self.steps_per_epoch
        if annealed and self.steps_in_phase % self.every == 0:
            self.averaged.update_parameters(model)

    def after_epoch(self, model: nn.Module, row: dict[str, Any]) -> None:
        row["phase"] = "adam" if self.start_epoch is None else "swa"
        if self.start_epoch is None and row["train_acc"] >= self.threshold:
            self.start_epoch = row["epoch"] + 1
            self._start_phase()

    def is_done(self, epochs_done: int, spec: TrainSpec) -> bool:
        if self.start_epoch is None and epochs_done >= spec.epochs:
            self.start_epoch = epochs_done + 1
            self._start_phase()
        return self.start_epoch is not None and epochs_done >= self.start_epoch - 1 + self.swa_epochs

    def finish(self, model: nn.Module, task: Task) -> nn.Module:
        if self.averaged is None or int(self.averaged.n_averaged) == 0:
            raise RuntimeError("SWA averaged no weights: make swa_epochs longer than swa_anneal_epochs "
                               "or swa_every smaller than the steps of an epoch")
        final = self.averaged.module
        return recompute_bn(final, task.x_train)

    def state_dict(self) -> dict[str, Any]:
        if self.averaged is None:
            return dict(start_epoch=-1)
        return dict(start_epoch=self.start_epoch, steps_in_phase=self.steps_in_phase,
                    averaged=self.averaged.state_dict(), swalr=self.swalr.state_dict())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("start_epoch", -1) == -1:
            return
        self.start_epoch, self.steps_in_phase = state["start_epoch"], state["steps_in_phase"]
        self._start_phase()
        self.averaged.load_state_dict(state["averaged"])
        self.swalr.load_state_dict(state["swalr"])


def make_method(name: str, study: Study) -> Method:
    """The pretraining method `name` with the study's settings."""
    if name == "adam":
        return Method()
    if name == "noisy_adam":
        return NoisyAdam(study.noise_sigma)
    if name == "swa":
        return SWA(study.swa_threshold, study.swa_lr, study.swa_anneal_epochs, study.swa_epochs, study.swa_every)
    raise ValueError(f"method={name!r}; expected one of adam, noisy_adam, swa")


METHOD_KEYS = {"adam": (), "noisy_adam": ("noise_sigma",),
               "swa": ("swa_threshold", "swa_lr", "swa_anneal_epochs", "swa_epochs", "swa_every")}
