"""Pretraining runs: every method x seed of a study, trained once through the study's executor."""
from __future__ import annotations

import time
from typing import Any, Callable

import pandas as pd
import torch

from minima import claims, data, methods, models, store, sweep
from minima.config import Study
from minima.evaluation import evaluate, pick_device
from minima.runstore import Run, RunCheckpoint, prefixed, runs_root
from minima.train import TrainSpec, fit

DATA_KEYS = ("seed", "source", "image_size", "source_classes", "source_labels", "source_train_per_class",
             "source_test_per_class", "imagenet_dir", "datasets_dir")
MODEL_KEYS = ("arch", "width")
PRETRAIN_KEYS = ("pretrain_epochs", "batch_size", "lr", "weight_decay", "lr_schedule")


def pretraining_keys(study: Study) -> tuple[str, ...]:
    """The config keys that decide the study's pretrained minima: every measure of them depends on these."""
    knobs = tuple(k for m in study.methods for k in methods.REGISTRY[m].knobs)
    return DATA_KEYS + MODEL_KEYS + PRETRAIN_KEYS + ("methods", "pretrain_seeds") + knobs


def pretrain_run(study: Study, method: str, seed: int) -> Run:
    """The folder of one pretraining run, named by method, seed and every setting it depends on."""
    keys = DATA_KEYS + MODEL_KEYS + PRETRAIN_KEYS + tuple(methods.REGISTRY[method].knobs)
    return Run(runs_root() / "pretrain" / f"{method}-seed{seed}-{study.fingerprint(*keys)}")


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
                 **prefixed("train", evaluate(model, task.x_train, task.y_train)),
                 **prefixed("test", evaluate(model, task.x_test, task.y_test)))
    run.save(model, history, final, guard=claim.check)


def pretrain_all(study: Study) -> pd.DataFrame:
    """Every method x seed of the study, trained or loaded through the study's executor; one row
    per run with its final metrics. Runs that fail are reported (SweepFailed) after the others finish."""
    data.load_task(study, "source")  # cached once here, read by every job
    jobs = [sweep.Job(f"{method}-seed{seed}", pretrain_job, (method, seed),
                      done=pretrain_run(study, method, seed).finished)
            for method in study.methods for seed in study.pretrain_seeds]
    return pd.DataFrame(sweep.run(study, jobs, "pretraining"))


def each_run(study: Study, measure: Callable[[Study, str, int], pd.DataFrame], label: str) -> pd.DataFrame:
    """`measure(study, method, seed)` of every pretraining run (trained first if need be), one job per run
    through the study's executor, stacked into one table."""
    pretrained = pretrain_all(study)
    jobs = [sweep.Job(f"{row.method}-seed{row.pretrain_seed}", measure, (row.method, row.pretrain_seed))
            for row in pretrained.itertuples()]
    return pd.concat(sweep.run(study, jobs, label), ignore_index=True)


def pretrain_job(study: Study, method: str, seed: int) -> dict[str, Any]:
    run = pretrain(study, method, seed)
    final = run.final()  # a run's own record calls its seed "seed"; in the study's tables it is the pretrain_seed
    return dict(run=run.name, pretrain_seed=final.pop("seed"), **final)


def pretrain_histories(study: Study) -> pd.DataFrame:
    """Per-epoch metrics of every finished pretraining run, with method and seed columns."""
    frames = []
    for method in study.methods:
        for seed in study.pretrain_seeds:
            run = pretrain_run(study, method, seed)
            if run.finished:
                frames.append(run.history().assign(method=method, pretrain_seed=seed, run=run.name))
    return pd.concat(frames, ignore_index=True)
