"""Executor wall time: the study's independent runs on the local executor and on a Dask LocalCluster.

    .venv/bin/python benchmarks/executor.py [--preset tiny] [--workers 2] [--steps a,b] [--sides a,b] [key=value ...]

Each side starts from an empty outputs folder (the data cache is built once, before the clock)
and runs the study's batches of jobs (`--steps`, default pretraining,finetuning,robustness): pretraining
(method x seed), finetuning (start x seed x protocol), robustness (one job per checkpoint) and
knob_sweeps (the one-knob arm's pretraining: sweep point x seed, in one batch). Sides (`--sides`,
default all three), in this order:
- local, one torch thread per run (what each cluster worker does, bit for bit the same results);
- local, `workers` threads per run (the same cores as the cluster, shared inside each run);
- dask, `workers` worker processes with one thread each; the cluster's start-up (worker
  processes importing torch) is timed apart from the batches.
Per-epoch lines are silenced while the clock runs.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from minima import data, executor, finetuning, knob_sweeps, pretraining, robustness
from minima.config import Study, parse_overrides


@contextmanager
def quiet() -> Iterator[None]:
    """File descriptor 1 to /dev/null (worker processes started inside inherit it)."""
    sys.stdout.flush()
    saved, null = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(null)
        os.close(saved)


STEPS = {"pretraining": pretraining.pretrain_all, "finetuning": finetuning.finetune_all,
         "robustness": robustness.evaluate_study, "knob_sweeps": knob_sweeps.pretrain_all}


def timed_batches(study: Study, outputs: Path, steps: list[str]) -> dict[str, float]:
    """Seconds per step (and in all) to run the study's batches of jobs `steps` into an empty outputs folder."""
    os.environ["MINIMA_OUTPUTS"] = str(outputs)
    seconds = {}
    with quiet():
        for name in steps:
            step = STEPS[name]
            start = time.perf_counter()
            step(study)
            seconds[name] = time.perf_counter() - start
    return dict(seconds, total=sum(seconds.values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", default="pretraining,finetuning,robustness",
                        help=f"comma-separated, in order, from: {', '.join(STEPS)}")
    parser.add_argument("--sides", default="local1,local,dask", help="comma-separated from: local1, local, dask")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args()
    steps, chosen = args.steps.split(","), args.sides.split(",")
    bad = [s for s in steps if s not in STEPS] + [s for s in chosen if s not in ("local1", "local", "dask")]
    if bad:
        parser.error(f"unknown step or side {bad[0]!r}; steps: {', '.join(STEPS)}; sides: local1, local, dask")
    overrides = dict(parse_overrides(args.overrides), device="cpu")
    sides = {
        "local1": ("local, 1 thread per run", dict(executor="local", threads=1)),
        "local": (f"local, {args.workers} threads per run", dict(executor="local", threads=args.workers)),
        "dask": (f"dask, {args.workers} workers x 1 thread", dict(executor="dask", workers=args.workers, threads=1)),
    }
    sides = {sides[k][0]: Study.load(args.preset, **overrides, **sides[k][1]) for k in chosen}
    root = Path(tempfile.mkdtemp(prefix="minima-executor-bench-"))
    os.environ["MINIMA_DATA"] = str(root / "data")
    first = next(iter(sides.values()))
    data.load_task(first, "source")
    data.load_task(first, "target")
    seconds, startup = {}, None
    for i, (name, study) in enumerate(sides.items()):
        if study.executor == "dask":
            start = time.perf_counter()
            with quiet():
                executor.dask_client(study)
            startup = time.perf_counter() - start
        seconds[name] = timed_batches(study, root / f"outputs-{i}", steps)
    executor.close_clients()

    n = len(first.methods) * len(first.pretrain_seeds)
    counts = dict(pretraining=n, finetuning=len(first.protocols) * (n + 1) * len(first.finetune_seeds), robustness=n,
                  knob_sweeps=len(knob_sweeps.points(first)) * len(first.pretrain_seeds))
    jobs = {k: counts[k] for k in steps}
    print(f"preset {args.preset} {' '.join(args.overrides)}: {os.cpu_count()} CPU cores, outputs under {root}")
    print(f"  {'seconds':<28} " + " ".join(f"{f'{k} ({v} jobs)':>22}" for k, v in jobs.items())
          + f" {'total':>8} {'speed-up':>9}")
    base = next(iter(seconds.values()))["total"]
    for name, s in seconds.items():
        print(f"  {name:<28} " + " ".join(f"{s[k]:22.1f}" for k in jobs)
              + f" {s['total']:8.1f} {base / s['total']:8.2f}x")
    if startup is not None:
        print(f"  (dask cluster start-up, not in its time: {startup:.1f} s)")
    print(f"  speed-up: against the first side, {next(iter(seconds))}")


if __name__ == "__main__":
    main()
