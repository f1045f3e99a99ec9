"""Multi-process fixes of the engine, each run in real processes (``torchrun``, gloo on CPU):

- without ``--dist_eval`` every rank runs the final test itself; no rank waits in a collective
  while rank 0 tests (a slow rank-0 test under a short process-group timeout);
- ``--test_best``: every rank tests the same, complete ``checkpoint-best.pth`` (a slow rank-0
  write);
- DDP accumulation (``--update_freq``) all-reduces once per optimizer step (a communication
  hook counts the all-reduces);
- ``torch.compile`` wraps the DDP model, not the other way round.

A job that would hang runs under a subprocess timeout, so a hang fails the test.

The slow ranks come from a small wrapper script written into ``tmp_path``: it patches this
process's modules and then calls ``run_class_apt.cli``, so nothing test-only is in the code.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from typing import Dict, List, Sequence

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn

import utils
from tests.engine_helpers import NUM_TEST, ROOT, final_record, run_main, subprocess_env, tiny_argv

# The wrapper's knobs come from environment variables of the test's subprocess (test code only).
# Short process-group timeout: utils/dist.init_distributed_mode passes an explicit ``timeout`` to
# ``init_process_group``, so ``torch.distributed.constants.default_pg_timeout`` would not be
# used; the wrapper replaces that argument instead. For gloo this timeout is the default of
# every collective of the group (``ProcessGroupGloo`` options), so a rank that waits in an
# all-reduce or barrier longer than it raises, and torchrun stops the job.
WRAPPER = textwrap.dedent('''
    import datetime, functools, hashlib, json, os, sys, time

    import torch.distributed as dist

    import engine
    import engine_checkpoints as ckpt
    import run_class_apt

    RANK = int(os.environ["RANK"])
    PG_TIMEOUT = float(os.environ.get("WRAP_PG_TIMEOUT_S", "0"))
    SLOW_TEST = float(os.environ.get("WRAP_SLOW_TEST_S", "0"))
    SLOW_SAVE = float(os.environ.get("WRAP_SLOW_SAVE_S", "0"))
    RECORD_DIR = os.environ.get("WRAP_RECORD_DIR", "")

    if PG_TIMEOUT:
        _init = dist.init_process_group

        @functools.wraps(_init)
        def init_process_group(*args, **kwargs):
            kwargs["timeout"] = datetime.timedelta(seconds=PG_TIMEOUT)
            return _init(*args, **kwargs)
        dist.init_process_group = init_process_group

    if SLOW_TEST:
        _final_test = engine.final_test

        def final_test(*args, **kwargs):
            if RANK == 0:
                time.sleep(SLOW_TEST)
            return _final_test(*args, **kwargs)
        engine.final_test = final_test

    if SLOW_SAVE:
        _save = ckpt.atomic_torch_save

        def atomic_torch_save(obj, path):
            if RANK == 0:
                time.sleep(SLOW_SAVE)
            return _save(obj, path)
        ckpt.atomic_torch_save = atomic_torch_save

    if RECORD_DIR:
        _run_final_test = engine.run_final_test

        def run_final_test(cfg, run, model, tested, *args, **kwargs):
            digest = hashlib.sha256()
            for key, value in sorted(ckpt.trainable_state_dict(model).items()):
                digest.update(key.encode())
                digest.update(value.detach().float().cpu().contiguous().numpy().tobytes())
            with open(os.path.join(RECORD_DIR, f"tested_rank{RANK}.json"), "w") as f:
                json.dump({"tested": tested, "sha256": digest.hexdigest()}, f)
            return _run_final_test(cfg, run, model, tested, *args, **kwargs)
        engine.run_final_test = run_final_test

    sys.exit(run_class_apt.cli(sys.argv[1:]))
''')


def torchrun(script: str, argv: Sequence[str], env: Dict[str, str], timeout: int = 300,
             nproc: int = 2) -> subprocess.CompletedProcess:
    """``script argv`` under ``torchrun --nproc_per_node=nproc`` on a free port; a hang past
    ``timeout`` seconds fails the test (``subprocess.TimeoutExpired``)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           "--master_addr=127.0.0.1", f"--master_port={utils.free_port()}", script, *argv]
    return subprocess.run(cmd, cwd=ROOT, env=subprocess_env(env), capture_output=True,
                          text=True, timeout=timeout)


