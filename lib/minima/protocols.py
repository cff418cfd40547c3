"""Finetuning protocols, the distance travelled from the starting weights, epochs to a threshold."""
from __future__ import annotations

import math

import pandas as pd
import torch
from torch import nn

from minima.archs import STAGES, has_stages
from minima.models import batchnorm_names, head_name


def apply_protocol(model: nn.Module, protocol: str, frozen_stages: int = 0) -> nn.Module:
    """Freeze what the protocol keeps fixed: `full` nothing, `linear_probe` all but the head (any arch),
    `partial` the first `frozen_stages` stages of a ResNet (stem = conv1 + bn1, then layer1 ... layer4)."""
    if protocol not in ("full", "linear_probe", "partial"):
        raise ValueError(f"protocol={protocol!r}; expected full, linear_probe or partial")
    head = head_name(model) + "."
    if protocol == "partial":
        if not has_stages(model):
            raise ValueError(f"protocol 'partial' freezes ResNet stages; {type(model).__name__} has none "
                             "(valid for it: full, linear_probe)")
        if not 0 <= frozen_stages <= len(STAGES):
            raise ValueError(f"frozen_stages={frozen_stages}; expected 0 to {len(STAGES)}")
    for name, p in model.named_parameters():
        if protocol == "full":
            trainable = True
        elif protocol == "linear_probe":
            trainable = name.startswith(head)
        else:
            stage = name.split(".")[0]
            trainable = ("stem" if stage in ("conv1", "bn1") else stage) not in STAGES[:frozen_stages]
        p.requires_grad_(trainable)
    return model


class DistanceTracker:
    """Euclidean distance of the backbone's parameters (the head left out) from their starting
    values, over all of them and over the non-batchnorm ones, every `every` optimizer steps.

    A step hook for `train.fit`: it records on the device and syncs only when asked for the table.
    """

    def __init__(self, model: nn.Module, every: int, steps_per_epoch: int):
        self.every, self.steps_per_epoch = every, steps_per_epoch
        bn, head = batchnorm_names(model), head_name(model) + "."
        self.names = [n for n, _ in model.named_parameters() if not n.startswith(head)]
        params = dict(model.named_parameters())
        self.start = [params[n].detach().clone() for n in self.names]
        self.non_bn = torch.tensor([n not in bn for n in self.names], device=self.start[0].device)
        zero = torch.zeros((), device=self.start[0].device)
        self.steps, self.sq_all, self.sq_non_bn = [0], [zero], [zero]

    @torch.no_grad()
    def __call__(self, step: int, model: nn.Module) -> None:
        if step % self.every:
            return
        params = dict(model.named_parameters())
        diffs = torch._foreach_sub([params[n].detach() for n in self.names], self.start)
        sq = torch.stack(torch._foreach_norm(diffs)).pow(2)
        self.steps.append(step)
        self.sq_all.append(sq.sum())
        self.sq_non_bn.append(sq[self.non_bn].sum())

    def table(self) -> pd.DataFrame:
        """One row per record: step, epoch (fractional), distance_all, distance_non_bn."""
        return pd.DataFrame(dict(
            step=self.steps, epoch=[s / self.steps_per_epoch for s in self.steps],
            distance_all=torch.stack(self.sq_all).sqrt().cpu().tolist(),
            distance_non_bn=torch.stack(self.sq_non_bn).sqrt().cpu().tolist()))

    def state_dict(self) -> dict:
        return dict(steps=torch.tensor(self.steps), sq_all=torch.stack(self.sq_all).cpu(),
                    sq_non_bn=torch.stack(self.sq_non_bn).cpu())

    def load_state_dict(self, state: dict) -> None:
        device = self.start[0].device
        self.steps = state["steps"].tolist()
        self.sq_all = list(state["sq_all"].to(device).unbind())
        self.sq_non_bn = list(state["sq_non_bn"].to(device).unbind())


def epochs_to_threshold(history: pd.DataFrame, threshold: float, column: str = "train_accuracy") -> float:
    """The first epoch whose accuracy reaches `threshold`; NaN ("not reached") if none does."""
    hits = history.loc[history[column] >= threshold, "epoch"]
    return float(hits.iloc[0]) if len(hits) else math.nan
