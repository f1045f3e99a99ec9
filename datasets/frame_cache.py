"""Every frame of each listed video, decoded once (``--cache_videos``; docs/DATA.md, 'Frame
cache').

On a CPU, decoding a small video costs far more than a tiny model's step, and a short run on a
small data set decodes the same videos every epoch. :func:`cached_frames` decodes every frame
of each video of a list once (in parallel, in DataLoader workers) into one flat uint8 buffer; the
data sets then pick their frame indices from the cached frames exactly as they would from the
decoder (same frame count, same frames, same order), so the random sampling, crops, flips and
RandAugment of each epoch are unchanged and a run gives the same numbers with or without it.
The cache holds decoded frames, never augmented clips.

Where it lives:

* in memory (default): filled once in the main process before the loaders start, so forked
  DataLoader workers share its pages instead of each holding or refilling a copy;
* on disk with ``--cache_dir DIR``: one uint8 ``.npy`` per list (and a ``.json`` index),
  named by a hash of the decoder and of every video's path, size and modification time, so a
  changed or re-rendered video gives a new file. The first run decodes and writes it (atomically,
  under a file lock, so concurrent runs wait for one writer instead of decoding it twice); every
  later run on the same videos maps it read-only: the many short runs of a sweep on one data set
  decode it once in all, and concurrent runs share one copy in the page cache.

Videos that cannot be decoded whole are not stored; the data set reads them per item as it does
without the cache, so bad videos are reported, counted and replaced exactly as there.
``--cache_max_gb`` caps the decoded size of all lists of a run (memory, or disk and page cache).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import filelock
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from utils.config import ConfigError
from utils.outputs import atomic_file, make_dirs, remove_stale_temporaries

from . import decoders
from .decoders import VideoDecodeError

logger = logging.getLogger(__name__)

# Bumped when the layout of the files in --cache_dir changes (it is part of their names).
FORMAT_VERSION = 1
# Columns of a store's index: byte offset in the buffer, frame count, height, width.
OFFSET, FRAMES, HEIGHT, WIDTH = range(4)


class CacheTooLarge(ConfigError):
    """The decoded frames would exceed ``--cache_max_gb``; the message names the flags."""


class CacheBudget:
    """What is left of ``--cache_max_gb`` for the lists of one run.

    Args:
        max_gb: ``--cache_max_gb``.
    """

    def __init__(self, max_gb: float) -> None:
        self.max_gb = float(max_gb)
        self.left = int(self.max_gb * 2 ** 30)

    def take(self, nbytes: int, what: str) -> None:
        """Count ``nbytes`` more of cached frames.

        Raises:
            CacheTooLarge: the run's cached frames would exceed the limit (names ``what``).
        """
        self.left -= int(nbytes)
        if self.left < 0:
            raise CacheTooLarge(
                f"caching the decoded frames of {what} takes more than --cache_max_gb "
                f"{self.max_gb:g} GiB (with the lists cached before it); raise --cache_max_gb "
                f"or drop --cache_videos")


class FrameStore:
    """Decoded frames of a list's videos, looked up by path.

    Args:
        paths: the distinct video paths, in the order of ``index``.
        buffer: 1-D uint8, every stored video's ``(frames, H, W, 3)`` frames one after another.
        index: int64 ``(len(paths), 4)``: byte offset, frame count (0: not stored), height, width.
        file: the ``.npy`` that ``buffer`` maps ('' when it lives in memory only).
        failed: path -> why it could not be decoded whole (not stored).
    """

    def __init__(self, paths: Sequence[str], buffer: np.ndarray, index: np.ndarray,
                 file: str = "", failed: Optional[Dict[str, str]] = None) -> None:
        self.paths = list(paths)
        self.buffer = buffer
        self.index = np.asarray(index, dtype=np.int64).reshape(len(self.paths), 4)
        self.file = file
        self.failed = dict(failed or {})
        self._row = {p: i for i, p in enumerate(self.paths)}

    def __len__(self) -> int:
        """Videos stored (not counting the failed ones)."""
        return int((self.index[:, FRAMES] > 0).sum())

    @property
    def nbytes(self) -> int:
        """Size of the decoded frames."""
        return int(self.buffer.nbytes)

    def get(self, path: str) -> Optional[np.ndarray]:
        """Read-only uint8 ``(frames, H, W, 3)`` of ``path``; None when not stored (a video
        that failed to decode whole, or one of another list)."""
        row = self._row.get(path)
        if row is None:
            return None
        offset, n, h, w = (int(v) for v in self.index[row])
        if n == 0:
            return None
        return self.buffer[offset:offset + n * h * w * 3].reshape(n, h, w, 3)

    def __getstate__(self) -> Dict[str, Any]:
        # A spawn-started worker maps the file again rather than receiving a pickled copy.
        state = dict(self.__dict__)
        if self.file:
            state["buffer"] = None
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.buffer is None:
            self.buffer = _map(self.file, int(np.prod(self.index[:, 1:], axis=1).sum() * 3))


# --------------------------------------------------------------------------------- decoding
def _identity(item: Any) -> Any:
    return item  # module level (not a lambda) so spawn-started workers can pickle it


class _FullDecode(Dataset):
    """Every frame of each video (a bad video gives its error instead)."""

    def __init__(self, paths: Sequence[str], backend: str) -> None:
        self.paths = paths
        self.backend = backend

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Tuple[int, Optional[torch.Tensor], str]:
        try:
            reader = decoders.open_video(self.paths[i], self.backend)
            frames = reader.get_batch(np.arange(len(reader)))
        except VideoDecodeError as err:
            return i, None, err.reason
        # A tensor travels from the worker through shared memory, not a pickled copy.
        return i, torch.from_numpy(np.ascontiguousarray(frames)), ""


def decode_all(paths: Sequence[str], backend: str, num_workers: int, budget: CacheBudget,
               what: str) -> FrameStore:
    """Decode every frame of each video into one in-memory :class:`FrameStore`.

    Args:
        paths: distinct video files or frame folders.
        backend: ``--video_backend``.
        num_workers: decoding processes (0: this one).
        budget: the run's ``--cache_max_gb`` left; the frames are counted against it.
        what: the list, for messages.

    Raises:
        CacheTooLarge: past the budget.
    """
    # A private generator: the loader draws its workers' base seed from it, which would
    # otherwise come from the global torch generator and change the run's random numbers.
    loader = DataLoader(_FullDecode(paths, backend), batch_size=None, shuffle=False,
                        num_workers=num_workers, collate_fn=_identity,
                        generator=torch.Generator())
    arrays: List[Optional[np.ndarray]] = [None] * len(paths)
    failed: Dict[str, str] = {}
    for i, frames, reason in loader:
        if frames is None:
            failed[paths[i]] = reason
            continue
        budget.take(frames.numel(), what)
        arrays[i] = frames.numpy()
    index = np.zeros((len(paths), 4), dtype=np.int64)
    offset = 0
    for i, a in enumerate(arrays):
        if a is not None:
            index[i] = (offset, a.shape[0], a.shape[1], a.shape[2])
            offset += a.size
    buffer = np.empty(offset, dtype=np.uint8)
    for i, a in enumerate(arrays):
        if a is not None:
            buffer[index[i, OFFSET]:index[i, OFFSET] + a.size] = a.reshape(-1)
            arrays[i] = None  # frees the worker's copy as the buffer fills
    return FrameStore(paths, buffer, index, failed=failed)


# --------------------------------------------------------------------------------- on disk
def _stat_key(path: str) -> str:
    """Size and modification time of a file, or of each frame file of a folder."""
    try:
        if os.path.isdir(path):
            parts = []
            for name in sorted(os.listdir(path)):
                st = os.stat(os.path.join(path, name))
                parts.append(f"{name}:{st.st_size}:{st.st_mtime_ns}")
            return "dir " + " ".join(parts)
        st = os.stat(path)
        return f"{st.st_size}:{st.st_mtime_ns}"
    except OSError as err:  # a missing video is part of the key (it fails per item)
        return f"unreadable {err.errno}"


def cache_key(paths: Sequence[str], backend: str) -> str:
    """Name of a list's files in ``--cache_dir``: the format, the decoder, and every video's
    path, size and modification time (any change gives another name)."""
    h = hashlib.sha256(f"frames v{FORMAT_VERSION} {backend}\n".encode())
    for p in paths:
        h.update(f"{p}\t{_stat_key(p)}\n".encode())
    return f"frames-{backend}-{h.hexdigest()[:24]}"


def _map(file: str, nbytes: int) -> np.ndarray:
    """The buffer of a cache file, mapped read-only (an empty one cannot be mapped)."""
    if nbytes == 0:
        return np.zeros(0, dtype=np.uint8)
    return np.asarray(np.load(file, mmap_mode="r"))  # an ndarray view: indexing copies


def _load(base: str, paths: Sequence[str]) -> Optional[FrameStore]:
    """The store written under ``base`` (``.npy`` + ``.json``), or None if there is none."""
    meta_file = base + ".json"
    if not os.path.isfile(meta_file):
        return None
    with open(meta_file, encoding="utf-8") as f:
        meta = json.load(f)
    if meta.get("paths") != list(paths):  # a hash collision, or a hand-edited file
        raise ConfigError(f"{meta_file} does not describe these videos: delete it and its .npy "
                          f"from --cache_dir")
    return FrameStore(paths, _map(base + ".npy", int(meta["bytes"])),
                      np.asarray(meta["index"], dtype=np.int64),
                      file=base + ".npy", failed=meta["failed"])


def _write(base: str, store: FrameStore, backend: str, what: str) -> None:
    """Write ``store`` under ``base``: the frames first, then the index that marks it
    complete (each through a temporary file and a rename)."""
    with atomic_file(base + ".npy", "wb") as f:
        np.save(f, store.buffer)
    meta = {"format": FORMAT_VERSION, "backend": backend, "list": what,
            "bytes": store.nbytes, "paths": store.paths, "index": store.index.tolist(),
            "failed": store.failed}
    with atomic_file(base + ".json") as f:
        json.dump(meta, f)


def cached_frames(paths: Sequence[str], backend: str, num_workers: int, budget: CacheBudget,
                  cache_dir: str = "", what: str = "the list") -> FrameStore:
    """Every frame of each video, decoded once: in memory, or mapped from ``cache_dir``
    (decoded and written there by the first run on these videos).

    Args:
        paths: the list's video paths (repeats are decoded once).
        backend: ``--video_backend``.
        num_workers: decoding processes (``--num_workers``).
        budget: the run's ``--cache_max_gb`` left.
        cache_dir: ``--cache_dir`` ('' : memory only).
        what: the list file, for messages.

    Raises:
        CacheTooLarge: the frames exceed ``--cache_max_gb``.
        OutputWriteError: ``cache_dir`` cannot be written.
    """
    start = time.time()
    distinct = list(dict.fromkeys(paths))
    source = "decoded"
    if not cache_dir:
        store = decode_all(distinct, backend, num_workers, budget, what)
    else:
        make_dirs(cache_dir)
        remove_stale_temporaries(cache_dir)  # left by killed runs
        base = os.path.join(cache_dir, cache_key(distinct, backend))
        lock = filelock.FileLock(base + ".lock")
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            logger.info("waiting for another run to finish writing %s.npy", base)
            lock.acquire()
        try:
            store = _load(base, distinct)
            if store is not None:
                budget.take(store.nbytes, what)
                source = f"mapped from {base}.npy"
            else:
                filled = decode_all(distinct, backend, num_workers, budget, what)
                _write(base, filled, backend, what)
                # Mapped back: concurrent runs share the page cache instead of private copies.
                store = _load(base, distinct)
                source = f"decoded into {base}.npy"
        finally:
            lock.release()
    logger.info("frame cache of %s: %d videos, %.1f MiB, %s in %.1fs", what, len(store),
                store.nbytes / 2 ** 20, source, time.time() - start)
    if store.failed:
        first = next(iter(store.failed.items()))
        logger.warning("frame cache of %s: %d videos could not be decoded whole (first: %s: %s)",
                       what, len(store.failed), *first)
    return store


__all__ = ["CacheBudget", "CacheTooLarge", "FrameStore", "cached_frames", "cache_key",
           "decode_all", "FORMAT_VERSION"]