def write_wrapper(tmp_path) -> str:
    path = str(tmp_path / "wrapper.py")
    with open(path, "w", encoding="utf-8") as f:
        f.write(WRAPPER)
    return path


def check_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, (f"torchrun exited with {proc.returncode}:\n"
                                  f"{(proc.stdout + proc.stderr)[-6000:]}")


def test_unsharded_final_test_no_rank_waits_for_rank0(tmp_path, data):
    """Without --dist_eval, rank 0's test takes longer than the process-group timeout (10 s
    against 25 s): a rank 1 that waited in a collective meanwhile would time out and end the
    job. Every rank tests itself; only rank 0 writes predictions and the Final line, the same
    numbers as one process on the same checkpoint."""
    out = str(tmp_path / "ddp")
    env = {"WRAP_PG_TIMEOUT_S": "10", "WRAP_SLOW_TEST_S": "25"}
    # --init_scale 1: well separated logits, so float noise cannot flip a top-1 decision.
    proc = torchrun(write_wrapper(tmp_path), tiny_argv(data, out, "prompt", init_scale=1.0),
                    env)
    check_ok(proc)
    ddp_final = final_record(out)
    assert ddp_final["test_videos"] == NUM_TEST
    assert sum("Final top-1" in line for line in open(os.path.join(out, "log.txt"))) == 1
    assert os.path.exists(os.path.join(out, "predictions_rank0.json"))
    assert not os.path.exists(os.path.join(out, "predictions_rank1.json"))

    single = str(tmp_path / "single")
    run_main(tiny_argv(data, single, "prompt", eval=True,
                       resume=os.path.join(out, "checkpoint-last.pth")))
    one = final_record(single)
    assert (one["Final top-1"], one["Final top-5"], one["test_videos"]) == (
        ddp_final["Final top-1"], ddp_final["Final top-5"], ddp_final["test_videos"])


