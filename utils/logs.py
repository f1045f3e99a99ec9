"""Logging: rank-0 ``logging`` set-up, MAE-style metric meters with clips/s and ETA, TensorBoard,
and the JSON-lines ``log.txt``."""
from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import sys
import time
from collections import defaultdict, deque
from typing import Any, Dict, Iterable, Iterator, List, Optional

import torch
import torch.distributed as dist

from .dist import get_world_size, is_dist_avail_and_initialized, is_main_process
from .outputs import write_error, writing

logger = logging.getLogger(__name__)

_HANDLER_TAG = "_apt_video_handler"


def setup_logging(rank: int = 0, log_file: Optional[str] = None, level: int = logging.INFO) -> None:
    """Log to stderr (and ``log_file``) on rank 0; other ranks only log warnings and errors.

    Handlers installed by an earlier call are replaced, so a process may run ``main`` twice.
    """
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, _HANDLER_TAG, False):
            root.removeHandler(h)
            h.close()
    fmt = logging.Formatter(f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s",
                            datefmt="%Y-%m-%d %H:%M:%S")
    handlers: List[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file and rank == 0:
        with writing(log_file):
            handlers.append(_RunLogHandler(log_file, mode="a", encoding="utf-8"))
    for h in handlers:
        h.setFormatter(fmt)
        setattr(h, _HANDLER_TAG, True)
        root.addHandler(h)
    root.setLevel(level if rank == 0 else logging.WARNING)


class _RunLogHandler(logging.FileHandler):
    """The ``run.log`` handler: when the file cannot be written (a full disk), says so once on
    stderr and stops writing it, instead of logging's traceback for every later line (the
    lines still reach stderr through the stream handler)."""

    def handleError(self, record: logging.LogRecord) -> None:
        err = sys.exc_info()[1]
        if not isinstance(err, OSError):
            super().handleError(record)
            return
        logging.getLogger().removeHandler(self)  # first: the warning below must not come here
        with contextlib.suppress(OSError):  # closing flushes, which fails the same way
            self.close()
        logger.warning("%s; its later lines are on stderr only",
                       write_error(self.baseFilename, err))


class SmoothedValue:
    """A series of values: windowed median/average and the global average."""

    def __init__(self, window_size: int = 20, fmt: Optional[str] = None) -> None:
        self.deque: deque = deque(maxlen=window_size)
        self.total = 0.0
        self.count = 0
        self.fmt = fmt or "{median:.4f} ({global_avg:.4f})"

    def update(self, value: float, n: int = 1) -> None:
        self.deque.append(value)
        self.count += n
        self.total += value * n

    def synchronize_between_processes(self) -> None:
        """All-reduce count and total (the window stays local)."""
        if not is_dist_avail_and_initialized():
            return
        backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        t = torch.tensor([self.count, self.total], dtype=torch.float64, device=backend_device)
        dist.barrier()
        dist.all_reduce(t)
        self.count = int(t[0].item())
        self.total = float(t[1].item())

    @property
    def median(self) -> float:
        return float(torch.tensor(list(self.deque)).median().item()) if self.deque else 0.0

    @property
    def avg(self) -> float:
        return float(torch.tensor(list(self.deque), dtype=torch.float32).mean().item()) if self.deque else 0.0

    @property
    def global_avg(self) -> float:
        return self.total / self.count if self.count else 0.0

    @property
    def max(self) -> float:
        return max(self.deque) if self.deque else 0.0

    @property
    def value(self) -> float:
        return self.deque[-1] if self.deque else 0.0

    def __str__(self) -> str:
        return self.fmt.format(median=self.median, avg=self.avg, global_avg=self.global_avg,
                               max=self.max, value=self.value)


class MetricLogger:
    """Meters by name, and ``log_every`` progress lines (iteration, meters, clips/s, ETA)."""

    def __init__(self, delimiter: str = "  ") -> None:
        self.meters: Dict[str, SmoothedValue] = defaultdict(SmoothedValue)
        self.delimiter = delimiter
        self._clips = 0

    def update(self, **kwargs: Any) -> None:
        for k, v in kwargs.items():
            if v is None:
                continue
            if isinstance(v, torch.Tensor):
                v = v.item()
            self.meters[k].update(float(v))

    def count_clips(self, n: int) -> None:
        """Clips processed by this rank since the last progress line (for clips/s)."""
        self._clips += int(n)

    def __getattr__(self, attr: str) -> Any:
        if attr in self.__dict__.get("meters", {}):
            return self.meters[attr]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{attr}'")

    def __str__(self) -> str:
        return self.delimiter.join(f"{name}: {meter}" for name, meter in self.meters.items())

    def synchronize_between_processes(self) -> None:
        for meter in self.meters.values():
            meter.synchronize_between_processes()

    def add_meter(self, name: str, meter: SmoothedValue) -> None:
        self.meters[name] = meter

    def log_every(self, iterable: Iterable, print_freq: int, header: str = "",
                  total: Optional[int] = None) -> Iterator:
        """Yield from ``iterable``; every ``print_freq`` items log a progress line (rank 0).

        The line carries the iteration, the meters, clips/s over all ranks (from
        ``count_clips``), data and step times and the ETA of the loop.
        """
        print_freq = max(1, int(print_freq))
        total = total if total is not None else len(iterable)  # type: ignore[arg-type]
        iter_time = SmoothedValue(fmt="{avg:.4f}")
        data_time = SmoothedValue(fmt="{avg:.4f}")
        width = len(str(total))
        start = end = window_start = time.time()
        self._clips = 0
        world = get_world_size()
        i = 0
        for obj in iterable:
            data_time.update(time.time() - end)
            yield obj
            iter_time.update(time.time() - end)
            if i % print_freq == 0 or i == total - 1:
                now = time.time()
                rate = self._clips * world / max(now - window_start, 1e-9)
                window_start, self._clips = now, 0
                eta = datetime.timedelta(seconds=int(iter_time.global_avg * (total - i - 1)))
                parts = [f"{header} [{i:>{width}}/{total}]", f"eta: {eta}", str(self),
                         f"clips/s: {rate:.1f}", f"time: {iter_time}", f"data: {data_time}"]
                if torch.cuda.is_available() and torch.cuda.is_initialized():
                    parts.append(f"max mem: {torch.cuda.max_memory_allocated() / 2 ** 20:.0f} MB")
                logger.info(self.delimiter.join(p for p in parts if p))
            i += 1
            end = time.time()
        elapsed = datetime.timedelta(seconds=int(time.time() - start))
        logger.info("%s total time: %s (%.4f s / it)", header, elapsed,
                    (time.time() - start) / max(i, 1))


class TensorboardLogger:
    """TensorBoard scalars under ``head/name`` at a running global step (rank 0 only)."""

    def __init__(self, log_dir: str) -> None:
        # tensorboard is slow to import, and only rank 0 of a run with an output folder logs
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=log_dir)
        self.step = 0

    def set_step(self, step: Optional[int] = None) -> None:
        self.step = self.step + 1 if step is None else int(step)

    def update(self, head: str = "scalar", step: Optional[int] = None, **kwargs: Any) -> None:
        for k, v in kwargs.items():
            if v is None:
                continue
            if isinstance(v, torch.Tensor):
                v = v.item()
            self.writer.add_scalar(f"{head}/{k}", float(v), self.step if step is None else step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def append_json_line(path: str, record: Dict[str, Any]) -> None:
    """Append one JSON object as a line (``log.txt``), on the main process only. A partial last
    line (a run killed mid-write) is repaired first (``repair_last_line``), so the record is
    never glued onto it.

    Raises:
        OutputWriteError: the file cannot be written; the message names it.
    """
    if not is_main_process():
        return
    with writing(path):
        repair_last_line(path)
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())


