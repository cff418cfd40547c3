"""Pretraining runs: every method x seed of a study, trained once through the study's executor."""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import pandas as pd
import torch

from minima import data, executor, leases, methods, models, store, zoo
from minima.config import Study
from minima.evaluation import evaluate, pick_device
from minima.runstore import Run, RunCheckpoint, prefixed, runs_root
from minima.train import TrainSpec, fit, log

DATA_KEYS = zoo.SOURCE_KEYS
MODEL_KEYS = ("arch", "width")
PRETRAIN_KEYS = ("pretrain_epochs", "batch_size", "lr", "weight_decay", "lr_schedule")
RUNS_KEYS = ("methods", "pretrain_seeds")  # which runs a study's tables hold (each run's folder: its method's knobs)
ZOO_KEYS = ("zoo",)  # a zoo's runs: its folder, by name and content (Study.fingerprint)
Key = tuple[str, int]  # (method, pretrain_seed) of a pretraining run; a zoo's (group, index in the group)


def pretraining_keys(study: Study) -> tuple[str, ...]:
    """The config keys that decide the study's pretrained minima: every measure of them depends on these
    (a zoo's fingerprint covers its files)."""
    if study.zoo:
        return DATA_KEYS + ZOO_KEYS
    knobs = tuple(k for m in study.methods for k in methods.REGISTRY[m].knobs)
    return DATA_KEYS + MODEL_KEYS + PRETRAIN_KEYS + RUNS_KEYS + knobs


def keys(study: Study) -> list[Key]:
    """Every pretraining run of the study: method x seed, or each checkpoint of its zoo."""
    if study.zoo:
        return list(_zoo(study))
    return [(m, s) for m in study.methods for s in study.pretrain_seeds]


def _zoo(study: Study) -> dict[Key, zoo.Entry]:
    """The study's zoo entries by key, read and checked once per zoo content and source task."""
    stamp = study.fingerprint(*ZOO_KEYS, *DATA_KEYS)
    if stamp not in _ZOOS:
        found = zoo.entries(study)
        _ZOOS[stamp] = dict(zip(zoo.keys(found), found))
    return _ZOOS[stamp]


_ZOOS: dict[str, dict[Key, zoo.Entry]] = {}


def spec(study: Study, key: Key) -> dict:
    """The model spec of a pretraining run (arch, width, classes, preprocessing): which runs share a weight space."""
    if study.zoo:
        return _zoo(study)[key].spec
    return dict(arch=study.arch, width=study.width, classes=study.n_classes("source"))


def pretrain_run(study: Study, method: str, seed: int) -> Run:
    """The folder of one pretraining run, named by method, seed and every setting it depends on (a zoo
    checkpoint's: by its name and content)."""
    if study.zoo:
        return zoo.run_of(study, _zoo(study)[(method, seed)])
    keys = DATA_KEYS + MODEL_KEYS + PRETRAIN_KEYS + tuple(methods.REGISTRY[method].knobs)
    return Run(runs_root() / "pretrain" / f"{method}-seed{seed}-{study.fingerprint(*keys)}")


def pretrain(study: Study, method: str, seed: int, task: data.Task | None = None) -> Run:
    """Train one pretraining run (or resume it, or find it finished) and return its folder.

    The run is leased while it trains: a worker that finds it leased waits, then returns it finished.
    """
    if study.zoo:
        return zoo.import_entry(study, _zoo(study)[(method, seed)], method, seed)
    run = pretrain_run(study, method, seed)
    if run.finished:
        log(f"{method} seed {seed}: finished run found, loading {run.path}")
        return run
    run.train(study.lease_timeout,
              lambda lease: _pretrain(study, run, method, seed, task or data.load_task(study, "source"), lease))
    return run


def _pretrain(study: Study, run: Run, method: str, seed: int, task: data.Task, lease: leases.Lease) -> None:
    device = pick_device(study.device)
    torch.manual_seed(seed)
    model = models.model_for(study, task.n_classes).to(device, memory_format=torch.channels_last)
    spec = TrainSpec(epochs=study.pretrain_epochs, batch_size=study.batch_size, lr=study.lr,
                     weight_decay=study.weight_decay, schedule=study.lr_schedule, seed=seed,
                     label=f"{method} seed {seed}", compile=study.compile)
    store.write_json(run.path / "config.json", dict(kind="pretrain", method=method, seed=seed,
                                                    device=str(device), study=study.as_dict()))
    start = time.perf_counter()
    model, history = fit(model, task, spec, methods.make(method, study), checkpoint=RunCheckpoint(run, lease))
    final = dict(method=method, seed=seed, epochs=len(history), seconds=time.perf_counter() - start,
                 **prefixed("train", evaluate(model, task.x_train, task.y_train)),
                 **prefixed("test", evaluate(model, task.x_test, task.y_test)))
    run.save(model, history, final, guard=lease.check)


def pretrain_all(study: Study) -> pd.DataFrame:
    """Every method x seed of the study, trained or loaded through the study's executor; one row
    per run with its final metrics. Runs that fail are reported (JobsFailed) after the others finish."""
    data.load_task(study, "source")  # cached once here, read by every job
    jobs = [executor.Job(f"{method}-seed{seed}", pretrain_job, (method, seed),
                         done=pretrain_run(study, method, seed).finished)
            for method, seed in keys(study)]
    return pd.DataFrame(executor.run(study, jobs, "pretraining"))


def each_run(study: Study, measure: Callable[[Study, str, int], pd.DataFrame], label: str, columns: Sequence[str],
             on_source: bool = True) -> pd.DataFrame:
    """`measure(study, method, seed)` of every pretraining run (trained first if need be), one job per run
    through the study's executor, stacked into one table of `columns` (no rows when every run is skipped). A
    measure `on_source` skips, with one line, the zoo checkpoints whose source task is not the study's."""
    pretrained = pretrain_all(study)
    jobs = []
    for row in pretrained.itertuples():
        problem = source_problem(study, (row.method, row.pretrain_seed)) if on_source else ""
        if problem:
            print(f"{label} of {row.method} {row.pretrain_seed} skipped: {problem}", flush=True)
        else:
            jobs.append(executor.Job(f"{row.method}-seed{row.pretrain_seed}", measure, (row.method, row.pretrain_seed)))
    if not jobs:
        return pd.DataFrame(columns=list(columns))
    return pd.concat(executor.run(study, jobs, label), ignore_index=True)[list(columns)]


def numbers(study: Study, key: Key) -> dict[str, float]:
    """The numbers a zoo checkpoint carries (its knob values); {} for the study's own runs."""
    return _zoo(study)[key].numbers if study.zoo else {}


def source_problem(study: Study, key: Key) -> str:
    """Why the study cannot measure run `key` on its source task ("" when it can: always for its own runs)."""
    return zoo.source_problem(study, _zoo(study)[key]) if study.zoo else ""


def pretrain_job(study: Study, method: str, seed: int) -> dict[str, Any]:
    run = pretrain(study, method, seed)
    final = run.final()  # a run's own record calls its seed "seed"; in the study's tables it is the pretrain_seed
    return dict(run=run.name, pretrain_seed=final.pop("seed"), **final)


def pretrain_histories(study: Study) -> pd.DataFrame:
    """Per-epoch metrics of every finished pretraining run, with method and seed columns."""
    frames = []
    for method, seed in keys(study):
        run = pretrain_run(study, method, seed)
        if run.finished:
            frames.append(run.history().assign(method=method, pretrain_seed=seed, run=run.name))
    return pd.concat(frames, ignore_index=True)
