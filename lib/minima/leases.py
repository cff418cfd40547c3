"""Leases on shared run folders: one owner trains a run; a crashed owner's lease expires.

A lease is a small file created with O_EXCL (atomic on local and network file systems) that
names its owner. While the owner works, a heartbeat thread touches the file; a lease not touched
for `timeout` seconds belongs to a dead owner and may be broken (at once when the owner was a
process of this host that no longer exists). Breaking goes through a second
O_EXCL file, so two waiters never both break a lease and one of them the fresh lease of the other.
An owner whose lease was broken (it stalled past the timeout) finds out at its next heartbeat;
`check` then raises, so it never writes over the run its successor now owns.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator


class LeaseLost(RuntimeError):
    """Another worker broke this lease (its owner stalled past the timeout) and owns the run now."""


class Lease:
    """A held lease: a heartbeat keeps it alive until `release`."""

    def __init__(self, path: Path, token: str, timeout: float):
        self.path, self.token, self.timeout = path, token, timeout
        self.lost = False
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name=f"lease {path.parent.name}", daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(max(0.05, self.timeout / 4)):
            try:
                if owner(self.path) != self.token:
                    self.lost = True
                    return
                os.utime(self.path)
            except OSError:  # a network file system's hiccup: try again at the next beat
                continue

    def check(self) -> None:
        """Raise LeaseLost if another worker now owns the run."""
        if self.lost or owner(self.path) != self.token:
            self.lost = True
            raise LeaseLost(f"the lease {self.path} was broken after {self.timeout:g} s without a heartbeat; "
                            "another worker owns this run now")

    def release(self) -> None:
        """Stop the heartbeat and remove the lease file if it is still ours."""
        self._stop.set()
        self._beat.join()
        if owner(self.path) == self.token:
            self.path.unlink(missing_ok=True)


def owner(path: Path) -> str | None:
    """The token of the lease at `path`, or None when there is none (or it is being written)."""
    return _read(path).get("token")


def _read(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, ValueError):
        return {}


def _dead_here(path: Path) -> bool:
    """True when the lease's owner was a process of this host that no longer exists."""
    info = _read(path)
    if info.get("host") != socket.gethostname() or not isinstance(info.get("pid"), int):
        return False
    try:
        os.kill(info["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def age(path: Path) -> float:
    """Seconds since the file was last touched (0 if it is gone)."""
    try:
        return time.time() - Path(path).stat().st_mtime
    except FileNotFoundError:
        return 0.0


def try_lease(path: Path, timeout: float) -> Lease | None:
    """Take the lease at `path` now if it is free or its owner stopped heartbeating `timeout` seconds ago; else None."""
    path = Path(path)
    if path.exists() and (age(path) > timeout or _dead_here(path)):
        _break(path, owner(path), timeout)
    token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return None
    with os.fdopen(fd, "w") as f:
        json.dump(dict(token=token, host=socket.gethostname(), pid=os.getpid(), since=time.time()), f)
    return Lease(path, token, timeout)


def _break(path: Path, stale: str | None, timeout: float) -> None:
    """Remove the stale lease at `path` (token `stale`), unless someone else is breaking or renewed it."""
    breaker = path.with_name(path.name + ".break")
    if breaker.exists() and age(breaker) > timeout:
        breaker.unlink(missing_ok=True)  # a breaker that died between its two steps
    try:
        os.close(os.open(breaker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        return
    try:
        if owner(path) == stale and (age(path) > timeout or _dead_here(path)):
            path.unlink(missing_ok=True)
    finally:
        breaker.unlink(missing_ok=True)


@contextmanager
def leased(path: Path, timeout: float, done: Callable[[], bool], poll: float = 0.5) -> Iterator[Lease | None]:
    """Hold the lease at `path` for the block, waiting while a live owner holds it; yields None
    instead, without claiming, as soon as `done()` says there is nothing left to do."""
    told = False
    while not done():
        lease = try_lease(path, timeout)
        if lease is None:
            if not told:
                holder = _read(path)
                print(f"{path.parent.name}: leased by {holder.get('host')}:{holder.get('pid')}; waiting until it "
                      f"finishes, or for {timeout:g} s without its heartbeat", flush=True)
                told = True
            time.sleep(poll)
            continue
        try:
            # the previous owner may have finished between our check and our lease
            yield None if done() else lease
        finally:
            lease.release()
        return
    yield None
