"""The one training loop. Pretraining methods (minima.methods) and finetuning protocols plug into it."""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch
from torch import nn

from minima import store
from minima.data import Task
from minima.evaluation import evaluate, to_input
from minima.methods import Method

VERBOSE = "MINIMA_VERBOSE"  # set (python -m minima run --verbose): every run's log lines reach the terminal too


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass(frozen=True)
class TrainSpec:
    """The loop's hyper-parameters; `label` names the run in messages ("swa seed 1")."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    schedule: str = "constant"
    seed: int = 0
    label: str = "run"
    compile: bool = False  # torch.compile the training forward pass (evaluation stays eager)


class Checkpoint:
    """Where a run saves after every epoch and resumes from (subclasses may guard or log saves)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def load(self) -> dict[str, Any] | None:
        return store.load_checkpoint(self.path) if self.path.is_file() else None

    def save(self, state: dict[str, Any]) -> None:
        store.save_checkpoint(self.path, state)


def epoch_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    """The random stream of one epoch (order and noise): a resumed run draws the same numbers."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + epoch)


def fit(model: nn.Module, task: Task, spec: TrainSpec, method: Method, *,
        checkpoint: Path | Checkpoint | None = None,
        step_hook: Callable[[int, nn.Module], None] | None = None) -> tuple[nn.Module, pd.DataFrame]:
    """Train `model` on `task` until `method` is done; returns the final model and one row per epoch.

    Only parameters with requires_grad train; a batchnorm layer whose parameters are all frozen
    stays in eval mode, so its running statistics stay frozen too (linear probe, partial).
    Each step is `method.step` (Adam's: forward, cross-entropy, backward, optimizer step); the epoch's
    train loss and accuracy average the loss and logits it returns.
    With `checkpoint`, the run saves after every epoch and resumes from there, and logs one line per epoch
    (and its resumes) to log.txt beside it (`log`); without, the lines reach the terminal only if verbose.
    `step_hook(step, model)` runs after every optimizer step (e.g. to record distances); if it
    has `state_dict`/`load_state_dict`, its state is checkpointed with the run.
    """
    if checkpoint is not None and not isinstance(checkpoint, Checkpoint):
        checkpoint = Checkpoint(checkpoint)
    folder = checkpoint.path.parent if checkpoint is not None else None
    device = next(model.parameters()).device
    # the compiled wrapper shares the model's parameters and buffers; only training steps go through it
    net = torch.compile(model) if spec.compile else model
    x_train, y_train = task.x_train.to(device), task.y_train.to(device)
    n = len(y_train)
    batch = min(spec.batch_size, n)
    steps_per_epoch = n // batch
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=spec.lr, weight_decay=spec.weight_decay, fused=True)
    schedule = _schedule(optimizer, spec, steps_per_epoch)
    method.setup(model, optimizer, steps_per_epoch)
    history: list[dict[str, Any]] = []
    state = checkpoint.load() if checkpoint is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if schedule is not None:
            schedule.load_state_dict(state["schedule"])
        method.load_state_dict(state["method"])
        if hasattr(step_hook, "load_state_dict"):
            step_hook.load_state_dict(state["hook"])
        history = list(state["history"])
        log(f"{spec.label}: resuming after epoch {len(history)}", folder)

    while not method.is_done(len(history), spec.epochs):
        epoch = len(history) + 1
        start = time.perf_counter()
        g = epoch_generator(spec.seed, epoch, device)
        order = torch.randperm(n, device=device, generator=g)
        train_mode(model)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        for i in range(steps_per_epoch):
            idx = order[i * batch:(i + 1) * batch]
            x, y = method.corrupt(to_input(x_train[idx], device), g), y_train[idx]
            loss, logits = method.step(net, x, y, optimizer, g)
            step = (epoch - 1) * steps_per_epoch + i + 1
            active = method.scheduler() or schedule
            if active is not None:
                active.step()
            method.after_step(model, step)
            if step_hook is not None:
                step_hook(step, model)
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
        seen = steps_per_epoch * batch
        row = dict(epoch=epoch, lr=optimizer.param_groups[0]["lr"],
                   train_loss=loss_sum.item() / seen, train_accuracy=correct.item() / seen)
        if not math.isfinite(row["train_loss"]):
            raise TrainingDiverged(f"{spec.label}: the training loss became {row['train_loss']} in epoch "
                                   f"{epoch}; runs already finished are kept")
        if method.clean_train_metrics:
            clean = evaluate(model, task.x_train, task.y_train)
            row.update(clean_train_loss=clean["loss"], clean_train_accuracy=clean["accuracy"])
        test = evaluate(model, task.x_test, task.y_test)
        row.update(test_loss=test["loss"], test_accuracy=test["accuracy"])
        method.after_epoch(model, row)
        row["seconds"] = time.perf_counter() - start
        history.append(row)
        log(_epoch_line(spec.label, row), folder)
        if checkpoint is not None:
            checkpoint.save(dict(
                model=model.state_dict(), optimizer=optimizer.state_dict(),
                schedule=schedule.state_dict() if schedule is not None else {},
                method=method.state_dict(), history=history,
                hook=step_hook.state_dict() if hasattr(step_hook, "state_dict") else {}))
    return method.finish(model, task.x_train), pd.DataFrame(history)


def log(line: str, folder: Path | None = None) -> None:
    """One line of a run's log: appended to log.txt in the run's `folder` (when given) and, when MINIMA_VERBOSE
    is set, written to the terminal too (a notebook kernel's: the one that started it, so that the executed
    notebook, the record of the study, holds no log)."""
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "log.txt", "a", encoding="utf-8") as f:
            f.write(line + "\n")
    if os.environ.get(VERBOSE):
        _to_terminal(line)


def _to_terminal(line: str) -> None:
    try:  # a notebook kernel's stdout hands out the file of the terminal that started it (papermill's), not its own
        fd = sys.stdout.fileno()
    except (AttributeError, OSError):  # a stream with no file (pytest's capture): print into it
        print(line, flush=True)
        return
    sys.stdout.flush()
    os.write(fd, f"{line}\n".encode())


def train_mode(model: nn.Module) -> None:
    """Train mode, except batchnorm layers whose parameters are all frozen (they stay in eval)."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            params = list(m.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                m.eval()


def _schedule(optimizer: torch.optim.Optimizer, spec: TrainSpec, steps_per_epoch: int):
    if spec.schedule == "constant":
        return None
    if spec.schedule == "cosine":
        total = max(1, spec.epochs * steps_per_epoch)
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    raise ValueError(f"schedule={spec.schedule!r}; expected 'constant' or 'cosine'")


def _epoch_line(label: str, row: dict[str, Any]) -> str:
    clean = f" (clean {row['clean_train_accuracy']:.3f})" if "clean_train_accuracy" in row else ""
    phase = f" [{row['phase']}]" if "phase" in row else ""
    return (f"{label} epoch {row['epoch']}{phase}: train loss {row['train_loss']:.3f} "
            f"acc {row['train_accuracy']:.3f}{clean} | test loss {row['test_loss']:.3f} "
            f"acc {row['test_accuracy']:.3f} | {row['seconds']:.1f} s")
