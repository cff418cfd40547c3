"""Training runs as folders: trained once, resumed after an interruption, loaded when finished."""
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

from minima import claims, data, models, paths, store, sweep
from minima.config import Study
from minima.evaluation import evaluate, pick_device
from minima.finetune import DistanceTracker, apply_protocol, epochs_to_threshold
from minima import methods
from minima.train import Checkpoint, TrainSpec, fit

DATA_KEYS = ("seed", "source", "image_size", "source_classes", "source_train_per_class",
             "source_test_per_class", "imagenet_dir")
MODEL_KEYS = ("arch", "width")
PRETRAIN_KEYS = ("pretrain_epochs", "batch_size", "lr", "weight_decay", "lr_schedule")
TARGET_KEYS = ("seed", "target", "image_size", "source_classes", "target_train_per_class",
               "target_test_per_class", "cifar_dir")
FINETUNE_KEYS = ("finetune_epochs", "finetune_batch_size", "finetune_lr", "finetune_weight_decay",
                 "distance_every")
SCRATCH = "scratch"


@dataclass(frozen=True)
class Run:
    """One run's folder: config.json, history.csv, weights.safetensors, checkpoint.pt, final.json,
    and while it trains a `claim`; epochs.jsonl logs which worker trained each epoch."""

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

    @property
    def finished(self) -> bool:
        """True once final.json exists; it is written last, so a half-written run is never finished."""
        return (self.path / "final.json").is_file()

    def claim(self, timeout: float) -> AbstractContextManager[claims.Claim | None]:
        """This worker's claim on the run for a block (waiting while another live worker holds
        it), or None once the run is finished."""
        self.path.mkdir(parents=True, exist_ok=True)
        return claims.claimed(self.path / "claim", timeout, done=lambda: self.finished)

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

    def train(self, timeout: float, train: Callable[[claims.Claim], None]) -> None:
        """`train(claim)` while this worker holds the run's claim; returns once the run is finished,
        by this worker or by one that took the run over (then it waits for that one)."""
        while True:
            with self.claim(timeout) as claim:
                if claim is None:
                    return
                try:
                    train(claim)
                    return
                except claims.ClaimLost as err:
                    print(f"{self.name}: {err}; waiting for it", flush=True)


class RunCheckpoint(Checkpoint):
    """A run's checkpoint, written only while this worker still holds the run's claim."""

    def __init__(self, run: Run, claim: claims.Claim):
        super().__init__(run.checkpoint)
        self.run, self.claim = run, claim

    def save(self, state: dict[str, Any]) -> None:
        self.claim.check()
        super().save(state)
        self.run.log_epoch(len(state["history"]))


def pretraining_keys(study: Study) -> tuple[str, ...]:
    """The config keys that decide the study's pretrained minima: every measure of them depends on these."""
    knobs = tuple(k for m in study.methods for k in methods.REGISTRY[m].knobs)
    return DATA_KEYS + MODEL_KEYS + PRETRAIN_KEYS + ("methods", "pretrain_seeds") + knobs


def pretrain_run(study: Study, method: str, seed: int) -> Run:
    """The folder of one pretraining run, named by method, seed and every setting it depends on."""
    keys = DATA_KEYS + MODEL_KEYS + PRETRAIN_KEYS + tuple(methods.REGISTRY[method].knobs)
    return Run(paths.runs_dir() / "pretrain" / f"{method}-seed{seed}-{study.fingerprint(*keys)}")


def pretrain(study: Study, method: str, seed: int, task: data.Task | None = None) -> Run:
    """Train one pretraining run (or resume it, or find it finished) and return its folder.

    The run is claimed while it trains: a worker that finds it claimed waits, then returns it finished.
    """
    run = pretrain_run(study, method, seed)
    if run.finished:
        print(f"{method} seed {seed}: finished run found, loading {run.path}", flush=True)
        return run
    run.train(study.claim_timeout,
              lambda claim: _pretrain(study, run, method, seed, task or data.load_task(study, "source"), claim))
    return run


