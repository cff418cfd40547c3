"""The run store: training runs as folders, trained once, resumed after an interruption, loaded when finished."""
from __future__ import annotations

import json
import os
import socket
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch
from torch import nn

from minima import archs, leases, models, paths, store
from minima.config import Study
from minima.train import Checkpoint

# the run folders live under outputs/runs/format<N>/: runs whose records had other column names
# (format 1 wrote "train_acc", "test_acc") are never mistaken for today's
RUN_FORMAT = 2
LEASE_FILE = "claim"  # the lease's file in a run folder: the name folders already on disk use


def runs_root() -> Path:
    """The folder of this format's runs, shared by every study."""
    return paths.runs_dir() / f"format{RUN_FORMAT}"


@dataclass(frozen=True)
class Run:
    """One run's folder: config.json, history.csv, weights.safetensors, checkpoint.pt, final.json,
    and while it trains its lease (a file `claim`); epochs.jsonl logs which worker trained each epoch."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def weights(self) -> Path:
        return self.path / "weights.safetensors"

    def measured(self, name: str, key: str, compute: Callable[[], pd.DataFrame]) -> pd.DataFrame:
        """A measure of the finished run, stored in its folder under `name` and `key` (a hash of the settings
        it depends on beyond the run's own): computed once, read by every study that holds the run."""
        path = self.path / "measures" / f"{name}-{key}.csv"
        if path.is_file():
            return store.read_table(path)
        table = compute()
        store.write_table(path, table)
        return table

    @property
    def finished(self) -> bool:
        """True once final.json exists; it is written last, so a half-written run is never finished."""
        return (self.path / "final.json").is_file()

    def lease(self, timeout: float) -> AbstractContextManager[leases.Lease | None]:
        """This worker's lease on the run for a block (waiting while another live worker holds
        it), or None once the run is finished."""
        self.path.mkdir(parents=True, exist_ok=True)
        return leases.leased(self.path / LEASE_FILE, timeout, done=lambda: self.finished)

    def log_epoch(self, epoch: int) -> None:
        """Append who trained `epoch` (written after its checkpoint, so a logged epoch is a saved one)."""
        line = json.dumps(dict(epoch=epoch, worker=f"{socket.gethostname()}:{os.getpid()}", time=time.time()))
        with open(self.path / "epochs.jsonl", "a") as f:
            f.write(line + "\n")

    def epochs_log(self) -> pd.DataFrame:
        """One row per epoch trained and saved: epoch, worker (host:pid), time."""
        path = self.path / "epochs.jsonl"
        lines = path.read_text().splitlines() if path.is_file() else []
        return pd.DataFrame([json.loads(line) for line in lines], columns=["epoch", "worker", "time"])

    def history(self) -> pd.DataFrame:
        return store.read_table(self.path / "history.csv")

    def final(self) -> dict[str, Any]:
        return store.read_json(self.path / "final.json")

    def table(self, name: str) -> pd.DataFrame:
        return store.read_table(self.path / f"{name}.csv")

    def save(self, model: nn.Module, history: pd.DataFrame, final: dict[str, Any],
             tables: dict[str, pd.DataFrame] | None = None, guard: Callable[[], None] | None = None) -> None:
        """Weights, history and extra tables, then final.json (it marks the run finished).

        Everything is staged under temporary names first; then, if `guard()` passes and nobody
        finished the run meanwhile, moved into place, final.json last and only where there is none.
        """
        targets = {"weights": self.weights, "history": self.path / "history.csv", "final": self.path / "final.json"}
        targets.update({name: self.path / f"{name}.csv" for name in tables or {}})
        staged = {k: p.with_name(f".{p.name}.{os.getpid()}.staged") for k, p in targets.items()}
        try:
            store.save_tensors(staged["weights"], model.state_dict())
            store.write_table(staged["history"], history)
            for name, table in (tables or {}).items():
                store.write_table(staged[name], table)
            store.write_json(staged["final"], final)
            if guard is not None:
                guard()
            if self.finished:
                return
            for key, path in staged.items():
                if key != "final":
                    os.replace(path, targets[key])
            try:
                os.link(staged["final"], targets["final"])  # fails if another worker finished first
            except FileExistsError:
                pass
        finally:
            for path in staged.values():
                path.unlink(missing_ok=True)

    def train(self, timeout: float, train: Callable[[leases.Lease], None]) -> None:
        """`train(lease)` while this worker holds the run's lease; returns once the run is finished,
        by this worker or by one that took the run over (then it waits for that one)."""
        while True:
            with self.lease(timeout) as lease:
                if lease is None:
                    return
                try:
                    train(lease)
                    return
                except leases.LeaseLost as err:
                    print(f"{self.name}: {err}; waiting for it", flush=True)


class RunCheckpoint(Checkpoint):
    """A run's checkpoint, written only while this worker still holds the run's lease."""

    def __init__(self, run: Run, lease: leases.Lease):
        super().__init__(run.checkpoint)
        self.run, self.lease = run, lease

    def save(self, state: dict[str, Any]) -> None:
        self.lease.check()
        super().save(state)
        self.run.log_epoch(len(state["history"]))


def model_from_spec(spec: dict[str, Any]) -> nn.Module:
    """A fresh model from a run's model spec: arch, width, classes (the head's outputs) and preprocessing."""
    model = archs.build_model(spec["arch"], spec["classes"], spec.get("width", 64))
    pre = spec.get("preprocessing") or {}
    return models.preprocess(model, pre.get("size"), pre.get("mean", [0.0] * 3), pre.get("std", [1.0] * 3))


def model_spec(study: Study, run: Run, n_classes: int) -> dict[str, Any]:
    """The run's own model spec (model.json, written for zoo checkpoints), else the study's arch and width."""
    path = run.path / "model.json"
    if path.is_file():
        return store.read_json(path)
    return dict(arch=study.arch, width=study.width, classes=n_classes)


def load_model(study: Study, run: Run, n_classes: int, device: str | torch.device = "cpu") -> nn.Module:
    """The final weights of a finished run in a fresh model of its architecture (a zoo checkpoint's own,
    with its head; else the study's, with `n_classes` outputs)."""
    model = model_from_spec(model_spec(study, run, n_classes))
    model.load_state_dict(store.load_tensors(run.weights))
    return model.to(device, memory_format=torch.channels_last)


def prefixed(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
    """Loss and accuracy of one split under the names of the run tables ("test_loss", "test_accuracy")."""
    return {f"{prefix}_{k}": v for k, v in metrics.items()}
