"""The study's executor: batches of independent jobs (training runs, evaluations), run here or on Dask.

`local` runs the jobs one after another in this process. `dask` submits them to a
`dask.distributed` cluster: a `LocalCluster` started here (scheduler ""), an existing scheduler
(its address), or SLURM / PBS jobs through dask-jobqueue (scheduler "slurm" / "pbs", configured
in dask's jobqueue.yaml). Jobs read and write the shared outputs folder; run folders are leased
(see `leases`), so two workers never train the same run.
"""
from __future__ import annotations

import atexit
import functools
import html
import importlib
import os
import re
import uuid
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import dask
import distributed
import torch
from distributed import Client, LocalCluster, WorkerPlugin
from tqdm import tqdm

from minima import paths
from minima.config import ConfigError, Study
from minima.train import VERBOSE

JOBQUEUES = ("slurm", "pbs")
TRIM = "MALLOC_TRIM_THRESHOLD_"


@dataclass(frozen=True)
class Job:
    """One independent unit of work, `fn(study, *args)`, named `key` (unique within its batch).

    `done`: the job only loads stored results, so it runs in this process whatever the executor.
    """

    key: str
    fn: Callable[..., Any]
    args: tuple = ()
    done: bool = False


class JobsFailed(RuntimeError):
    """Some jobs of a batch failed; every other job finished and stored its results."""

    def __init__(self, title: str, failures: dict[str, BaseException]):
        self.failures = failures
        lines = "; ".join(f"{key}: {type(err).__name__}: {err}" for key, err in failures.items())
        super().__init__(f"{title}: {len(failures)} job(s) failed, the others finished: {lines}")


