"""Command-line jobs through submitit: on this machine (N at once) or as SLURM job arrays, by one
setting (``LaunchConfig.cluster``). Resumable: a job whose result is complete is never
submitted again; a job that failed or was killed is submitted again (``retries`` times in one
call, and on every later call), and the command it runs resumes by itself
(``run_class_apt.py``'s auto-resume). A progress line per finished job: jobs done of all,
elapsed time and ETA.

Each job is the command a user would type (``python run_class_apt.py ...``), run by submitit's
own ``CommandFunction``: the job processes import nothing of this project, so the launcher adds
no model build and no project import to a job's start-up.
"""
from __future__ import annotations

import contextlib
import datetime
import glob
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

logger = logging.getLogger(__name__)

CLUSTERS = ("local", "slurm")


@dataclass(frozen=True)
class LaunchConfig:
    """Where and how the jobs run.

    Args:
        cluster: ``local`` (this machine, ``jobs`` processes at once) or ``slurm`` (one job
            array per stage, ``jobs`` array tasks at once).
        jobs: jobs running at once.
        threads: compute threads per job (``OMP_NUM_THREADS``/``MKL_NUM_THREADS``, and the
            SLURM ``--cpus-per-task``).
        timeout_min: wall-clock limit of one job (SLURM ``--time``; local: submitit's timeout).
        partition: SLURM partition ('' for the cluster's default).
        gpus_per_node: GPUs per job (SLURM ``--gpus-per-node``; local: CUDA devices shown).
        slurm_extra: more ``#SBATCH`` settings, e.g. ``{"account": "x", "qos": "y"}``.
        retries: submissions again, in one call, of a job that ended without its result.
        poll_s: seconds between checks of the running jobs.
    """

    cluster: str = "local"
    jobs: int = 2
    threads: int = 1
    timeout_min: int = 180
    partition: str = ""
    gpus_per_node: int = 0
    slurm_extra: Dict[str, Any] = field(default_factory=dict)
    retries: int = 1
    poll_s: float = 1.0

    def __post_init__(self) -> None:
        if self.cluster not in CLUSTERS:
            raise ValueError(f"cluster (--cluster) must be one of {CLUSTERS}, got "
                             f"{self.cluster!r}")
        for name in ("jobs", "threads", "timeout_min"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} (--{name}) must be >= 1, got {getattr(self, name)}")
        if self.retries < 0 or self.gpus_per_node < 0:
            raise ValueError("retries and gpus_per_node must be >= 0")


@dataclass
class Job:
    """One command and how to tell that it is finished.

    Args:
        name: shown in the progress lines.
        command: the command line (``[python, script, flags...]``), run in ``cwd``.
        done: True when the job's result is complete (read from its files).
        on_result: called with the command's stdout once it succeeded (e.g. to store it).
    """

    name: str
    command: List[str]
    done: Callable[[], bool]
    on_result: Optional[Callable[[str], None]] = None


@dataclass
class Progress:
    """Counts of the whole sweep, for the progress lines (jobs of later stages included)."""

    total: int
    finished: int = 0  # done before this call or in it
    ran: int = 0  # finished by this call
    started: float = field(default_factory=time.time)

    def line(self, later: int) -> str:
        """``N/M jobs done, elapsed ..., ETA ...`` (ETA: this call's mean time per finished job,
        as seen with the jobs in parallel, times the jobs left, ``later`` included)."""
        elapsed = time.time() - self.started
        left = self.total - self.finished
        eta = (elapsed / self.ran * left) if self.ran else float("nan")
        return (f"{self.finished}/{self.total} jobs done, elapsed {_hms(elapsed)}, "
                f"ETA {_hms(eta) if eta == eta else '?'}" + (f" ({later} in later stages)"
                                                              if later else ""))


def _hms(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(round(seconds))))


def make_executor(launch: LaunchConfig, folder: str, name: str) -> Any:
    """A submitit executor for ``launch`` writing its scripts and logs to ``folder``."""
    import submitit  # lazily: only launching needs it (its import costs ~0.3 s)
    executor = submitit.AutoExecutor(folder=folder, cluster=launch.cluster)
    threads = [f"export OMP_NUM_THREADS={launch.threads}",
               f"export MKL_NUM_THREADS={launch.threads}"]
    params: Dict[str, Any] = dict(name=name, timeout_min=launch.timeout_min,
                                  cpus_per_task=launch.threads,
                                  gpus_per_node=launch.gpus_per_node)
    if launch.cluster == "slurm":
        params.update(slurm_array_parallelism=launch.jobs, slurm_setup=threads)
        if launch.partition:
            params["slurm_partition"] = launch.partition
        if launch.slurm_extra:
            params["slurm_additional_parameters"] = dict(launch.slurm_extra)
    else:
        params.update(local_setup=threads)
    executor.update_parameters(**params)
    return executor


def submit(executor: Any, launch: LaunchConfig, jobs: Sequence[Job], cwd: str) -> List[Any]:
    """Submit ``jobs`` (all of them: one SLURM array, or local processes at once); returns
    submitit's job handles in the same order."""
    import submitit  # lazily, as in make_executor
    functions = [submitit.helpers.CommandFunction(list(j.command), verbose=True, cwd=cwd)
                 for j in jobs]
    if launch.cluster == "slurm" and len(functions) > 1:
        with executor.batch():  # one job array, --array=0-(N-1)%jobs
            handles = [executor.submit(f) for f in functions]
        return handles
    return [executor.submit(f) for f in functions]


