"""The run lock on ``--output_dir``: one run at a time writes a folder's ``log.txt`` and
checkpoints. A second run on the same folder refuses to start, naming the holder's host and pid.

The lock is ``filelock.UnixFileLock`` (``flock`` on ``run.lock``), not a ``SoftFileLock``: the
kernel releases an ``flock`` when its process dies, however it dies (SIGKILL, OOM killer, a
node's job ending), so a lock left by a dead run is free by construction and no guess about
stale pids is needed to take it over. ``flock`` carries no owner, so the holder writes its host,
pid and start time beside it into ``run.lock.holder``; a refused run reads it for its message,
and a run that finds a holder file of another process after taking the lock knows that run
died holding it (a clean exit removes the file) and says so.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import socket
from typing import Any, Dict, Iterator, Optional

import filelock

from .dist import DistState, broadcast_from_main
from .outputs import OutputWriteError, atomic_file, make_dirs, writing

logger = logging.getLogger(__name__)

LOCK_NAME = "run.lock"
HOLDER_NAME = "run.lock.holder"


class RunLockError(RuntimeError):
    """``--output_dir`` is in use by another run (the message names the folder, host and pid)."""


def _holder(path: str) -> Optional[Dict[str, Any]]:
    """The holder record in ``path`` (None when missing or unreadable: a run killed while
    writing it, or one that has the lock but has not written it yet)."""
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):  # missing or cut short: no holder known, said so by callers
        return None
    return record if isinstance(record, dict) else None


def _who(record: Optional[Dict[str, Any]]) -> str:
    if record is None:
        return "pid unknown (it has just started)"
    return (f"pid {record.get('pid')} on host {record.get('host')}, started "
            f"{record.get('started')}")


class RunLock:
    """The lock of one output folder, for this process.

    Args:
        folder: ``--output_dir`` (must exist).
    """

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.holder_path = os.path.join(folder, HOLDER_NAME)
        self._lock = filelock.UnixFileLock(os.path.join(folder, LOCK_NAME), timeout=0)

    def acquire(self) -> None:
        """Take the lock, or refuse.

        Raises:
            RunLockError: another live process holds it.
            OutputWriteError: the folder is not writable.
        """
        with writing(self._lock.lock_file):
            try:
                self._lock.acquire()
            except filelock.Timeout:  # an OSError (TimeoutError), but not a failed write
                taken = True
            else:
                taken = False
        if taken:
            raise RunLockError(
                f"--output_dir {self.folder} is in use by another run "
                f"({_who(_holder(self.holder_path))}); wait for it to end or pass another "
                f"--output_dir")
        try:
            self._write_holder()
        except BaseException:
            self._lock.release()
            raise

    def _write_holder(self) -> None:
        previous = _holder(self.holder_path)
        if previous is not None and previous.get("pid") != os.getpid():
            # The lock was free, so that process no longer holds it: it died without cleaning up.
            logger.warning("--output_dir %s: taking over the run lock left by %s, which is no "
                           "longer running", self.folder, _who(previous))
        record = {"host": socket.gethostname(), "pid": os.getpid(),
                  "started": datetime.datetime.now().isoformat(timespec="seconds")}
        with atomic_file(self.holder_path) as f:
            json.dump(record, f)

    def release(self) -> None:
        """Remove the holder record, then release the lock (in that order: a run that takes the
        lock next must never have its own record removed)."""
        try:
            os.remove(self.holder_path)
        except OSError as err:  # e.g. the folder went read-only; the next run warns of it
            logger.warning("could not remove %s: %s", self.holder_path, err)
        self._lock.release()


@contextlib.contextmanager
def output_dir_locked(folder: str, state: DistState) -> Iterator[None]:
    """Make ``folder`` and hold its run lock for the block (nothing without a folder).

    Under a launcher rank 0 alone makes the folder and takes the lock; every rank then gets its
    verdict, so a refused run stops on all ranks at once instead of leaving some waiting.

    Raises:
        RunLockError: another run holds the folder (on the other ranks: rank 0 was refused).
        OutputWriteError: the folder cannot be made or written (rank 0).
    """
    if not folder:
        yield
        return
    lock: Optional[RunLock] = None
    error: Optional[Exception] = None
    if state.rank == 0:
        try:
            make_dirs(folder)
            lock = RunLock(folder)
            lock.acquire()
        except (RunLockError, OutputWriteError) as err:
            lock, error = None, err
    verdict = broadcast_from_main(str(error) if error is not None else "")
    if error is not None:
        raise error
    if verdict:
        raise RunLockError(f"rank 0 could not start the run: {verdict}")
    try:
        yield
    finally:
        if lock is not None:
            lock.release()