def _pretrain(study: Study, run: Run, method: str, seed: int, task: data.Task, claim: claims.Claim) -> None:
    device = pick_device(study.device)
    torch.manual_seed(seed)
    model = models.model_for(study, task.n_classes).to(device, memory_format=torch.channels_last)
    spec = TrainSpec(epochs=study.pretrain_epochs, batch_size=study.batch_size, lr=study.lr,
                     weight_decay=study.weight_decay, schedule=study.lr_schedule, seed=seed,
                     label=f"{method} seed {seed}", compile=study.compile)
    store.write_json(run.path / "config.json", dict(kind="pretrain", method=method, seed=seed,
                                                    device=str(device), study=study.as_dict()))
    start = time.perf_counter()
    model, history = fit(model, task, spec, methods.make(method, study), checkpoint=RunCheckpoint(run, claim))
    final = dict(method=method, seed=seed, epochs=len(history), seconds=time.perf_counter() - start,
                 **_prefixed("train", evaluate(model, task.x_train, task.y_train)),
                 **_prefixed("test", evaluate(model, task.x_test, task.y_test)))
    run.save(model, history, final, guard=claim.check)


def pretrain_all(study: Study) -> pd.DataFrame:
    """Every method x seed of the study, trained or loaded through the study's executor; one row
    per run with its final metrics. Runs that fail are reported (SweepFailed) after the others finish."""
    data.load_task(study, "source")  # cached once here, read by every job
    jobs = [sweep.Job(f"{method}-seed{seed}", _pretrain_job, (method, seed),
                      done=pretrain_run(study, method, seed).finished)
            for method in study.methods for seed in study.pretrain_seeds]
    return pd.DataFrame(sweep.run(study, jobs, "pretraining"))


def _pretrain_job(study: Study, method: str, seed: int) -> dict[str, Any]:
    run = pretrain(study, method, seed)
    return dict(run=run.name, **run.final())


def pretrain_histories(study: Study) -> pd.DataFrame:
    """Per-epoch metrics of every finished pretraining run, with method and seed columns."""
    frames = []
    for method in study.methods:
        for seed in study.pretrain_seeds:
            run = pretrain_run(study, method, seed)
            if run.finished:
                frames.append(run.history().assign(method=method, seed=seed, run=run.name))
    return pd.concat(frames, ignore_index=True)


def finetune_run(study: Study, start: str, seed: int, protocol: str) -> Run:
    """The folder of one finetuning run from `start` (a pretraining run's name, or "scratch")."""
    keys = TARGET_KEYS + MODEL_KEYS + FINETUNE_KEYS + (("partial_frozen_stages",) if protocol == "partial" else ())
    return Run(paths.runs_dir() / "finetune" / f"{start}--{protocol}-ft{seed}-{study.fingerprint(*keys)}")


def finetune(study: Study, start: Run | None, seed: int, protocol: str, task: data.Task | None = None) -> Run:
    """Finetune from a pretraining run's final weights (None: random init) with a new head; claimed
    while it trains, like `pretrain`."""
    run = finetune_run(study, start.name if start is not None else SCRATCH, seed, protocol)
    if run.finished:
        return run
    run.train(study.claim_timeout, lambda claim: _finetune(study, run, start, seed, protocol,
                                                           task or data.load_task(study, "target"), claim))
    return run


