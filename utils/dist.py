"""Distributed set-up: torchrun, SLURM ``srun``, Open MPI (``--dist_on_itp``) or one plain process.

``init_distributed_mode(run)`` reads the launcher's environment, picks NCCL on GPU and gloo on
CPU, and returns a ``DistState`` (rank, world size, local rank, device). A single process without a
launcher is not distributed, unless ``force`` asks for a one-process group (DeepSpeed needs one).
"""
from __future__ import annotations

import datetime
import logging
import os
import random
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


def is_dist_avail_and_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if is_dist_avail_and_initialized() else 1


def get_rank() -> int:
    return dist.get_rank() if is_dist_avail_and_initialized() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_dist_avail_and_initialized():
        dist.barrier()


def all_gather_object(obj: Any) -> List[Any]:
    """Every rank's ``obj`` in rank order (``[obj]`` without a process group)."""
    if not is_dist_avail_and_initialized():
        return [obj]
    out: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_ranks_ok(ok: bool, device: torch.device) -> bool:
    """True when ``ok`` holds on every rank (one tiny all-reduce); lets all ranks stop together."""
    if not is_dist_avail_and_initialized():
        return ok
    flag = torch.tensor([1.0 if ok else 0.0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() > 0.5)


def free_port() -> int:
    """A TCP port that is free now (for a single-process group or a test launcher)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def seed_everything(seed: int) -> None:
    """Seed torch, NumPy and ``random`` (called at the start of every epoch, so a resumed run
    draws the same random numbers as an uninterrupted one)."""
    seed = int(seed) % (2 ** 32)
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def default_device_name() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _first_host(nodelist: str) -> str:
    """First host of a SLURM node list without ``scontrol``: ``gpu[03-05,07],x1`` -> ``gpu03``."""
    m = re.match(r"^([^\[,]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not m:
        return nodelist
    prefix, ranges = m.group(1), m.group(2)
    return prefix + ranges.split(",")[0].split("-")[0] if ranges else prefix


def _slurm_master_addr() -> str:
    """First host of the SLURM allocation (``scontrol show hostnames`` expands the node list)."""
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST", "")
    if not nodelist:
        return "127.0.0.1"
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], check=True,
                             capture_output=True, text=True, timeout=30).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError) as err:
        logger.warning("scontrol could not expand SLURM_JOB_NODELIST=%s (%s); using its first "
                       "entry as MASTER_ADDR", nodelist, err)
    return _first_host(nodelist)


# The batch script of ``sbatch`` is the job's "batch" step; a process started there (no srun) is
# one process, though SLURM_NTASKS/SLURM_PROCID of the allocation are exported to it. SLURM leaves
# SLURM_STEP_ID unset there; where it is set, the batch, extern and interactive steps carry
# reserved ids at the top of the 32-bit range (0xfffffffe for the batch script in older SLURM,
# 0xfffffffa..0xfffffffc in newer) or their names.
_SLURM_SPECIAL_STEP_MIN = 0xFFFFFFF0
_SLURM_SPECIAL_STEP_NAMES = ("batch", "extern", "interactive", "")


def _is_srun_step(step: Optional[str]) -> bool:
    """Whether ``SLURM_STEP_ID`` names a job step started by srun."""
    if step is None:
        return False
    step = step.strip().lower()
    if step in _SLURM_SPECIAL_STEP_NAMES:
        return False
    return not (step.isdigit() and int(step) >= _SLURM_SPECIAL_STEP_MIN)


def _slurm_step_tasks() -> int:
    """Tasks of the srun job step this process belongs to; 0 outside one (plain shell, sbatch
    batch script, salloc shell)."""
    env = os.environ
    if "SLURM_PROCID" not in env or not _is_srun_step(
            env.get("SLURM_STEP_ID", env.get("SLURM_STEPID"))):
        return 0
    return int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or "1")


def _slurm_master_port() -> str:
    """A rendezvous port per job, so two jobs sharing a node do not both bind 29500."""
    job_id = os.environ.get("SLURM_JOB_ID") or os.environ.get("SLURM_JOBID") or ""
    if not job_id.isdigit():
        return "29500"
    return str(29500 + int(job_id) % 10000)  # 29500..39499: unprivileged, below the ephemeral range


def _launcher_env(args: Any) -> str:
    """Fill RANK/WORLD_SIZE/LOCAL_RANK from the launcher; returns its name ('' for none)."""
    env = os.environ
    if args.dist_on_itp and "OMPI_COMM_WORLD_RANK" in env:
        env["RANK"] = env["OMPI_COMM_WORLD_RANK"]
        env["WORLD_SIZE"] = env["OMPI_COMM_WORLD_SIZE"]
        env["LOCAL_RANK"] = env["OMPI_COMM_WORLD_LOCAL_RANK"]
        return "openmpi"
    if "RANK" in env and "WORLD_SIZE" in env:
        env.setdefault("LOCAL_RANK", str(max(args.local_rank, 0)))
        return "torchrun"
    step_tasks = _slurm_step_tasks()
    if step_tasks > 1:
        # srun with one task per GPU (no torchrun inside): SLURM numbers the step's tasks.
        env["RANK"] = env["SLURM_PROCID"]
        env["WORLD_SIZE"] = str(step_tasks)
        env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
        env.setdefault("MASTER_ADDR", _slurm_master_addr())
        env.setdefault("MASTER_PORT", _slurm_master_port())
        return "slurm"
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        logger.warning("SLURM_NTASKS=%s but no srun job step (SLURM_STEP_ID unset or the batch "
                       "step): running as one process; start the tasks with srun to use them "
                       "all", env["SLURM_NTASKS"])
    return ""


def _cuda_index(local_rank: int) -> int:
    """The CUDA device of local rank ``local_rank`` among the devices this process sees.

    ``srun --gpus-per-task=1`` (or ``--gpu-bind=single|closest``) gives every task its own
    CUDA_VISIBLE_DEVICES with one device, so local rank 1 must use device 0 there.
    """
    count = torch.cuda.device_count()
    if local_rank < count:
        return local_rank
    index = local_rank % max(count, 1)
    logger.info("local rank %d but %d CUDA device(s) visible (CUDA_VISIBLE_DEVICES=%s): using "
                "cuda:%d", local_rank, count, os.environ.get("CUDA_VISIBLE_DEVICES", "unset"),
                index)
    return index


@dataclass(frozen=True)
class DistState:
    """What the distributed set-up found: this process's place and the device it runs on."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    distributed: bool = False
    backend: Optional[str] = None
    owns_group: bool = False  # this run created the process group (and destroys it)
    env_set: Tuple[str, ...] = ()  # environment variables it set (and removes again)


def init_distributed_mode(run: Any, force: bool = False) -> DistState:
    """Set up the process group (if any) and return where this process runs.

    Args:
        run: the run settings (``RunConfig`` or a namespace): reads ``device``, ``dist_url``,
            ``dist_on_itp``, ``local_rank``, ``dist_timeout`` (minutes); nothing is written
            into it.
        force: create a one-process group even without a launcher (DeepSpeed needs one);
            MASTER_ADDR/MASTER_PORT default to localhost and a free port.
    """
    device_name = run.device or default_device_name()
    if device_name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"--device {device_name} was asked for but CUDA is not available; "
                           f"use --device cpu")
    if not run.device and device_name == "cpu" and torch.version.cuda:
        # A CUDA build without a usable GPU is mostly a broken driver or an empty
        # CUDA_VISIBLE_DEVICES: say so rather than train for days on the CPU.
        logger.warning("torch was built with CUDA %s but no CUDA device is available "
                       "(CUDA_VISIBLE_DEVICES=%s): running on the CPU; pass --device cpu to "
                       "silence this", torch.version.cuda,
                       os.environ.get("CUDA_VISIBLE_DEVICES", "unset"))
    timeout = int(run.dist_timeout)
    if timeout < 1:
        raise ValueError(f"--dist_timeout {timeout}: must be at least 1 (minutes)")
    launcher = _launcher_env(run)
    if not launcher and not force:
        device = torch.device("cuda:0" if device_name == "cuda" else device_name)
        if device.type == "cuda" and device_name != "cuda":
            # --device cuda:1: make it the current device too, or kernels launched without an
            # explicit device (custom ops, cuDNN workspaces, torch.cuda.* helpers) use cuda:0.
            torch.cuda.set_device(device)
        return DistState(device=device)
    env_set: List[str] = []
    if not launcher:  # one process, but a group is wanted
        defaults = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0",
                    "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
        for key, value in defaults.items():
            if key not in os.environ:
                os.environ[key] = value
                env_set.append(key)  # removed again by destroy_process_group
        launcher = "single process"
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    on_gpu = device_name.startswith("cuda")
    if on_gpu:
        index = _cuda_index(local_rank)
        torch.cuda.set_device(index)
        device = torch.device("cuda", index)
    else:
        device = torch.device(device_name)
    backend = "nccl" if on_gpu else "gloo"
    owns = False
    init_method = run.dist_url or "env://"
    if not dist.is_initialized():
        kwargs = {"device_id": device} if on_gpu else {}
        dist.init_process_group(backend=backend, init_method=init_method, world_size=world,
                                rank=rank, timeout=datetime.timedelta(minutes=timeout),
                                **kwargs)
        owns = True
    logging.getLogger(__name__).info(
        "distributed (%s): rank %d of %d, local rank %d, backend %s, init %s", launcher, rank,
        world, local_rank, backend, init_method)
    return DistState(device, rank, world, local_rank, True, backend, owns, tuple(env_set))


def destroy_process_group(state: DistState) -> None:
    """Tear down the group this run created (so ``main`` can be called again in one process).

    Through DeepSpeed when it joined the group: it keeps groups of its own (a world group made
    with ``new_group``) in module globals, which torch's ``destroy_process_group`` leaves alive
    with their gloo threads running until interpreter exit, where a peer closing its sockets
    aborted the process now and then ("terminate called without an active exception").
    ``deepspeed.comm.destroy_process_group`` destroys the groups and drops those references.
    """
    if state.owns_group and is_dist_avail_and_initialized():
        ds_comm = sys.modules.get("deepspeed.comm")
        if ds_comm is not None and ds_comm.is_initialized():
            ds_comm.destroy_process_group()
        else:
            dist.destroy_process_group()
    for key in state.env_set:
        os.environ.pop(key, None)


def broadcast_from_main(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (``obj`` itself without a process group): lets rank 0
    decide (take a lock, check a folder) and every rank act on its verdict together."""
    if not is_dist_avail_and_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