def run_jobs(jobs: Sequence[Job], launch: LaunchConfig, folder: str, cwd: str,
             progress: Progress, later: int = 0, stage: str = "") -> Tuple[int, List[str]]:
    """Run the jobs that are not done yet, and wait for them.

    Jobs already done count as finished without running. On SLURM every job left is submitted
    at once as one array; locally ``launch.jobs`` run at a time. A job that ends without its
    result (a crash, a kill, a timeout) is submitted again up to ``launch.retries`` times.

    Args:
        jobs: the stage's jobs.
        launch: where and how.
        folder: submitit's folder (scripts, pickles, each job's stdout/stderr).
        cwd: the folder the commands run in.
        progress: the sweep's counts, updated.
        later: jobs of later stages (for the ETA).
        stage: name shown in the progress lines.

    Returns:
        ``(jobs run, names of the jobs that failed)``.
    """
    todo = [j for j in jobs if not j.done()]
    progress.finished += len(jobs) - len(todo)
    logger.info("%s: %d jobs, %d already done, %d to run (%s, %d at once, %d threads each)",
                stage, len(jobs), len(jobs) - len(todo), len(todo), launch.cluster, launch.jobs,
                launch.threads)
    if not todo:
        return 0, []
    executor = make_executor(launch, folder, stage or "sweep")
    tries = {id(j): 0 for j in todo}
    queue = list(todo)
    running: List[Tuple[Job, Any, float]] = []
    failed: List[str] = []
    ran = 0
    try:
        ran = _wait(queue, running, tries, failed, executor, launch, cwd, progress, later, stage)
    finally:  # stopped (Ctrl-C, an error): no job is left running unwatched; a rerun resumes it
        for job, handle, _ in running:
            if not handle.done():
                logger.warning("[%s] %s cancelled", stage, job.name)
                cancel(handle, launch)
    return ran, failed


def cancel(handle: Any, launch: LaunchConfig) -> None:
    """Stop a running job. SLURM: ``scancel`` (the whole job). Locally, submitit signals only
    its controller process, which would leave the command itself running (an orphan holding
    its run folder's lock); so the whole process tree goes."""
    tree = descendants(int(handle.job_id)) if launch.cluster == "local" else []
    handle.cancel(check=False)
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
            os.kill(pid, signal.SIGKILL)


def descendants(pid: int) -> List[int]:
    """The processes below ``pid`` (Linux ``/proc``; elsewhere none are found)."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in glob.glob(f"/proc/{parent}/task/*/children"):
            with contextlib.suppress(OSError), open(task) as f:
                children = [int(c) for c in f.read().split()]
                found += children
                todo += children
    return found


def _wait(queue: List[Job], running: List[Tuple[Job, Any, float]], tries: Dict[int, int],
          failed: List[str], executor: Any, launch: LaunchConfig, cwd: str, progress: Progress,
          later: int, stage: str) -> int:
    """``run_jobs``' loop: submit, poll, retry; ``running`` is kept current for the caller."""
    ran = 0
    while queue or running:
        room = len(queue) if launch.cluster == "slurm" else launch.jobs - len(running)
        if room > 0 and queue:
            batch, queue = queue[:room], queue[room:]
            now = time.time()
            running.extend((j, h, now) for j, h in zip(batch, submit(executor, launch, batch, cwd)))
        time.sleep(launch.poll_s)
        still = []
        for job, handle, since in running:
            if not handle.done():
                still.append((job, handle, since))
                continue
            error = _outcome(job, handle)
            if error is None and job.done():
                ran += 1
                progress.finished += 1
                progress.ran += 1
                logger.info("[%s] %s finished in %.0f s; %s", stage, job.name,
                            time.time() - since, progress.line(later))
                continue
            tries[id(job)] += 1
            why = error or "it exited without its result"
            if tries[id(job)] <= launch.retries:
                logger.warning("[%s] %s did not finish (%s); submitted again (%d of %d); "
                               "its logs: %s", stage, job.name, why, tries[id(job)],
                               launch.retries, _log_paths(handle))
                queue.append(job)
            else:
                logger.error("[%s] %s failed (%s); its logs: %s", stage, job.name, why,
                             _log_paths(handle))
                failed.append(job.name)
        running[:] = still
    return ran


def _outcome(job: Job, handle: Any) -> Optional[str]:
    """None when the command succeeded (its stdout handed to ``job.on_result``), else why not."""
    try:
        stdout = handle.result()
    except Exception as err:  # submitit's FailedJobError/UncompletedJobError: the job failed
        lines = str(err).strip().splitlines()
        return f"{type(err).__name__}: {lines[-1] if lines else ''}"
    if job.on_result is not None:
        job.on_result(stdout)
    return None


def _log_paths(handle: Any) -> str:
    paths = handle.paths
    return f"{paths.stdout} {paths.stderr}"


def python_command(script: str, argv: Sequence[str]) -> List[str]:
    """``[this Python, script, argv...]``: a command as a user types it, with the Python that
    runs the launcher (the same environment on this machine, or on a cluster's shared disk)."""
    return [sys.executable, script, *argv]


def script_path(root: str, name: str) -> str:
    """The path of a script of the checkout, checked to exist."""
    path = os.path.join(root, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such script")
    return path