def repair_last_line(path: str) -> None:
    """Make every line of a JSON-lines file end with a newline before an append.

    A last line without its newline is ended when it is a whole JSON object (only the newline
    was lost); otherwise it is moved to ``<path>.partial`` and cut off ``path`` with a warning
    naming both, so every line of ``path`` stays one valid record and nothing is thrown away.
    """
    if not os.path.exists(path):
        return
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        start = _last_line_start(f, size)
        f.seek(start)
        tail = f.read()
        if _is_json_object(tail):
            f.write(b"\n")
            logger.warning("%s: its last line had lost its newline; ended it", path)
            return
        with open(f"{path}.partial", "ab") as aside:
            aside.write(tail + b"\n")
        f.truncate(start)
    logger.warning("%s: its last line was cut short (%d bytes, a run killed while writing it); "
                   "moved to %s.partial", path, len(tail), path)


def _last_line_start(f: Any, size: int, block: int = 1 << 16) -> int:
    """Offset just after the last newline of the open binary file ``f`` (0 if none)."""
    end = size
    while end > 0:
        begin = max(0, end - block)
        f.seek(begin)
        cut = f.read(end - begin).rfind(b"\n")
        if cut >= 0:
            return begin + cut + 1
        end = begin
    return 0


def _is_json_object(data: bytes) -> bool:
    try:
        return isinstance(json.loads(data.decode("utf-8")), dict)
    except ValueError:  # not UTF-8 (UnicodeDecodeError) or not JSON
        return False


def read_json_lines(path: str) -> List[Dict[str, Any]]:
    """The records of a JSON-lines file (``log.txt``): one JSON object per line. A line that is
    no JSON object (cut short by a crash, edited by hand) is skipped with a warning naming the
    file and line number; blank lines are skipped silently."""
    records = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as err:
                logger.warning("%s line %d skipped: not JSON (%s)", path, number, err)
                continue
            if isinstance(record, dict):
                records.append(record)
            else:
                logger.warning("%s line %d skipped: not a JSON object", path, number)
    return records
