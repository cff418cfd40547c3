"""Sweep wall time: the study's independent runs on the local executor and on a Dask LocalCluster.

    .venv/bin/python benchmarks/sweep.py [--preset tiny] [--workers 2] [key=value ...]

Each side starts from an empty outputs folder (the data cache is built once, before the clock)
and runs the study's sweeps: pretraining (method x seed), finetuning (start x seed x protocol)
and robustness (one job per checkpoint). Sides, in this order:
- local, one torch thread per run (what each cluster worker does, bit for bit the same results);
- local, `workers` threads per run (the same cores as the cluster, shared inside each run);
- dask, `workers` worker processes with one thread each; the cluster's start-up (worker
  processes importing torch) is timed apart from the sweep.
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

from minima import data, finetuning, pretraining, robustness, sweep
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


def timed_sweep(study: Study, outputs: Path) -> dict[str, float]:
    """Seconds per sweep (and in all) to run the study's sweeps into an empty outputs folder."""
    os.environ["MINIMA_OUTPUTS"] = str(outputs)
    steps = {"pretraining": pretraining.pretrain_all, "finetuning": finetuning.finetune_all,
             "robustness": robustness.evaluate_study}
    seconds = {}
    with quiet():
        for name, step in steps.items():
            start = time.perf_counter()
            step(study)
            seconds[name] = time.perf_counter() - start
    return dict(seconds, total=sum(seconds.values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args()
    overrides = dict(parse_overrides(args.overrides), device="cpu")
    sides = {
        "local, 1 thread per run": Study.load(args.preset, **overrides, executor="local", threads=1),
        f"local, {args.workers} threads per run": Study.load(args.preset, **overrides, executor="local",
                                                             threads=args.workers),
        f"dask, {args.workers} workers x 1 thread": Study.load(args.preset, **overrides, executor="dask",
                                                               workers=args.workers, threads=1),
    }
    root = Path(tempfile.mkdtemp(prefix="minima-sweep-bench-"))
    os.environ["MINIMA_DATA"] = str(root / "data")
    first = next(iter(sides.values()))
    data.load_task(first, "source")
    data.load_task(first, "target")
    seconds = {}
    for i, (name, study) in enumerate(sides.items()):
        if study.executor == "dask":
            start = time.perf_counter()
            with quiet():
                sweep.dask_client(study)
            startup = time.perf_counter() - start
        seconds[name] = timed_sweep(study, root / f"outputs-{i}")
    sweep.close_clients()

    n = len(first.methods) * len(first.pretrain_seeds)
    jobs = dict(pretraining=n, finetuning=len(first.protocols) * (n + 1) * len(first.finetune_seeds), robustness=n)
    print(f"preset {args.preset} {' '.join(args.overrides)}: {os.cpu_count()} CPU cores, outputs under {root}")
    print(f"  {'seconds':<28} " + " ".join(f"{f'{k} ({v} jobs)':>22}" for k, v in jobs.items())
          + f" {'total':>8} {'speed-up':>9}")
    base = seconds["local, 1 thread per run"]["total"]
    for name, s in seconds.items():
        print(f"  {name:<28} " + " ".join(f"{s[k]:22.1f}" for k in jobs)
              + f" {s['total']:8.1f} {base / s['total']:8.2f}x")
    print(f"  (dask cluster start-up, not in its sweep time: {startup:.1f} s)")


if __name__ == "__main__":
    main()