def _finetune(study: Study, run: Run, start: Run | None, seed: int, protocol: str, task: data.Task,
              claim: claims.Claim) -> None:
    name = start.name if start is not None else SCRATCH
    device = pick_device(study.device)
    if start is None:
        torch.manual_seed(seed)
        model = models.model_for(study, task.n_classes)
    else:
        model = models.replace_head(load_model(study, start, study.source_classes), task.n_classes, seed)
    model = apply_protocol(model.to(device, memory_format=torch.channels_last), protocol,
                           study.partial_frozen_stages)
    spec = TrainSpec(epochs=study.finetune_epochs, batch_size=study.finetune_batch_size, lr=study.finetune_lr,
                     weight_decay=study.finetune_weight_decay, seed=seed, label=f"{name} {protocol} ft{seed}",
                     compile=study.compile)
    tracker = DistanceTracker(model, study.distance_every,
                              steps_per_epoch=len(task.y_train) // min(spec.batch_size, len(task.y_train)))
    store.write_json(run.path / "config.json", dict(kind="finetune", start=name, seed=seed, protocol=protocol,
                                                    device=str(device), study=study.as_dict()))
    start_time = time.perf_counter()
    model, history = fit(model, task, spec, methods.Adam(), checkpoint=RunCheckpoint(run, claim), step_hook=tracker)
    distances = tracker.table()
    origin = start.final() if start is not None else dict(method=SCRATCH, seed=-1)
    final = dict(start=name, method=origin["method"], pretrain_seed=origin["seed"], finetune_seed=seed,
                 protocol=protocol, epochs=len(history), seconds=time.perf_counter() - start_time,
                 epochs_to_threshold=epochs_to_threshold(history, study.finetune_threshold),
                 distance_all=distances.distance_all.iloc[-1], distance_non_bn=distances.distance_non_bn.iloc[-1],
                 **_prefixed("train", evaluate(model, task.x_train, task.y_train)),
                 **_prefixed("test", evaluate(model, task.x_test, task.y_test)))
    run.save(model, history, final, tables=dict(distances=distances), guard=claim.check)


def finetune_starts(study: Study) -> list[Run | None]:
    """Every finished pretraining run of the study, then None for the from-scratch baseline."""
    return [pretrain_run(study, m, s) for m in study.methods for s in study.pretrain_seeds] + [None]


def finetune_all(study: Study) -> pd.DataFrame:
    """Every protocol x start x finetuning seed, trained or loaded through the study's executor; one row per run."""
    data.load_task(study, "target")  # cached once here, read by every job
    missing = [r.name for r in finetune_starts(study) if r is not None and not r.finished]
    if missing:
        raise RuntimeError(f"pretraining runs not finished: {', '.join(missing)}; run notebook 02 first "
                           "(or runs.pretrain_all(study))")
    jobs = [sweep.Job(f"{protocol}-{start_label(start)}-ft{seed}", _finetune_job, (start, seed, protocol),
                      done=finetune_run(study, start.name if start else SCRATCH, seed, protocol).finished)
            for protocol in study.protocols for start in finetune_starts(study) for seed in study.finetune_seeds]
    return pd.DataFrame(sweep.run(study, jobs, "finetuning"))


def start_label(start: Run | None) -> str:
    """A short name of a finetuning start: "adam-seed0", or "scratch"."""
    return SCRATCH if start is None else start.name.rsplit("-", 1)[0]


def _finetune_job(study: Study, start: Run | None, seed: int, protocol: str) -> dict[str, Any]:
    run = finetune(study, start, seed, protocol)
    return dict(run=run.name, **run.final())


def finetune_tables(study: Study, name: str) -> pd.DataFrame:
    """A per-run table ("history" or "distances") of every finished finetuning run, with its labels."""
    frames = []
    for protocol in study.protocols:
        for start in finetune_starts(study):
            for seed in study.finetune_seeds:
                run = finetune_run(study, start.name if start else SCRATCH, seed, protocol)
                if run.finished:
                    f = run.final()
                    frames.append(run.table(name).assign(
                        method=f["method"], pretrain_seed=f["pretrain_seed"], finetune_seed=seed,
                        protocol=protocol, start=f["start"]))
    return pd.concat(frames, ignore_index=True)


def by_split(histories: pd.DataFrame, ids: tuple[str, ...] = ("method", "seed", "epoch")) -> pd.DataFrame:
    """Per-epoch histories in long form: one row per run (`ids`), epoch and split (train, clean train, test)."""
    names = {"train": "train (as trained)", "clean_train": "train (clean images)", "test": "test"}
    frames = []
    for prefix, split in names.items():
        if f"{prefix}_loss" in histories:
            part = histories.dropna(subset=[f"{prefix}_loss"])
            frames.append(part[list(ids)].assign(
                split=split, loss=part[f"{prefix}_loss"], accuracy=part[f"{prefix}_acc"]))
    return pd.concat(frames, ignore_index=True)


def load_model(study: Study, run: Run, n_classes: int, device: str | torch.device = "cpu") -> nn.Module:
    """The final weights of a finished run in a fresh model of the study's architecture."""
    model = models.model_for(study, n_classes)
    model.load_state_dict(store.load_tensors(run.weights))
    return model.to(device, memory_format=torch.channels_last)


def _prefixed(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
    short = {"loss": "loss", "accuracy": "acc"}
    return {f"{prefix}_{short[k]}": v for k, v in metrics.items()}
