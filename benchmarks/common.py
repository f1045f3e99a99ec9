"""Shared benchmark helpers: machine header, interleaved timing, load gating, peak memory, tables.

Measurement rules (docs/CONVENTIONS.md, BENCHMARKS.md):

* Everything that is compared is measured side by side in one process, interleaved
  (A, B, C, A, B, C, ...), after warm-up iterations, with ``torch.set_num_threads`` fixed.
* A ratio is the median over rounds of the per-round ratio ``t_A[i] / t_B[i]``: the two runs of a
  round are a few hundred milliseconds apart, so slow drifts of the shared machine cancel; the
  median discards rounds in which another process took a core.
* On this kind of shared 2-core machine other people's processes take cores at random. Before
  each round we wait (bounded) until the other processes' CPU use, read from ``/proc/stat``, falls
  under a threshold, and every table records how loaded the machine was while it was measured.
  Each call is timed on two clocks (``Timings``): wall-clock, and the CPU time of this process.
  When others held cores during the run (median above ``BUSY_CORES``), a 2-thread wall-clock
  time mostly measures how long OpenMP threads waited for a core, so the tables then judge the
  targets on the CPU-time ratios, and show both.
* Peak memory of a training step: on CUDA ``torch.cuda.max_memory_allocated``. On CPU there is
  no allocator statistic, and RSS-based numbers are wrong both ways (glibc keeps freed blocks,
  and untouched pages of a fresh allocation are not resident), so we replay the allocator's own
  allocation/free events recorded by ``torch.profiler(profile_memory=True)`` for one step and add
  the bytes held before the step (parameters, buffers, optimizer state). That is the CPU
  equivalent of ``max_memory_allocated``: the most tensor bytes alive at once.
"""
from __future__ import annotations

import json
import logging
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
if "torch" in sys.modules and "OMP_WAIT_POLICY" not in os.environ:
    logging.getLogger("benchmarks").warning(
        "torch was imported before benchmarks.common: OMP_WAIT_POLICY=PASSIVE not applied, "
        "CPU-time measurements include spin-waiting")
# OpenMP threads that wait sleep instead of spinning, so process CPU time counts work only (see
# Timings). Must be set before torch loads its OpenMP runtime; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from utils.machine import info_lines, machine_info  # noqa: E402,F401  (re-exported for the benchmarks)

DEFAULT_THREADS = 2  # the project's fixed thread count for CPU measurements


# --- set-up and machine description ----------------------------------------------------------
def setup_threads(threads: int = DEFAULT_THREADS) -> int:
    """Fix intra-op threads (and inter-op, where still allowed) for the whole process."""
    torch.set_num_threads(int(threads))
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set once in this process (run_all imports every script)
        pass
    return torch.get_num_threads()


def header_lines(info: Dict[str, str], load: Optional["LoadSummary"] = None) -> List[str]:
    """The machine facts (:func:`utils.machine.machine_info`), and how loaded it was."""
    lines = info_lines(info)
    if load is not None:
        lines.append(f"- machine load while measuring: {load.describe()}")
    return lines


# --- load of other processes -----------------------------------------------------------------
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_ticks() -> Optional[tuple]:
    """(busy ticks of the whole machine, ticks of this process)."""
    try:
        with open("/proc/stat") as f:
            parts = f.readline().split()[1:]
        vals = [int(v) for v in parts][:8]  # guest times are already inside user/nice
        busy = sum(vals) - vals[3] - (vals[4] if len(vals) > 4 else 0)  # minus idle and iowait
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        own = int(fields[11]) + int(fields[12])  # utime + stime, all threads
        return busy, own
    except (OSError, ValueError, IndexError):
        return None


def foreign_load(window: float = 0.2) -> float:
    """Cores' worth of CPU used by *other* processes over ``window`` seconds (NaN if unknown)."""
    a = _cpu_ticks()
    time.sleep(window)
    b = _cpu_ticks()
    if a is None or b is None:
        return float("nan")
    return max(0.0, ((b[0] - a[0]) - (b[1] - a[1])) / (_TICK * window))


@dataclass
class LoadSummary:
    samples: List[float] = field(default_factory=list)
    waited_s: float = 0.0
    busy_rounds: int = 0  # rounds that started while others still used more than the threshold

    def describe(self) -> str:
        vals = [s for s in self.samples if s == s]
        if not vals:
            return "unknown (no /proc/stat)"
        return (f"other processes used {statistics.median(vals):.2f} cores (median; max "
                f"{max(vals):.2f}) before rounds; {self.busy_rounds}/{len(vals)} rounds started "
                f"busy after waiting; {self.waited_s:.0f} s spent waiting for quiet")


def wait_for_quiet(summary: LoadSummary, threshold: float = 0.3, max_wait: float = 2.0) -> None:
    """Wait until other processes use under ``threshold`` cores (at most ``max_wait`` s)."""
    if summary.busy_rounds >= 3 and summary.busy_rounds == len(summary.samples):
        max_wait = 0.0  # busy for good: stop waiting, keep recording the load
    start = time.perf_counter()
    load = foreign_load()
    while load == load and load > threshold and time.perf_counter() - start < max_wait:
        load = foreign_load()
    summary.waited_s += time.perf_counter() - start
    summary.samples.append(load)
    if load == load and load > threshold:
        summary.busy_rounds += 1


# --- timing ----------------------------------------------------------------------------------
BUSY_CORES = 0.5  # above this median load of other processes, wall-clock ratios are unreliable