def state_sha256(state: Dict[str, torch.Tensor]) -> str:
    """The same digest as the wrapper's, of a checkpoint's ``model`` tensors."""
    digest = hashlib.sha256()
    for key, value in sorted(state.items()):
        digest.update(key.encode())
        digest.update(value.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def test_test_best_every_rank_tests_the_written_checkpoint(tmp_path, data):
    """--test_best --dist_eval with rank 0's checkpoint writes delayed: a rank that read
    checkpoint-best before rank 0 had written it would test other weights (here: none found,
    the last ones). Both ranks must test checkpoint-best's tensors."""
    out = str(tmp_path / "ddp")
    record_dir = tmp_path / "records"
    record_dir.mkdir()
    env = {"WRAP_SLOW_SAVE_S": "3", "WRAP_RECORD_DIR": str(record_dir)}
    proc = torchrun(write_wrapper(tmp_path),
                    tiny_argv(data, out, "prompt", dist_eval=True, test_best=True), env)
    check_ok(proc)
    tested = [json.loads((record_dir / f"tested_rank{r}.json").read_text()) for r in (0, 1)]
    assert [t["tested"] for t in tested] == ["best", "best"], tested
    best = torch.load(os.path.join(out, "checkpoint-best.pth"), map_location="cpu",
                      weights_only=False)["model"]
    assert tested[0]["sha256"] == tested[1]["sha256"] == state_sha256(best)
    assert final_record(out)["tested"] == "best"


# --- DDP accumulation: all-reduces per optimizer step ------------------------------------------

ACCUMULATION_SCRIPT = textwrap.dedent('''
    import json, sys

    import torch
    import torch.distributed as dist
    import torch.nn as nn

    import engine
    from utils.backend import PlainBackend

    out_file, update_freq = sys.argv[1], int(sys.argv[2])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    # Two layers and a non-zero head, so every gradient is non-zero.
    model = nn.Sequential(nn.Linear(6, 8), nn.GELU(), nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    for group in optimizer.param_groups:
        group["lr_scale"] = 1.0
    backend = PlainBackend(model, optimizer, torch.device("cpu"), None, True,
                           update_freq=update_freq)
    calls, buckets = [0], set()

    def counting_hook(state, bucket):
        calls[0] += 1
        buckets.add(bucket.index())
        fut = dist.all_reduce(bucket.buffer().div_(dist.get_world_size()), async_op=True)
        return fut.get_future().then(lambda f: f.value()[0])

    backend.model.register_comm_hook(None, counting_hook)
    steps = 3
    generator = torch.Generator().manual_seed(rank)
    batches = [(torch.randn(4, 6, generator=generator), torch.randint(0, 3, (4,),
                                                                     generator=generator), [])
               for _ in range(steps * update_freq)]
    engine.train_one_epoch(backend, engine.classification_step(nn.CrossEntropyLoss()), batches,
                           0, lr_values=[0.1] * steps, start_steps=0, steps=steps,
                           update_freq=update_freq, print_freq=100)
    if rank == 0:
        with open(out_file, "w") as f:
            json.dump({"calls": calls[0], "buckets": len(buckets), "steps": steps}, f)
    # Both ranks leave together, with no collective of the other still in flight: a rank
    # that tore its group down first aborted the other one's gloo threads now and then
    # ("terminate called without an active exception").
    dist.barrier()
    del backend
    dist.destroy_process_group()
''')


def test_ddp_accumulation_all_reduces_once_per_step(tmp_path):
    """--update_freq 2 under DDP: the micro-batches that only accumulate run forward and
    backward under ``no_sync``, so each optimizer step all-reduces each gradient bucket once
    (wrapping only the backward in ``no_sync`` would all-reduce on every micro-batch)."""
    script = str(tmp_path / "accumulate.py")
    with open(script, "w", encoding="utf-8") as f:
        f.write(ACCUMULATION_SCRIPT)
    out_file = str(tmp_path / "calls.json")
    check_ok(torchrun(script, [out_file, "2"], {}, timeout=180))
    with open(out_file, encoding="utf-8") as f:
        counts = json.load(f)
    assert counts["buckets"] >= 1
    assert counts["calls"] == counts["steps"] * counts["buckets"], counts


# --- torch.compile around DDP -------------------------------------------------------------------

@pytest.fixture
def one_process_group():
    """A one-process gloo group in this process (DDP needs one), torn down after the test."""
    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_compile_wraps_the_ddp_model(monkeypatch, one_process_group):
    """PyTorch's DDPOptimizer expects compile(DDP(model)); ``module`` stays the bare model and
    accumulation still reaches DDP's ``no_sync`` through the compiled wrapper."""
    from utils.backend import PlainBackend

    given: List[nn.Module] = []

    class Compiled(nn.Module):  # stands in for torch.compile's OptimizedModule
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x)

    def fake_compile(module: nn.Module, *args: object, **kwargs: object) -> nn.Module:
        given.append(module)
        return Compiled(module)

    monkeypatch.setattr(torch, "compile", fake_compile)
    model = nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    backend = PlainBackend(model, optimizer, torch.device("cpu"), None, True, compile=True)
    assert len(given) == 1
    ddp = given[0]
    assert isinstance(ddp, nn.parallel.DistributedDataParallel)
    assert ddp.module is model
    assert isinstance(backend.model, Compiled) and backend.model.inner is ddp
    assert backend.module is model
    with backend.accumulating(last_micro=False):
        assert not ddp.require_backward_grad_sync
    assert ddp.require_backward_grad_sync
