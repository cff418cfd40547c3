"""The executor: local, and a real 2-worker Dask LocalCluster that loses a worker mid-batch."""
import json
import os
import signal
import sys
import threading
import time

import pandas as pd
import pytest
import torch

from minima import executor, finetuning, landscape, pretraining, robustness, runstore
from minima.config import ConfigError, Study


def _square(study, x):
    if x == 3:
        raise ValueError("three is not allowed")
    return x * x


def test_the_local_executor_keeps_order_and_reports_every_failure_at_the_end(tiny, capsys):
    jobs = [executor.Job(f"x{x}", _square, (x,)) for x in range(5)]
    with pytest.raises(executor.JobsFailed, match=r"squares: 1 job\(s\) failed, the others finished: "
                                                r"x3: ValueError: three is not allowed") as err:
        executor.run(tiny, jobs, "squares")
    assert list(err.value.failures) == ["x3"]
    assert "5/5 [" in capsys.readouterr().err.split("\r")[-1], "the failed job counts as finished"
    assert executor.run(tiny, jobs[:3], "squares") == [0, 1, 4]
    printed = capsys.readouterr()
    assert printed.out == "" and printed.err.split("\r")[-1].startswith("squares: 100%")
    assert "3/3 [" in printed.err and "0 running, 0 failed]" in printed.err


def test_job_keys_must_be_unique(tiny):
    with pytest.raises(ValueError, match=r"repeated: \['a'\]"):
        executor.run(tiny, [executor.Job("a", _square, (1,)), executor.Job("a", _square, (2,))], "squares")


def test_a_job_runs_with_the_studys_threads_and_the_callers_are_restored():
    before = torch.get_num_threads()
    with executor.torch_threads(3):
        assert torch.get_num_threads() == 3
    assert torch.get_num_threads() == before
    with executor.torch_threads(0):
        assert torch.get_num_threads() == before


@pytest.mark.parametrize("value", ["nowhere", "slurmm"])
def test_a_scheduler_that_is_no_address_is_refused(value):
    with pytest.raises(ConfigError, match=rf"scheduler='{value}' is out of range; expected .*tcp://host:8786"):
        Study.load("tiny", scheduler=value)


def test_execution_settings_share_the_presets_folder_and_cache_keys():
    base, dask = Study.load("tiny"), Study.load("tiny", executor="dask", workers=4, threads=2, compile=True)
    assert dask.name == base.name == "tiny"
    assert pretraining.pretrain_run(dask, "adam", 0) == pretraining.pretrain_run(base, "adam", 0)


def test_a_slurm_cluster_comes_from_dask_jobqueue_with_this_python():
    import dask

    with dask.config.set({"jobqueue.slurm.scheduler-options": {"dashboard_address": ":0"}}):
        with pytest.raises(ConfigError, match=r"scheduler='slurm': set cores and memory under jobqueue.slurm"):
            executor.jobqueue_cluster("slurm")
        with dask.config.set({"jobqueue.slurm.cores": 4, "jobqueue.slurm.memory": "16GB"}):
            cluster = executor.jobqueue_cluster("slurm")
            script = cluster.job_script()
            cluster.close()
    assert "#SBATCH" in script and f"{sys.executable} -m distributed.cli.dask_worker" in script


# ---------------------------------------------------------------- a real cluster

def _run_jobs(study: Study) -> dict[str, pd.DataFrame]:
    """The study's run tables, with wall-clock columns and run folder names dropped."""
    pretrained = pretraining.pretrain_all(study)
    finetuned = finetuning.finetune_all(study)
    robust = robustness.evaluate_study(study)
    slices = landscape.study_slices(study)
    return dict(
        pretrained=pretrained.drop(columns=["seconds"]),
        pretrain_histories=pretraining.pretrain_histories(study).drop(columns=["seconds"]),
        finetuned=finetuned.drop(columns=["seconds"]),
        finetune_histories=finetuning.finetune_tables(study, "history").drop(columns=["seconds"]),
        distances=finetuning.finetune_tables(study, "distances"),
        robustness=robust, slices=slices)


