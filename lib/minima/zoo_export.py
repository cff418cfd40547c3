"""`python -m minima export-zoo`: a study's pretraining runs, and its knob arm's, written as a zoo folder."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from minima import knob_sweeps, pretraining, zoo
from minima.config import Study
from minima.runstore import Run


def labels(study: Study, method: str, seed: int, numbers: dict[str, float]) -> dict[str, Any]:
    """The sidecar of one of the study's own runs: its arch, its source task, its method as group and the
    swept knob values it was trained at as numbers."""
    return dict(arch=study.arch, width=study.width, classes=study.n_classes("source"), source=zoo.study_source(study),
                group=method, numbers=numbers)


def export_study(study: Study, into: Path) -> pd.DataFrame:
    """Every pretraining run of the study and of its knob arm (trained first if need be) as a zoo in `into`;
    a run shared by the methods and the arm (a sweep value equal to the method's own) is written once."""
    if study.zoo:
        raise ValueError(f"zoo={study.zoo!r}: this study's runs are a zoo already; export a study that trains")
    pretraining.pretrain_all(study)
    if study.sweeps:
        knob_sweeps.pretrain_all(study)
    runs: dict[Path, tuple[Run, dict[str, Any]]] = {}
    for method, seed in pretraining.keys(study):
        numbers = {knob: float(getattr(study, knob)) for m, knob in knob_sweeps.knobs(study) if m == method}
        runs[pretraining.pretrain_run(study, method, seed).path] = (
            pretraining.pretrain_run(study, method, seed),
            dict(name=f"{method}-seed{seed}", **labels(study, method, seed, numbers)))
    for point in knob_sweeps.points(study):
        sub = knob_sweeps.point_study(study, point)
        for seed in study.pretrain_seeds:
            run = pretraining.pretrain_run(sub, point.method, seed)
            if run.path not in runs:
                runs[run.path] = (run, dict(name=f"{point.method}-{point.knob}{point.value:g}-seed{seed}",
                                            **labels(study, point.method, seed, {point.knob: float(point.value)})))
    return zoo.export(list(runs.values()), Path(into))
