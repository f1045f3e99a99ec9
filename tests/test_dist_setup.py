"""Distributed and device set-up (``utils.dist``, ``utils.amp``) under launchers this machine does
not have: SLURM environments are written out as srun/sbatch export them, CUDA is mocked."""
import argparse
import datetime
import logging
import os
from typing import Any, Dict, List

import pytest
import torch

from utils import amp as uamp
from utils import dist as udist

# What ``sbatch --ntasks=8`` exports to its batch script (no SLURM_STEP_ID: not a job step).
BATCH_ENV = {"PATH": "/nonexistent", "SLURM_JOB_ID": "1234567", "SLURM_NTASKS": "8",
             "SLURM_NPROCS": "8", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
             "SLURM_JOB_NODELIST": "gpu[03-04]"}


def _srun_env(procid: int, localid: int, step_tasks: int = 8, **extra: str) -> Dict[str, str]:
    """What ``srun`` exports to one task of job step 0."""
    env = dict(BATCH_ENV, SLURM_STEP_ID="0", SLURM_STEPID="0",
               SLURM_STEP_NUM_TASKS=str(step_tasks), SLURM_PROCID=str(procid),
               SLURM_LOCALID=str(localid))
    env.update(extra)
    return env


def _run(**kw: Any) -> argparse.Namespace:
    values = dict(device=None, dist_url="env://", dist_on_itp=False, local_rank=-1, dist_timeout=30)
    values.update(kw)
    return argparse.Namespace(**values)


