"""Finetuning runs: every protocol x pretrained start x finetuning seed, trained once through the executor."""
from __future__ import annotations

import time
from typing import Any

import pandas as pd
import torch

from minima import data, executor, leases, methods, models, store
from minima.config import Study
from minima.evaluation import evaluate, pick_device
from minima.pretraining import MODEL_KEYS, keys, pretrain_run, spec
from minima.protocols import DistanceTracker, apply_protocol, epochs_to_threshold, has_stages
from minima.runstore import Run, RunCheckpoint, load_model, model_from_spec, prefixed, runs_root
from minima.train import TrainSpec, fit

TARGET_KEYS = ("seed", "target", "image_size", "source_classes", "target_labels", "target_train_per_class",
               "target_test_per_class", "datasets_dir")
FINETUNE_KEYS = ("finetune_epochs", "finetune_batch_size", "finetune_lr", "finetune_weight_decay",
                 "distance_every")
SCRATCH = "scratch"


def finetune_run(study: Study, start: str, seed: int, protocol: str) -> Run:
    """The folder of one finetuning run from `start` (a pretraining run's name, or "scratch")."""
    keys = TARGET_KEYS + MODEL_KEYS + FINETUNE_KEYS + (("partial_frozen_stages",) if protocol == "partial" else ())
    return Run(runs_root() / "finetune" / f"{start}--{protocol}-ft{seed}-{study.fingerprint(*keys)}")


def finetune(study: Study, start: Run | None, seed: int, protocol: str, task: data.Task | None = None) -> Run:
    """Finetune from a pretraining run's final weights (None: random init) with a new head; leased
    while it trains, like `pretrain`."""
    run = finetune_run(study, start.name if start is not None else SCRATCH, seed, protocol)
    if run.finished:
        return run
    run.train(study.lease_timeout, lambda lease: _finetune(study, run, start, seed, protocol,
                                                           task or data.load_task(study, "target"), lease))
    return run


def _finetune(study: Study, run: Run, start: Run | None, seed: int, protocol: str, task: data.Task,
              lease: leases.Lease) -> None:
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
    if start is not None and (start.path / "model.json").is_file():  # a zoo checkpoint's arch, with the new head
        store.write_json(run.path / "model.json", {**store.read_json(start.path / "model.json"),
                                                   "classes": task.n_classes})
    store.write_json(run.path / "config.json", dict(kind="finetune", start=name, seed=seed, protocol=protocol,
                                                    device=str(device), study=study.as_dict()))
    start_time = time.perf_counter()
    model, history = fit(model, task, spec, methods.Adam(), checkpoint=RunCheckpoint(run, lease), step_hook=tracker)
    distances = tracker.table()
    origin = start.final() if start is not None else dict(method=SCRATCH, seed=-1)
    final = dict(start=name, method=origin["method"], pretrain_seed=origin["seed"], finetune_seed=seed,
                 protocol=protocol, epochs=len(history), seconds=time.perf_counter() - start_time,
                 epochs_to_threshold=epochs_to_threshold(history, study.finetune_threshold),
                 distance_all=distances.distance_all.iloc[-1], distance_non_bn=distances.distance_non_bn.iloc[-1],
                 **prefixed("train", evaluate(model, task.x_train, task.y_train)),
                 **prefixed("test", evaluate(model, task.x_test, task.y_test)))
    run.save(model, history, final, tables=dict(distances=distances), guard=lease.check)


def finetune_starts(study: Study) -> list[Run | None]:
    """Every finished pretraining run of the study, then None for the from-scratch baseline."""
    return [pretrain_run(study, m, s) for m, s in keys(study)] + [None]


def finetune_all(study: Study) -> pd.DataFrame:
    """Every protocol x start x finetuning seed, trained or loaded through the study's executor; one row per run."""
    data.load_task(study, "target")  # cached once here, read by every job
    missing = [r.name for r in finetune_starts(study) if r is not None and not r.finished]
    if missing:
        raise RuntimeError(f"pretraining runs not finished: {', '.join(missing)}; run notebook 02 first "
                           "(or pretraining.pretrain_all(study))")
    if "partial" in study.protocols:
        stageless = [f"{m} {s} ({spec(study, (m, s))['arch']})" for m, s in keys(study)
                     if not has_stages(model_from_spec(spec(study, (m, s))))]
        if stageless:
            raise ValueError(f"protocols={study.protocols!r}: 'partial' freezes ResNet stages, which "
                             f"{', '.join(stageless)} lack; valid for them: full, linear_probe")
    jobs = [executor.Job(f"{protocol}-{start_label(start)}-ft{seed}", _finetune_job, (start, seed, protocol),
                         done=finetune_run(study, start.name if start else SCRATCH, seed, protocol).finished)
            for protocol in study.protocols for start in finetune_starts(study) for seed in study.finetune_seeds]
    return pd.DataFrame(executor.run(study, jobs, "finetuning"))


def start_label(start: Run | None) -> str:
    """A short name of a finetuning start: "adam-seed0", or "scratch"."""
    return SCRATCH if start is None else start.name.rsplit("-", 1)[0]


def _finetune_job(study: Study, start: Run | None, seed: int, protocol: str) -> dict[str, Any]:
    run = finetune(study, start, seed, protocol)
    # finetune_threshold is not part of a run's folder name (it changes no weight): count the epochs
    # to the study's threshold from the run's history, not the count stored when it was trained
    reached = epochs_to_threshold(run.history(), study.finetune_threshold)
    return {"run": run.name, **run.final(), "epochs_to_threshold": reached}


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