def _epoch_logs() -> dict[str, pd.DataFrame]:
    return {p.name: runstore.Run(p).epochs_log() for kind in ("pretrain", "finetune")
            for p in (runstore.runs_root() / kind).iterdir()}


def _kill_a_worker_mid_run(deadline: float) -> tuple[str, int]:
    """SIGKILL the worker that holds the lease on a pretraining run with 2 to 10 of its 25 epochs saved."""
    while time.time() < deadline:
        for lease in (runstore.runs_root() / "pretrain").glob("*/claim"):
            run = runstore.Run(lease.parent)
            try:
                owner = json.loads(lease.read_text())
            except (FileNotFoundError, ValueError):
                continue
            if 2 <= len(run.epochs_log()) <= 10:  # saved epochs to resume from, and some left to train
                os.kill(owner["pid"], signal.SIGKILL)
                return run.name, owner["pid"]
        time.sleep(0.02)
    raise AssertionError("no pretraining run was caught mid-training")


@pytest.fixture
def closing_clients():
    """Close the Dask clients and clusters a test started, whether it passed or not."""
    yield
    executor.close_clients()


@pytest.mark.heavy
def test_a_dask_cluster_gives_the_local_tables_and_a_killed_worker_loses_nothing(tmp_path, monkeypatch,
                                                                               closing_clients):
    settings = dict(pretrain_epochs=25, lease_timeout=3)
    monkeypatch.setenv("MINIMA_OUTPUTS", str(tmp_path / "local"))
    local = _run_jobs(Study.load("tiny", **settings))

    monkeypatch.setenv("MINIMA_OUTPUTS", str(tmp_path / "dask"))
    study = Study.load("tiny", executor="dask", workers=2, **settings)
    client = executor.dask_client(study)
    assert set(client.run(os.environ.get, executor.TRIM).values()) == {None}, \
        "Dask's 64 KiB malloc trim threshold makes training 1.4-1.8x slower in a worker"
    first: dict = {}
    running = threading.Thread(target=lambda: first.update(tables=_run_jobs(study)))
    running.start()
    killed, pid = _kill_a_worker_mid_run(time.time() + 120)
    running.join(timeout=300)
    assert "tables" in first, "the jobs finished after losing a worker"

    logs = _epoch_logs()
    resumed = logs[killed]
    by_killed = resumed[resumed.worker.str.endswith(f":{pid}")].epoch
    by_heir = resumed[~resumed.worker.str.endswith(f":{pid}")].epoch
    assert len(by_killed) >= 2 and len(by_heir) >= 1
    assert by_killed.max() < by_heir.min(), "the heir resumed after the killed worker's last saved epoch"
    log = (runstore.runs_root() / "pretrain" / killed / "log.txt").read_text()
    assert f"resuming after epoch {by_heir.min() - 1}" in log, "the heir's resume is in the run's log"
    for name, log in logs.items():
        assert log.epoch.is_unique, f"{name}: an epoch was trained twice: {sorted(log.epoch)}"
    finals = {p: p.stat().st_mtime_ns for p in runstore.runs_root().glob("*/*/final.json")}

    again = _run_jobs(study)  # the jobs started again: everything is found finished
    assert {name: len(log) for name, log in _epoch_logs().items()} == {name: len(log) for name, log in logs.items()}
    assert {p: p.stat().st_mtime_ns for p in runstore.runs_root().glob("*/*/final.json")} == finals
    assert not list(runstore.runs_root().glob("*/*/claim"))
    # bit for bit: every job runs the same operations in the same order wherever it runs, with the
    # study's torch thread count (tiny: 1) set in the worker as locally (executor.torch_threads), and a
    # resumed run continues bit for bit (test_train); float sums split over other thread counts would not be
    for name in local:
        pd.testing.assert_frame_equal(first["tables"][name], local[name], check_exact=True, obj=name)
        pd.testing.assert_frame_equal(again[name], local[name], check_exact=True, obj=name)