class FakeCuda:
    """``torch.cuda`` as a process sees it with ``count`` visible devices of ``capability``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, count: int,
                 capability: Any = (9, 0)) -> None:
        self.current: List[Any] = []
        self.count = count
        self.capability = capability
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "set_device", self.set_device)
        monkeypatch.setattr(torch.cuda, "get_device_capability", self.get_device_capability)
        # Emulated bf16 counts as supported (torch's default): the thing not to rely on.
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)

    def set_device(self, device: Any) -> None:
        index = torch.device(device).index if not isinstance(device, int) else device
        if index is None or not 0 <= index < self.count:
            raise RuntimeError("CUDA error: invalid device ordinal")  # what the driver says
        self.current.append(index)

    def get_device_capability(self, device: Any = None) -> Any:
        cap = self.capability
        return cap(device) if callable(cap) else cap


@pytest.fixture
def groups(monkeypatch: pytest.MonkeyPatch) -> List[Dict[str, Any]]:
    """init_process_group recorded, never run (no peers here)."""
    calls: List[Dict[str, Any]] = []
    monkeypatch.setattr(udist.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(udist.dist, "init_process_group", lambda **kw: calls.append(kw))
    return calls


# ----------------------------------------------------------------- 1: one GPU per srun task
@pytest.mark.parametrize("visible, localid, expected", [
    (1, 3, 0),  # srun --gpus-per-task=1 / --gpu-bind=single: each task sees its own one GPU
    (2, 3, 1),  # two visible per task: local rank modulo what is visible
    (8, 3, 3),  # all GPUs of the node visible: the local rank is the device
])
def test_srun_task_uses_a_visible_device(monkeypatch, caplog, groups, visible, localid,
                                         expected):
    monkeypatch.setattr(os, "environ", _srun_env(procid=8 + localid, localid=localid,
                                                 step_tasks=16))
    cuda = FakeCuda(monkeypatch, visible)
    with caplog.at_level(logging.INFO, logger="utils.dist"):
        state = udist.init_distributed_mode(_run())
    assert cuda.current == [expected]
    assert state.device == torch.device("cuda", expected)
    assert (state.rank, state.world_size, state.local_rank) == (8 + localid, 16, localid)
    assert groups[0]["device_id"] == torch.device("cuda", expected)
    assert groups[0]["backend"] == "nccl"
    remapped = [r for r in caplog.records if "CUDA device(s) visible" in r.getMessage()]
    assert len(remapped) == (0 if visible > localid else 1)


# ------------------------------------------------------------- 2: auto precision, native bf16
@pytest.mark.parametrize("capability, expected", [
    ((7, 0), torch.float16),   # V100: bf16 only emulated
    ((7, 5), torch.float16),   # T4
    ((8, 0), torch.bfloat16),  # A100
    ((9, 0), torch.bfloat16),  # H100
])
def test_auto_amp_is_bf16_only_with_native_bf16(monkeypatch, capability, expected):
    FakeCuda(monkeypatch, 2, capability)
    monkeypatch.setattr(torch.version, "hip", None)
    assert uamp.amp_dtype_for(torch.device("cuda", 0), None, "auto") == expected
    assert uamp.amp_dtype_for(torch.device("cuda", 0), True, "bf16") == torch.bfloat16
    assert uamp.amp_dtype_for(torch.device("cuda", 0), True, "fp16") == torch.float16


def test_auto_amp_asks_about_the_runs_device(monkeypatch):
    # A mixed node: cuda:0 is a V100, cuda:1 an A100; the answer follows the run's device.
    FakeCuda(monkeypatch, 2, lambda d: (8, 0) if torch.device(d).index == 1 else (7, 0))
    monkeypatch.setattr(torch.version, "hip", None)
    assert uamp.amp_dtype_for(torch.device("cuda", 1), None) == torch.bfloat16
    assert uamp.amp_dtype_for(torch.device("cuda", 0), None) == torch.float16


# --------------------------------------------------------- 3: sbatch batch script, ports
@pytest.mark.parametrize("step", [None, "4294967294", "batch", "4294967291"])
def test_batch_script_is_one_process(monkeypatch, caplog, groups, step):
    env = dict(BATCH_ENV)
    if step is not None:
        env["SLURM_STEP_ID"] = step
    monkeypatch.setattr(os, "environ", env)
    FakeCuda(monkeypatch, 1)
    assert udist._launcher_env(_run()) == ""
    assert "RANK" not in env and "WORLD_SIZE" not in env
    with caplog.at_level(logging.WARNING, logger="utils.dist"):
        state = udist.init_distributed_mode(_run())
    assert not state.distributed and state.world_size == 1
    assert groups == []  # nothing waits for 7 ranks that will never come
    assert any("no srun job step" in r.getMessage() for r in caplog.records)


def test_srun_step_sizes_the_group_by_its_own_tasks(monkeypatch):
    # srun --ntasks=4 inside an 8-task allocation: the step has 4 tasks, not SLURM_NTASKS.
    env = _srun_env(procid=2, localid=2, step_tasks=4)
    monkeypatch.setattr(os, "environ", env)
    assert udist._launcher_env(_run()) == "slurm"
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"]) == ("2", "4", "2")
    # A one-task step (srun --pty bash, srun python ...): one process, no group.
    env = _srun_env(procid=0, localid=0, step_tasks=1)
    monkeypatch.setattr(os, "environ", env)
    assert udist._launcher_env(_run()) == ""


def test_master_port_differs_between_jobs(monkeypatch):
    ports = []
    for job_id in ("1234567", "1234568"):
        env = _srun_env(procid=1, localid=1, SLURM_JOB_ID=job_id)
        monkeypatch.setattr(os, "environ", env)
        assert udist._launcher_env(_run()) == "slurm"
        ports.append(int(env["MASTER_PORT"]))
    assert ports == [29500 + 4567, 29500 + 4568]
    assert all(1024 < p < 65536 for p in ports)
    env = _srun_env(procid=1, localid=1, MASTER_PORT="41000")  # the user's choice is kept
    monkeypatch.setattr(os, "environ", env)
    udist._launcher_env(_run())
    assert env["MASTER_PORT"] == "41000"


# ------------------------------------------------------------------- 4: device, timeout
def test_explicit_cuda_index_becomes_current_device(monkeypatch, groups):
    monkeypatch.setattr(os, "environ", {"PATH": "/nonexistent"})
    cuda = FakeCuda(monkeypatch, 2)
    state = udist.init_distributed_mode(_run(device="cuda:1"))
    assert state.device == torch.device("cuda", 1) and not state.distributed
    assert cuda.current == [1]
    assert groups == []


@pytest.mark.parametrize("built_with, device, warns", [
    ("12.8", None, True),    # CUDA build, no driver/device: say so
    (None, None, False),     # CPU-only build: CPU is expected
    ("12.8", "cpu", False),  # asked for the CPU
])
def test_cpu_fallback_is_reported(monkeypatch, caplog, built_with, device, warns):
    monkeypatch.setattr(os, "environ", {"PATH": "/nonexistent"})
    FakeCuda(monkeypatch, 0)
    monkeypatch.setattr(torch.version, "cuda", built_with)
    with caplog.at_level(logging.WARNING, logger="utils.dist"):
        state = udist.init_distributed_mode(_run(device=device))
    assert state.device == torch.device("cpu")
    hits = [r for r in caplog.records if "no CUDA device is available" in r.getMessage()]
    assert len(hits) == (1 if warns else 0)


@pytest.mark.parametrize("script", ["run_class_apt", "run_mae_pretraining"])
def test_dist_timeout_flag_reaches_the_process_group(monkeypatch, groups, script):
    import importlib

    from utils.config import RunConfig, from_namespace
    module = importlib.import_module(script)
    parser = module.get_args_parser()
    assert parser.parse_args([]).dist_timeout == 30
    run = from_namespace(RunConfig, parser.parse_args(["--dist_timeout", "5", "--device", "cpu"]))
    assert run.dist_timeout == 5
    monkeypatch.setattr(os, "environ", {"PATH": "/nonexistent", "RANK": "0", "WORLD_SIZE": "2",
                                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999"})
    state = udist.init_distributed_mode(run)
    assert state.distributed and state.backend == "gloo"
    assert groups[0]["timeout"] == datetime.timedelta(minutes=5)
    with pytest.raises(ValueError, match="--dist_timeout"):
        udist.init_distributed_mode(from_namespace(
            RunConfig, parser.parse_args(["--dist_timeout", "0", "--device", "cpu"])))