def run(study: Study, jobs: Sequence[Job], title: str) -> list[Any]:
    """The results of `jobs`, in their order, from the study's executor (jobs that are `done` and
    every job of the local executor run here), under one progress bar when some job computes.
    Failures are raised together (JobsFailed) once every other job has finished."""
    keys = [job.key for job in jobs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{title}: job keys must be unique; repeated: {sorted({k for k in keys if keys.count(k) > 1})}")
    remote = [job for job in jobs if study.executor == "dask" and not job.done]
    results: dict[str, Any] = {}
    failures: dict[str, BaseException] = {}
    # the stored results first, before the bar starts: its rate and ETA are those of the jobs that compute
    _run_local(study, [job for job in jobs if job.done], None, results, failures)
    if any(not job.done for job in jobs):
        with Progress(title, len(jobs), stored=len(results) + len(failures)) as progress:
            _run_local(study, [job for job in jobs if not job.done and job not in remote], progress, results, failures)
            if remote:
                _run_dask(study, remote, progress, results, failures)
    if failures:
        raise JobsFailed(title, {k: failures[k] for k in keys if k in failures})
    return [results[k] for k in keys]


def execute(job: Job, study: Study, environ: dict[str, str]) -> Any:
    """Run one job where it lands (this process or a Dask worker) with the driver's folders and verbosity."""
    os.environ.update(environ)
    if os.environ.get(TRIM):
        _warn_trim(os.environ[TRIM])
    if _on_worker():
        # torch's thread count is per process: set, never restored, so that jobs running side by
        # side in one worker (with --nthreads > 1) cannot change each other's count mid-run
        if study.threads > 0:
            torch.set_num_threads(study.threads)
        return job.fn(study, *job.args)
    with torch_threads(study.threads):
        return job.fn(study, *job.args)


def _on_worker() -> bool:
    try:
        distributed.get_worker()
    except ValueError:
        return False
    return True


@functools.cache
def _warn_trim(value: str) -> None:
    warnings.warn(f"this worker runs with {TRIM}={value} (Dask's default for the workers a nanny spawns), which "
                  "made training 1.4-1.8x slower; start workers without it (docs/cluster-and-gpu.md)")


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to `n` for the block (0: leave them as they are).

    Float sums split over a different number of threads round differently, so a fixed `n`
    is what makes a run's results the same bit for bit in any process.
    """
    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _environ() -> dict[str, str]:
    """What a job needs of the driver's environment: its folders, and whether run logs reach the terminal."""
    return {"MINIMA_OUTPUTS": str(paths.outputs_dir().resolve()), "MINIMA_DATA": str(paths.data_dir().resolve()),
            VERBOSE: os.environ.get(VERBOSE, "")}


def _run_local(study: Study, jobs: Sequence[Job], progress: "Progress | None", results: dict[str, Any],
               failures: dict[str, BaseException]) -> None:
    environ = _environ()
    for job in jobs:
        if progress is not None:
            progress.show(done=len(results), running=1, failed=len(failures))
        try:
            results[job.key] = execute(job, study, environ)
        except Exception as err:  # the others still run; all failures are reported at the end
            failures[job.key] = err
    if progress is not None:
        progress.show(done=len(results), running=0, failed=len(failures))


def _run_dask(study: Study, jobs: Sequence[Job], progress: "Progress", results: dict[str, Any],
              failures: dict[str, BaseException]) -> None:
    client = dask_client(study, preload=sorted({job.fn.__module__ for job in jobs}))
    progress.dashboard = client.dashboard_link
    environ, tag = _environ(), uuid.uuid4().hex[:8]
    futures = {job.key: client.submit(execute, job, study, environ, key=f"{progress.title}-{job.key}-{tag}",
                                      pure=False) for job in jobs}
    ended = ("finished", "error", "cancelled")
    try:
        while True:
            status = [f.status for f in futures.values()]
            progress.show(done=len(results) + status.count("finished"), running=_running(client, futures.values()),
                          failed=len(failures) + status.count("error") + status.count("cancelled"))
            pending = [f for f in futures.values() if f.status not in ended]
            if not pending:
                break
            try:  # wake at the next finished job, or after half a second to refresh "running"
                distributed.wait(pending, timeout=0.5, return_when="FIRST_COMPLETED")
            except TimeoutError:
                pass
        for key, f in futures.items():
            if f.status == "finished":
                results[key] = f.result()
            else:
                failures[key] = f.exception() if f.status == "error" else RuntimeError("cancelled")
    finally:
        client.cancel([f for f in futures.values() if f.status not in ended])
        for f in futures.values():
            f.release()  # the results are stored; a later worker loss must not recompute them
    progress.show(done=len(results), running=0, failed=len(failures))


def _running(client, futures: Sequence[Any]) -> int:
    """Jobs a worker is on: those the scheduler assigned, at most one per worker thread."""
    mine = {f.key for f in futures}
    per_worker = client.processing()
    threads = client.nthreads()
    return sum(min(len(mine.intersection(keys)), threads.get(w, 1)) for w, keys in per_worker.items())


# ---------------------------------------------------------------- clusters

_CLIENTS: dict[tuple[str, int], Any] = {}


def dask_client(study: Study, preload: Sequence[str] = ()) -> Client:
    """The `distributed.Client` of the study's scheduler, connected (or its cluster started) once per process;
    a cluster it starts imports the `preload` modules on every worker as it joins."""
    key = (study.scheduler, study.workers)
    client = _CLIENTS.get(key)
    if client is not None and client.status != "running":
        _close(_CLIENTS.pop(key))
        client = None
    if client is None:
        client = _CLIENTS[key] = _connect(study, preload)
    return client


def _connect(study: Study, preload: Sequence[str]) -> Client:
    with dask.config.set({"distributed.nanny.pre-spawn-environ": worker_environ()}):
        if study.scheduler == "":
            # one job at a time per worker process; the job itself sets torch's threads
            cluster = LocalCluster(n_workers=study.workers, threads_per_worker=1, processes=True,
                                   dashboard_address=":0")
        elif study.scheduler in JOBQUEUES:
            cluster = jobqueue_cluster(study.scheduler)
            cluster.scale(jobs=study.workers)
        else:
            cluster = None
    try:
        client = Client(cluster if cluster is not None else study.scheduler, timeout="30s")
        client.minima_cluster = cluster  # closed with the client at exit
        client.register_plugin(Preload(tuple(preload)))
    except Exception:
        if cluster is not None:
            cluster.close()
        raise
    return client


def worker_environ() -> dict[str, Any]:
    """Dask's environment for the worker processes it spawns, without MALLOC_TRIM_THRESHOLD_.

    Dask sets it to 64 KiB, so glibc hands every freed tensor buffer back to the OS and faults
    it in again at the next step: training ran 1.4-1.8x slower in a worker than alone.
    """
    env = dask.config.get("distributed.nanny.pre-spawn-environ")
    return {k: v for k, v in env.items() if k != TRIM}


class Preload(WorkerPlugin):
    """Import the jobs' modules on every worker as it joins, so that no job pays for importing torch.

    The caller names the modules: the executor imports none of the measures it runs."""

    def __init__(self, modules: tuple[str, ...]) -> None:
        self.modules = modules

    def setup(self, worker) -> None:
        for name in self.modules:
            importlib.import_module(name)


def jobqueue_cluster(kind: str):
    """A dask-jobqueue cluster for `kind` ("slurm" or "pbs"), configured by dask's jobqueue.yaml."""
    try:
        import dask_jobqueue
    except ImportError as err:
        raise ConfigError(f"scheduler={kind!r} needs dask-jobqueue: pip install dask-jobqueue") from err
    try:
        return {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster}[kind]()
    except ValueError as err:  # a missing setting; nothing was submitted
        raise ConfigError(f"scheduler={kind!r}: set cores and memory under jobqueue.{kind} in "
                          f"~/.config/dask/jobqueue.yaml ({err})") from err


@atexit.register
def close_clients() -> None:
    """Close every client this process opened, and the clusters it started."""
    while _CLIENTS:
        _close(_CLIENTS.popitem()[1])


def _close(client: Client) -> None:
    cluster = getattr(client, "minima_cluster", None)
    client.close()
    if cluster is not None:
        cluster.close()


# ---------------------------------------------------------------- progress

class Progress:
    """One bar per batch of jobs: jobs finished of all, with tqdm's rate and ETA, the jobs stored, running and failed
    beside them. In a notebook, one display updated in place (`NotebookBar`); elsewhere tqdm's bar on stderr."""

    def __init__(self, title: str, total: int, stored: int):
        self.title, self.stored, self.dashboard = title, stored, ""
        self.last: tuple[int, int, int] | None = None
        bar = NotebookBar if _in_notebook() else tqdm
        # refreshed at every change of the counts (they change once per job), never in between
        self.bar = bar(total=total, initial=stored, desc=title, unit="job", mininterval=0, miniters=0)

    def show(self, done: int, running: int, failed: int) -> None:
        """Show the counts (`done` includes the stored jobs) if they changed."""
        if self.last == (done, running, failed):
            return
        self.last = (done, running, failed)
        stored = f"{self.stored} stored, " if self.stored else ""
        link = f", Dask dashboard: {self.dashboard}" if self.dashboard else ""
        self.bar.set_postfix_str(f"{stored}{running} running, {failed} failed{link}", refresh=False)
        self.bar.update(done + failed - self.bar.n)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()


class NotebookBar(tqdm):
    """tqdm's bar as one notebook output updated in place: its text, and in HTML a <progress> element between
    the counts, the Dask dashboard a link. Unlike tqdm.notebook's widget, which an executed notebook keeps at
    "0%" and whose HTML export loads its renderer from a CDN, what a headless run keeps is the bar's last state."""

    def __init__(self, *args, **kwargs):
        from IPython.display import display

        self.handle = display({"text/plain": ""}, raw=True, display_id=True)
        super().__init__(*args, gui=True, **kwargs)  # gui: tqdm writes nothing itself, it calls `display`
        self.display()

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        """Replace the output with the bar's current state."""
        meter = self.format_dict
        left, right = (html.escape(part) for part in re.split(
            r"\|?<bar/>\|?", self.format_meter(**{**meter, "bar_format": "{l_bar}<bar/>{r_bar}"}), maxsplit=1))
        right = re.sub(r"https?://[^\s\]]+", lambda m: f'<a href="{m[0]}" target="_blank">{m[0]}</a>', right)
        page = f'<code>{left}</code> <progress value="{self.n}" max="{self.total}"></progress> <code>{right}</code>'
        self.handle.update({"text/plain": self.format_meter(**meter), "text/html": page}, raw=True)
        return True

    def clear(self, *args, **kwargs) -> None:
        """Nothing to clear before tqdm.write prints: the output is replaced, never overwritten."""

    def close(self) -> None:
        if not self.disable:
            self.display()
        super().close()


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"