@dataclass
class Timings:
    """Seconds per call, one value per round, on two clocks.

    ``wall``: elapsed time (``time.perf_counter``), what a user waits for.
    ``cpu``: CPU time of this process, all threads (``time.process_time``). With OpenMP threads
    that sleep instead of spinning while they wait (``OMP_WAIT_POLICY=PASSIVE``, set by this
    module before torch loads), it counts the work done and not the time another process held
    a core, so it stays meaningful when the shared machine is busy.
    """
    wall: Dict[str, List[float]]
    cpu: Dict[str, List[float]]
    load: "LoadSummary"

    def clock(self, name: str) -> Dict[str, List[float]]:
        return self.wall if name == "wall" else self.cpu

    @property
    def reliable_clock(self) -> str:
        """``wall`` on a quiet machine, ``cpu`` when other processes took cores meanwhile."""
        vals = [s for s in self.load.samples if s == s]
        if vals and statistics.median(vals) > BUSY_CORES:
            return "cpu"
        return "wall"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: Dict[str, Callable[[], object]], rounds: int, warmup: int = 2,
                device: torch.device = torch.device("cpu"), gate: bool = True,
                max_wait: float = 2.0) -> Timings:
    """Time every callable ``rounds`` times, interleaved, after ``warmup`` untimed calls each.

    The order inside a round alternates (forward, then reversed) so no entry always runs right
    after the same neighbour. Before each CPU round we wait up to ``max_wait`` s for the other
    processes to go quiet (and record how loaded the machine was).
    """
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
        synchronize(device)
    wall: Dict[str, List[float]] = {n: [] for n in names}
    cpu: Dict[str, List[float]] = {n: [] for n in names}
    load = LoadSummary()
    for r in range(rounds):
        if gate and device.type == "cpu":
            wait_for_quiet(load, max_wait=max_wait)
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            synchronize(device)
            t0, c0 = time.perf_counter(), time.process_time()
            fns[name]()
            synchronize(device)
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return Timings(wall, cpu, load)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def ratio(times: Dict[str, List[float]], a: str, b: str) -> float:
    """Median over rounds of ``t_a / t_b`` (paired, so slow drifts of the machine cancel)."""
    return statistics.median([x / y for x, y in zip(times[a], times[b])])


def ratio_iqr(times: Dict[str, List[float]], a: str, b: str) -> tuple:
    vals = sorted(x / y for x, y in zip(times[a], times[b]))
    if len(vals) < 4:
        return vals[0], vals[-1]
    q = statistics.quantiles(vals, n=4)
    return q[0], q[2]


# --- memory ----------------------------------------------------------------------------------
def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    seen, total = set(), 0
    for t in tensors:
        if t is None or not isinstance(t, torch.Tensor):
            continue
        key = (t.untyped_storage().data_ptr(), t.device)
        if key in seen:
            continue
        seen.add(key)
        total += t.untyped_storage().nbytes()
    return total


def persistent_bytes(model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer]) -> int:
    """Bytes held between steps: parameters, buffers and optimizer state."""
    tensors = list(model.parameters()) + list(model.buffers())
    if optimizer is not None:
        for state in optimizer.state.values():
            tensors.extend(v for v in state.values() if isinstance(v, torch.Tensor))
    return tensor_bytes(tensors)


def cpu_step_peak_bytes(step: Callable[[], object]) -> int:
    """Most bytes allocated at once by ``step`` on the CPU, above what was allocated before it.

    Replays the allocator events of ``torch.profiler(profile_memory=True)`` in time order.
    """

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
              and e.device_type() == torch.autograd.DeviceType.CPU]
    current = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        current += e.nbytes()
        peak = max(peak, current)
    return peak


def step_peak_bytes(model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer],
                    step: Callable[[], object], device: torch.device) -> int:
    """Peak tensor bytes during one training step, persistent state included.

    The step must have run before (optimizer state exists, gradients set to None by the step).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    before = persistent_bytes(model, optimizer)
    return before + cpu_step_peak_bytes(step)


# --- output ----------------------------------------------------------------------------------
def md_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> List[str]:
    def fmt(v: object) -> str:
        if isinstance(v, float):
            if v != v:
                return "n/a"
            return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return lines


QUICK_RESULTS = os.path.join(tempfile.gettempdir(), "apt-benchmarks-quick")


def results_dir(quick: bool = False) -> str:
    """``benchmarks/results`` for real runs; a temporary folder for ``--quick`` smoke runs, so
    they never overwrite (or end up in) the tables of BENCHMARKS.md."""
    path = QUICK_RESULTS if quick else RESULTS
    os.makedirs(path, exist_ok=True)
    return path


def write_section(name: str, lines: Sequence[str], quick: bool = False,
                  summary: Optional[dict] = None) -> str:
    """Write ``<results>/<name>.md`` (run_all.py collects these into BENCHMARKS.md) and, when
    given, the key numbers as ``<name>.json`` for run_all's summary of the targets."""
    folder = results_dir(quick)
    path = os.path.join(folder, f"{name}.md")
    with open(path, "w") as f:
        f.write("\n".join(lines).rstrip() + "\n")
    if summary is not None:
        with open(os.path.join(folder, f"{name}.json"), "w") as f:
            json.dump(summary, f, indent=1)
    return path


LOG = logging.getLogger("benchmarks")


def setup_logging() -> None:
    """Progress lines on stderr; the tables go to ``benchmarks/results/*.md``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
