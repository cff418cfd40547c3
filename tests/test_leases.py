"""Leases on run folders (a file `claim`): one owner per run, a dead owner's lease expires, a stalled owner cannot write over its successor."""
import json
import os
import subprocess
import sys
import threading
import time

import pytest
import torch

from minima import leases, pretraining, runstore, store
from minima.methods import Adam
from minima.train import TrainSpec, fit


def _crash(lease: leases.Lease, seconds_ago: float) -> None:
    """What a killed worker leaves: the lease file, no heartbeat, last touched `seconds_ago`."""
    lease._stop.set()
    lease._beat.join()
    old = time.time() - seconds_ago
    os.utime(lease.path, (old, old))


def test_a_claim_is_exclusive_until_released(tmp_path):
    first = leases.try_lease(tmp_path / "claim", timeout=30)
    assert first is not None
    assert leases.try_lease(tmp_path / "claim", timeout=30) is None
    first.release()
    assert not (tmp_path / "claim").exists()
    leases.try_lease(tmp_path / "claim", timeout=30).release()


def test_the_heartbeat_keeps_a_live_claim_past_its_timeout(tmp_path):
    held = leases.try_lease(tmp_path / "claim", timeout=1)
    time.sleep(3)
    assert leases.try_lease(tmp_path / "claim", timeout=1) is None
    held.check()
    held.release()


def test_a_dead_owners_claim_is_taken_over_and_the_stalled_owner_finds_out(tmp_path):
    dead = leases.try_lease(tmp_path / "claim", timeout=5)
    _crash(dead, seconds_ago=10)
    heir = leases.try_lease(tmp_path / "claim", timeout=5)
    assert heir is not None and leases.owner(tmp_path / "claim") == heir.token
    with pytest.raises(leases.LeaseLost, match="another worker owns this run now"):
        dead.check()
    dead.release()
    assert leases.owner(tmp_path / "claim") == heir.token, "releasing a lost lease must not remove the heir's"
    heir.release()


def test_a_breaker_that_died_does_not_block_the_claim_forever(tmp_path):
    dead = leases.try_lease(tmp_path / "claim", timeout=1)
    _crash(dead, seconds_ago=5)
    breaker = tmp_path / "claim.break"
    breaker.touch()
    assert leases.try_lease(tmp_path / "claim", timeout=1) is None, "a fresh breaker is respected"
    old = time.time() - 5
    os.utime(breaker, (old, old))
    assert leases.try_lease(tmp_path / "claim", timeout=1) is not None


def test_only_one_of_many_waiters_takes_over_a_stale_claim(tmp_path):
    _crash(leases.try_lease(tmp_path / "claim", timeout=1), seconds_ago=5)
    won, barrier = [], threading.Barrier(8)

    def contend():
        barrier.wait()
        lease = leases.try_lease(tmp_path / "claim", timeout=1)
        if lease is not None:
            won.append(lease)

    threads = [threading.Thread(target=contend) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1
    won[0].release()


def test_claimed_waits_for_the_owner_then_returns_nothing_to_do(tmp_path):
    finished = threading.Event()
    owner = leases.try_lease(tmp_path / "claim", timeout=30)

    def finish_later():
        time.sleep(0.5)
        finished.set()
        owner.release()

    threading.Thread(target=finish_later).start()
    start = time.perf_counter()
    with leases.leased(tmp_path / "claim", 30, done=finished.is_set, poll=0.05) as lease:
        assert lease is None
    assert time.perf_counter() - start >= 0.4


def test_a_run_whose_claim_was_broken_stops_before_writing_its_checkpoint(tiny, tmp_path):
    from minima import data, models

    task = data.load_task(tiny, "source")
    run = runstore.Run(tmp_path / "run")
    run.path.mkdir()
    lease = leases.try_lease(run.path / "claim", timeout=30)

    def steal(step, model):  # another worker breaks the lease during epoch 2
        if step == 5:
            (run.path / "claim").write_text(json.dumps(dict(token="someone-else")))

    spec = TrainSpec(epochs=3, batch_size=16, lr=1e-3, weight_decay=0.0)
    with pytest.raises(leases.LeaseLost):
        fit(models.model_for(tiny, task.n_classes), task, spec, Adam(),
            checkpoint=runstore.RunCheckpoint(run, lease), step_hook=steal)
    lease.release()
    assert list(run.epochs_log().epoch) == [1], "epoch 1 saved; epoch 2 not written over the new owner's run"


def test_pretraining_takes_over_a_crashed_run_and_resumes_it(tiny):
    run = pretraining.pretrain_run(tiny, "adam", 0)
    whole = pretraining.pretrain(tiny, "adam", 0).history()
    (run.path / "final.json").unlink()
    state = store.load_checkpoint(run.checkpoint)
    state["history"] = state["history"][:1]  # the crashed worker had saved epoch 1 of 2 ...
    store.save_checkpoint(run.checkpoint, state)
    (run.path / "epochs.jsonl").unlink()
    _crash(leases.try_lease(run.path / "claim", timeout=tiny.lease_timeout), seconds_ago=2 * tiny.lease_timeout)
    resumed = pretraining.pretrain(tiny, "adam", 0)  # ... and left its lease behind
    assert resumed.finished and not (run.path / "claim").exists()
    assert list(resumed.epochs_log().epoch) == [2], "resumed after epoch 1, not restarted"
    assert len(resumed.history()) == len(whole)


def test_a_claim_left_by_a_dead_process_of_this_host_is_taken_over_at_once(tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "claim").write_text(json.dumps(dict(token="t", host=leases.socket.gethostname(),
                                                    pid=int(gone.stdout), since=time.time())))
    heir = leases.try_lease(tmp_path / "claim", timeout=600)
    assert heir is not None, "no need to wait 600 s for a process that is gone"
    heir.release()


def test_a_heartbeat_survives_a_file_system_error(tmp_path, monkeypatch):
    held = leases.try_lease(tmp_path / "claim", timeout=0.4)
    real, failures = os.utime, []

    def flaky(path, *args):
        if not failures:
            failures.append(path)
            raise OSError(116, "Stale file handle")
        return real(path, *args)

    monkeypatch.setattr(leases.os, "utime", flaky)
    time.sleep(1.0)
    assert failures and held._beat.is_alive() and not held.lost
    held.release()


def test_a_run_finished_by_another_worker_is_not_overwritten(tiny):
    run = pretraining.pretrain(tiny, "adam", 0)
    before = {p.name: p.read_bytes() for p in run.path.iterdir() if p.is_file() and p.name != "epochs.jsonl"}
    model = runstore.load_model(tiny, run, tiny.source_classes)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    run.save(model, run.history().iloc[:1], dict(run.final(), epochs=1))
    assert {p.name: p.read_bytes() for p in run.path.iterdir() if p.is_file() and p.name != "epochs.jsonl"} == before
    assert not list(run.path.glob(".*staged"))
