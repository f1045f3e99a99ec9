"""Writing a run's files, in one place: every failed write (checkpoint, ``log.txt``, predictions,
exports) becomes one ``OutputWriteError`` whose message is one line, ``cannot write FILE:
reason`` (with a hint for a full disk or a file-size limit), which the command lines log and exit
on; files are written under a temporary name and renamed, so a failed write never replaces a
good file; and temporary files left by killed processes are found and removed at the next start.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
from typing import IO, Any, Iterator, List, Optional, Tuple

import torch

logger = logging.getLogger(__name__)

_FULL = "free space on that disk or pass another --output_dir"
_HINTS = {
    errno.ENOSPC: f"the disk is full: {_FULL}",
    errno.EDQUOT: f"the disk quota is exceeded: {_FULL}",
    errno.EFBIG: "the file-size limit (ulimit -f) is reached: raise it, or pass another "
                 "--output_dir",
    errno.EROFS: "pass an --output_dir on a writable file system",
    errno.EACCES: "pass an --output_dir you may write to",
    errno.EPERM: "pass an --output_dir you may write to",
    errno.ENOTDIR: "a part of the path is a file, not a folder: pass another --output_dir",
}

# ``<name>.tmp.<pid>``: the temporary name of every atomic write (``temporary_path``).
_TMP_FILE = re.compile(r"^.+\.tmp\.(\d+)$")
# DeepSpeed writes a checkpoint folder under ``checkpoint-<tag>.tmp`` and renames it.
_TMP_DEEPSPEED = re.compile(r"^checkpoint-.+\.tmp$")


class OutputWriteError(Exception):
    """A file of the run could not be written; the message is one line naming the file.

    Args:
        path: the file (or folder) that was being written.
        reason: why, e.g. ``No space left on device (the disk is full: ...)``.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot write {path}: {reason}")
        self.path, self.reason = path, reason

    def __reduce__(self) -> Tuple[Any, Tuple[str, str]]:  # pickles (all_gather, broadcast)
        return type(self), (self.path, self.reason)


def os_error_in(err: BaseException) -> Optional[OSError]:
    """The ``OSError`` that caused ``err`` (itself, or one in its ``__cause__``/``__context__``
    chain): ``torch.save`` reports a failed write as a RuntimeError chained to it."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
    return None


def write_error(path: str, err: OSError) -> OutputWriteError:
    """The one-line error of a failed write of ``path``: the system's reason and a hint."""
    reason = err.strerror or str(err) or type(err).__name__
    hint = _HINTS.get(err.errno or 0)
    return OutputWriteError(path, f"{reason} ({hint})" if hint else reason)


@contextlib.contextmanager
def writing(path: str) -> Iterator[None]:
    """Turn any failure of the block caused by an ``OSError`` into an ``OutputWriteError``
    naming ``path``; other errors pass unchanged."""
    try:
        yield
    except OutputWriteError:
        raise
    except Exception as err:  # torch wraps the OSError of a failed write in a RuntimeError
        cause = os_error_in(err)
        if cause is None:
            raise
        raise write_error(path, cause) from err


def temporary_path(path: str) -> str:
    """Where ``path`` is written before its rename: beside it, named after this process, so a
    later start can tell a dead writer's leftover from a live one's (``remove_stale_temporaries``)."""
    return f"{path}.tmp.{os.getpid()}"


def _remove_if_there(path: str) -> None:
    # Cleaning up after a failed write: the write's own error is the one worth reporting.
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


@contextlib.contextmanager
def atomic_file(path: str, mode: str = "w", **open_kwargs: Any) -> Iterator[IO[Any]]:
    """A file to write ``path`` through: the block writes a temporary file, which is flushed to
    disk and renamed onto ``path`` only when the block succeeds; on any error it is removed, so
    ``path`` is the previous complete file or the new one, never a partial one.

    Args:
        path: the file to write.
        mode: ``"w"`` (text, UTF-8 unless ``encoding`` is given) or ``"wb"``.
        open_kwargs: passed to ``open`` (``newline``, ``encoding``).

    Raises:
        OutputWriteError: the file could not be written (full disk, read-only, ...).
    """
    if "b" not in mode:
        open_kwargs.setdefault("encoding", "utf-8")
    tmp = temporary_path(path)
    with writing(path):
        try:
            with open(tmp, mode, **open_kwargs) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            _remove_if_there(tmp)
            raise


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save`` to ``path`` through a temporary file in the same folder and a rename.

    The temporary file is flushed to disk before the rename, so at any moment ``path`` is either
    the previous complete file or the new complete file, never a partial one; on failure the
    temporary file is removed.

    Raises:
        OutputWriteError: the file could not be written (full disk, read-only folder, ...).
    """
    with atomic_file(path, "wb") as f:
        torch.save(obj, f)


def make_dirs(path: str) -> None:
    """``os.makedirs(path, exist_ok=True)``; a failure is an ``OutputWriteError`` naming it."""
    with writing(path):
        os.makedirs(path, exist_ok=True)


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this host (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _size(path: str) -> int:
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(root, name))
                   for root, _, names in os.walk(path) for name in names)
    return os.path.getsize(path)


def stale_temporaries(folder: str) -> List[str]:
    """Temporary files and folders in ``folder`` whose writer is gone: ``*.tmp.<pid>`` of a pid
    that no longer runs on this host, and DeepSpeed's ``checkpoint-<tag>.tmp`` folders (these
    carry no pid; call only while holding the folder's run lock, so no live run writes them)."""
    found = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        m = _TMP_FILE.match(name)
        if m and os.path.isfile(path):
            pid = int(m.group(1))
            if pid != os.getpid() and not pid_alive(pid):
                found.append(path)
        elif _TMP_DEEPSPEED.match(name) and os.path.isdir(path):
            found.append(path)
    return found


def remove_stale_temporaries(folder: str) -> Tuple[int, int]:
    """Remove ``stale_temporaries(folder)``; logs one line with their number and the space
    freed. Returns ``(count, bytes)``."""
    count, freed = 0, 0
    for path in stale_temporaries(folder):
        size = _size(path)
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
        count, freed = count + 1, freed + size
    if count:
        logger.warning("removed %d temporary file(s) left in %s by killed runs (%.1f MB freed)",
                       count, folder, freed / 2 ** 20)
    return count, freed
