"""The one-knob arm: one method pretrained at several values of one of its knobs (a dose-response sweep).

Each sweep point (method, knob, value) is a study of its own: the parent study with that method alone
and that one knob changed, stored under `outputs/<study>/knobs/<method>-<knob>-<value>/`. Every table
of the study is computed for a point by the same function as for the study (pretrained, measured,
sliced, finetuned), and `table` stacks the points' tables with `knob`, `knob_value` and `knob_step`
columns (the step is the value's place among its knob's values, 1 the lowest: knobs differ in scale).
A point's pretraining runs live in the shared run folders, named by the settings they depend on,
so a value equal to the study's own value of the knob reuses the method's run.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import pandas as pd

from minima import data, executor, pretraining
from minima.config import MIN_SWEEP_VALUES, Study


class Point(NamedTuple):
    """One value of one knob of one method."""

    method: str
    knob: str
    value: float


def points(study: Study) -> list[Point]:
    """Every sweep point of the study, in the order of its `sweeps` key."""
    return [Point(m, k, v) for m, knobs in study.sweeps.items() for k, values in knobs.items() for v in values]


def knobs(study: Study) -> list[tuple[str, str]]:
    """Every swept (method, knob) of the study."""
    return [(m, k) for m, ks in study.sweeps.items() for k in ks]


def point_study(study: Study, point: Point) -> Study:
    """The study of one sweep point: its method alone, the knob at the point's value, no sweeps of its own."""
    name = f"{study.name}/knobs/{point.method}-{point.knob}-{point.value:g}"
    return dataclasses.replace(study, name=name, methods=[point.method], sweeps={},
                               knobs={**study.knobs, point.knob: point.value})


def table(study: Study, compute: Callable[[Study], pd.DataFrame]) -> pd.DataFrame:
    """`compute` (a study's table, e.g. `tables.pretrained`) for every sweep point, stacked, with the
    point's `knob`, `knob_value` and `knob_step` columns first; no rows when the study sweeps nothing."""
    if study.zoo:
        return _zoo_table(study, compute)
    if not study.sweeps:
        return _none(compute(study))
    if not all(pretraining.pretrain_run(point_study(study, p), p.method, seed).finished
               for p in points(study) for seed in study.pretrain_seeds):
        pretrain_all(study)
    frames = [compute(point_study(study, p)).pipe(_labelled, p, step(study, p)) for p in points(study)]
    return pd.concat(frames, ignore_index=True)


def zoo_knobs(study: Study) -> dict[tuple[str, str], dict[pretraining.Key, float]]:
    """A zoo's one-knob arm: per (group, number name) with at least MIN_SWEEP_VALUES distinct values, the
    value of every checkpoint of the group that carries it."""
    arm: dict[tuple[str, str], dict[pretraining.Key, float]] = {}
    for key in pretraining.keys(study):
        for knob, value in pretraining.numbers(study, key).items():
            arm.setdefault((key[0], knob), {})[key] = value
    return {k: v for k, v in arm.items() if len(set(v.values())) >= MIN_SWEEP_VALUES}


def _zoo_table(study: Study, compute: Callable[[Study], pd.DataFrame]) -> pd.DataFrame:
    """`compute(study)` labelled by the zoo's knobs: a run's rows take its value; a pair's rows are kept when
    both ends are of one group at one value (as a sweep point's pairs are)."""
    frame = compute(study)
    frames = []
    for (method, knob), values in zoo_knobs(study).items():
        if "pretrain_seed" in frame:
            value = [values.get((m, s)) for m, s in zip(frame.method, frame.pretrain_seed)]
        else:
            a = [values.get((m, s)) for m, s in zip(frame.method_a, frame.pretrain_seed_a)]
            b = [values.get((m, s)) for m, s in zip(frame.method_b, frame.pretrain_seed_b)]
            value = [x if x is not None and x == y else None for x, y in zip(a, b)]
        part = frame[[v is not None for v in value]]
        kept = pd.Series(value, index=frame.index)[part.index].astype(float)
        order = sorted(set(values.values()))
        labels = pd.DataFrame({"knob": knob, "knob_value": kept, "knob_step": [order.index(v) + 1 for v in kept]},
                              index=part.index)
        frames.append(pd.concat([labels, part], axis=1))
    return pd.concat(frames, ignore_index=True) if frames else _none(frame)


def _none(frame: pd.DataFrame) -> pd.DataFrame:
    """No sweep point: the table's columns, labelled, without rows (so that a notebook's selection still works)."""
    return pd.concat([pd.DataFrame(columns=["knob", "knob_value", "knob_step"]), frame.iloc[:0]], axis=1)


def step(study: Study, point: Point) -> int:
    """The point's value's place among its knob's values, 1 for the lowest."""
    return sorted(study.sweeps[point.method][point.knob]).index(point.value) + 1


def _labelled(frame: pd.DataFrame, point: Point, step: int) -> pd.DataFrame:
    labels = pd.DataFrame({"knob": point.knob, "knob_value": point.value, "knob_step": step}, index=frame.index)
    return pd.concat([labels, frame], axis=1)


def pretrain_all(study: Study) -> pd.DataFrame:
    """Every sweep point x pretraining seed, trained or loaded in one batch through the study's executor
    (so a cluster spreads the whole arm over its workers); one row per run with its final metrics."""
    data.load_task(study, "source")
    jobs = [executor.Job(f"{p.method}-{p.knob}-{p.value:g}-seed{seed}", _pretrain_job, (p, seed),
                         done=pretraining.pretrain_run(point_study(study, p), p.method, seed).finished)
            for p in points(study) for seed in study.pretrain_seeds]
    return pd.DataFrame(executor.run(study, jobs, "knob sweeps"))


def _pretrain_job(study: Study, point: Point, seed: int) -> dict[str, Any]:
    row = pretraining.pretrain_job(point_study(study, point), point.method, seed)
    return dict(knob=point.knob, knob_value=point.value, **row)
