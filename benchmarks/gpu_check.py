"""One prepared check of the GPU paths, for a session that has a GPU (``benchmarks/gpu_check.sh``).

Each step runs ``run_class_apt.py`` as a user would (a subprocess, under ``torchrun`` where it
trains on several processes) on synthetic videos (``tools/make_synthetic.py``) and records
``ok``, ``failed`` (with the output's tail) or ``skipped-needs-cuda``:

1. ``ddp_amp``: torchrun (NCCL on GPU), default amp, APT, ``--update_freq 2 --dist_eval``,
   about 20 optimizer steps.
2. ``eval_equals_final``: ``--eval`` of step 1's last checkpoint gives its final numbers.
3. ``fp16_clip_grad``: fp16 autocast with the loss scaler and ``--clip_grad``.
4. ``deepspeed_bf16_stage0``: DeepSpeed, bf16, ZeRO stage 0: train, resume, ``--eval``.
5. ``deepspeed_stage2_sgd`` / ``deepspeed_stage2_adamw``: ZeRO stage 2 from a
   ``--deepspeed_config`` JSON written here, SGD and AdamW.
6. ``compile``: ``--compile`` training.
7. ``throughput``: APT training clips/s and peak memory on synthetic tensors (model bound), ViT-B
   16x224, P=400, batch 8, bf16 autocast (as ``benchmarks/bench_train_step.py``'s GPU table).

``--dry`` runs every step at the smallest size on CPU (gloo, 2 processes for DDP, 1 for
DeepSpeed and ``--compile``, 1 epoch,
``vit_micro_patch16`` at 4x32x32) so the suite can run it (tests/test_gpu_check.py); steps that
need CUDA are skipped with a line saying so. Writes ``gpu_check.json`` and ``gpu_check.md``
into ``--out``; exits 1 if a step failed.

    bash benchmarks/gpu_check.sh --out results/gpu_check          # on a GPU machine
    bash benchmarks/gpu_check.sh --dry --out /tmp/gpu_check_dry   # on CPU, under a minute
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import socket
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # entry point

from benchmarks import common  # noqa: E402,F401  (first: sets OpenMP's wait policy before torch)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.setups import build  # noqa: E402
from datasets.synthetic import make_synthetic_dataset  # noqa: E402
from utils.cli import flags_to_argv  # noqa: E402

LOG = logging.getLogger("gpu_check")
OK, FAILED, SKIPPED = "ok", "failed", "skipped-needs-cuda"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Check:
    """The run's sizes, its scratch folder and the results of its steps."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.dry = args.dry
        self.out = os.path.abspath(args.out)
        self.work = os.path.join(self.out, "runs")
        self.cuda = torch.cuda.is_available() and not args.dry
        self.nproc = 2 if args.dry else max(1, min(torch.cuda.device_count(), args.max_gpus))
        self.only = set(args.only or [])
        self.results: Dict[str, dict] = {}
        self.finals: Dict[str, dict] = {}
        if args.dry:  # as tests/engine_helpers.py's tiny_argv
            self.model, self.frames, self.size, self.epochs = "vit_micro_patch16", 4, 32, 1
            self.synth = dict(num_classes=3, videos_per_class=7, num_frames=8, size=(32, 40),
                              seed=0, splits={"train": 3, "val": 1, "test": 3})
        else:  # as tools/demo.py: 3 classes x 20 train videos, 8x32x32
            self.model, self.frames, self.size, self.epochs = "vit_mini_patch8", 8, 32, 2
            self.synth = dict(num_classes=3, videos_per_class=40, num_frames=16, size=(40, 40),
                              seed=0, splits={"train": 20, "val": 8, "test": 12})
        self.data = os.path.join(self.work, "data")

    # -- running -------------------------------------------------------------------------------
    def flags(self, output_dir: str, **extra: object) -> List[str]:
        """Flags of a small APT run into ``output_dir``; ``extra``: more (True: a bare switch,
        None/False: removed)."""
        base: Dict[str, object] = {
            "model": self.model, "transfer_type": "apt", "data_set": "custom",
            "nb_classes": self.synth["num_classes"], "data_path": self.data,
            "output_dir": output_dir, "log_dir": output_dir, "batch_size": 2,
            "batch_size_val": 4, "num_sample": 2, "input_size": self.size,
            "short_side_size": self.size, "num_frames": self.frames, "sampling_rate": 2,
            "test_num_segment": 2, "test_num_crop": 2, "opt": "adamw", "lr": 0.05,
            "weight_decay": 1e-5, "epochs": self.epochs, "warmup_epochs": 1, "num_workers": 0,
            "prompt_num_tokens": 2, "prompt_dropout": 0.1, "prompt_reparam": True,
            "save_ckpt_freq": 1, "seed": 0, "init_scale": 1.0,
            "device": "cuda" if self.cuda else "cpu",
        }
        base.update(extra)
        return flags_to_argv(base)

    def run_cli(self, argv: List[str], nproc: int, log_name: str, torchrun: bool = False) -> None:
        """``run_class_apt.py argv`` (under torchrun when ``nproc`` > 1 or ``torchrun``); raises
        with the output tail on a non-zero exit. Output: ``<out>/runs/<log_name>.log``."""
        script = os.path.join(ROOT, "run_class_apt.py")
        cmd = [sys.executable, script, *argv]
        if nproc > 1 or torchrun:
            cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                   "--master_addr=127.0.0.1", f"--master_port={free_port()}", script, *argv]
        env = {k: v for k, v in os.environ.items()
               if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
        env.update(OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""),
                   TORCH_EXTENSIONS_DIR=os.path.join(self.work, "torch_extensions"))
        log_path = os.path.join(self.work, log_name + ".log")
        with open(log_path, "w", encoding="utf-8") as log:
            log.write(" ".join(cmd) + "\n")
            log.flush()
            proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            with open(log_path, encoding="utf-8", errors="replace") as f:
                tail = f.read()[-3000:]
            raise RuntimeError(f"exit {proc.returncode} ({log_path}):\n{tail}")

    def final(self, output_dir: str) -> dict:
        """The last final-test record of ``output_dir/log.txt``."""
        with open(os.path.join(output_dir, "log.txt"), encoding="utf-8") as f:
            finals = [r for r in map(json.loads, filter(str.strip, f)) if "Final top-1" in r]
        if not finals:
            raise RuntimeError(f"no final test line in {output_dir}/log.txt")
        return {k: finals[-1][k] for k in ("Final top-1", "Final top-5")}

    def step(self, name: str, fn: Callable[[], Optional[dict]], needs_cuda: bool = False,
             why: str = "needs CUDA") -> None:
        """Run one step and record its status, time and what it returns."""
        if self.only and name not in self.only and name != "make_data":
            return
        if needs_cuda and not self.cuda:
            LOG.info("%-24s skipped: %s", name, why)
            self.results[name] = {"status": SKIPPED, "reason": why}
            return
        start = time.perf_counter()
        try:
            detail = fn() or {}
            status = OK
        except Exception as exc:  # a failed step is recorded and the check goes on
            detail, status = {"error": str(exc)[-3000:]}, FAILED
        seconds = time.perf_counter() - start
        self.results[name] = {"status": status, "seconds": round(seconds, 2), **detail}
        LOG.info("%-24s %s (%.1f s)%s", name, status, seconds,
                 "" if status == OK else "\n" + detail["error"])

    # -- the steps -----------------------------------------------------------------------------
    def make_data(self) -> dict:
        if not os.path.exists(os.path.join(self.data, "test.csv")):
            make_synthetic_dataset(self.data, **self.synth)
        with open(os.path.join(self.data, "train.csv"), encoding="utf-8") as f:
            return {"train_videos": sum(1 for line in f if line.strip())}

    def ddp_amp(self) -> dict:
        out = os.path.join(self.work, "ddp_amp")
        # always torchrun, so the process group (NCCL on GPU, gloo on CPU) starts even on one GPU
        self.run_cli(self.flags(out, update_freq=2, dist_eval=True), self.nproc, "ddp_amp",
                     torchrun=True)
        with open(os.path.join(out, "log.txt"), encoding="utf-8") as f:
            records = [json.loads(line) for line in f if line.strip()]
        self.finals["ddp_amp"] = self.final(out)
        epochs = [r for r in records if "epoch" in r]
        return {"epochs": len(epochs), "processes": self.nproc,
                "backend": "nccl" if self.cuda else "gloo", **self.finals["ddp_amp"]}

    def eval_equals(self, source: str, target: str) -> dict:
        """``--eval`` of ``source``'s last checkpoint (one process) gives its final numbers."""
        src = os.path.join(self.work, source)
        ckpt = next((os.path.join(src, c) for c in ("checkpoint-last.pth", "checkpoint-last")
                     if os.path.exists(os.path.join(src, c))), None)
        if ckpt is None:
            raise RuntimeError(f"no checkpoint-last in {src}")
        out = os.path.join(self.work, target)
        self.run_cli(self.flags(out, eval=True, resume=ckpt), 1, target)
        again, trained = self.final(out), self.final(src)
        if again != trained:
            raise RuntimeError(f"--eval of {ckpt}: {again}, training's final test: {trained}")
        return {"checkpoint": os.path.relpath(ckpt, self.out), **again}

    def fp16_clip_grad(self) -> dict:
        out = os.path.join(self.work, "fp16_clip_grad")
        self.run_cli(self.flags(out, amp=True, amp_dtype="fp16", clip_grad=1.0), self.nproc,
                     "fp16_clip_grad")
        return self.final(out)

    def deepspeed_stage0(self) -> dict:
        out = os.path.join(self.work, "deepspeed_bf16_stage0")
        flags = dict(enable_deepspeed=True, amp=True, amp_dtype="bf16", dist_eval=True)
        nproc = 1 if self.dry else self.nproc  # dry: DeepSpeed's start-up is most of the time
        self.run_cli(self.flags(out, **flags), nproc, "deepspeed_bf16_stage0_train")
        with open(os.path.join(out, "deepspeed_config.json"), encoding="utf-8") as f:
            config = json.load(f)
        if not config["bf16"]["enabled"] or config["zero_optimization"]["stage"] != 0:
            raise RuntimeError(f"unexpected DeepSpeed config: {config}")
        self.run_cli(self.flags(out, epochs=self.epochs + 1, **flags), nproc,
                     "deepspeed_bf16_stage0_resume")
        with open(os.path.join(out, "run.log"), encoding="utf-8") as f:
            if "resumed from" not in f.read():
                raise RuntimeError(f"the second run did not resume ({out}/run.log)")
        return self.eval_equals("deepspeed_bf16_stage0", "deepspeed_bf16_stage0_eval")

    def deepspeed_stage2(self, opt: str) -> dict:
        name = f"deepspeed_stage2_{opt}"
        out = os.path.join(self.work, name)
        os.makedirs(out, exist_ok=True)
        config = os.path.join(self.work, f"{name}_config.json")
        with open(config, "w", encoding="utf-8") as f:
            json.dump({"zero_optimization": {"stage": 2}}, f)
        self.run_cli(self.flags(out, enable_deepspeed=True, deepspeed_config=config, opt=opt,
                                momentum=0.9 if opt == "sgd" else None, dist_eval=True),
                     self.nproc, name)
        with open(os.path.join(out, "deepspeed_config.json"), encoding="utf-8") as f:
            stage = json.load(f)["zero_optimization"]["stage"]
        if stage != 2:
            raise RuntimeError(f"{out}/deepspeed_config.json has ZeRO stage {stage}")
        return self.final(out)

    def compile(self) -> dict:
        out = os.path.join(self.work, "compile")
        self.run_cli(self.flags(out, compile=True), 1, "compile")
        return self.final(out)

    def throughput(self) -> dict:
        """APT training steps on synthetic tensors: clips/s and peak memory."""
        if self.dry:
            model_name, frames, size, batch, warmup, steps = "vit_micro_patch16", 4, 32, 2, 1, 2
        else:
            model_name, frames, size, batch = "vit_base_patch16_224", 16, 224, 8
            warmup, steps = 5, 20
        device = torch.device("cuda" if self.cuda else "cpu")
        torch.manual_seed(0)
        model = build(model_name, "prompt (APT)", 400, frames, size, num_classes=174,
                      device=str(device)).train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-5)
        x = torch.randn(batch, 3, frames, size, size, device=device)
        y = torch.randint(0, 174, (batch,), device=device)
        dtype = torch.bfloat16 if self.cuda else None

        def one_step() -> None:
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=dtype or torch.float32,
                                enabled=dtype is not None):
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()

        for _ in range(warmup):
            one_step()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(steps):
            one_step()
        if self.cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        result = {"model": model_name, "clip": f"{frames}x{size}x{size}", "prompts": 400,
                  "batch": batch, "dtype": "bf16" if dtype else "fp32", "steps": steps,
                  "clips_per_s": round(batch * steps / seconds, 2),
                  "trainable_params": sum(p.numel() for p in params)}
        if self.cuda:
            result["peak_memory_mib"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
            result["gpu"] = torch.cuda.get_device_name(device)
        else:
            result["peak_memory_mib"] = None  # CUDA's allocator statistics only
        return result

    # -- the whole check -----------------------------------------------------------------------
    def run(self) -> None:
        os.makedirs(self.work, exist_ok=True)
        self.step("make_data", self.make_data)
        self.step("ddp_amp", self.ddp_amp)
        self.step("eval_equals_final", lambda: self.eval_equals("ddp_amp", "ddp_amp_eval"))
        # CPU autocast has no fp16 loss-scaling path worth checking: fp16 needs the GPU.
        self.step("fp16_clip_grad", self.fp16_clip_grad, needs_cuda=True,
                  why="fp16 autocast with the loss scaler needs CUDA")
        self.step("deepspeed_bf16_stage0", self.deepspeed_stage0)
        for opt in ("sgd", "adamw"):
            self.step(f"deepspeed_stage2_{opt}", lambda o=opt: self.deepspeed_stage2(o),
                      needs_cuda=True, why="needs GPU (ZeRO-2 is checked on a GPU only)")
        self.step("compile", self.compile)
        self.step("throughput", self.throughput)

    def write(self, seconds: float) -> str:
        summary = {
            "mode": "dry" if self.dry else "gpu", "seconds": round(seconds, 1),
            "machine": {"host": platform.node(), "python": platform.python_version(),
                        "torch": torch.__version__, "cuda": torch.version.cuda,
                        "gpu": torch.cuda.get_device_name(0) if self.cuda else None,
                        "processes": self.nproc},
            "steps": self.results,
        }
        with open(os.path.join(self.out, "gpu_check.json"), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
        lines = [f"### GPU check ({summary['mode']}, {seconds:.0f} s)", "",
                 f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
                 f"{summary['machine']['gpu'] or 'CPU'}, {self.nproc} processes", "",
                 "| step | status | seconds | detail |", "|---|---|---|---|"]
        for name, r in self.results.items():
            detail = {k: v for k, v in r.items() if k not in ("status", "seconds", "error")}
            if "error" in r:
                lines_of_error = r["error"].strip().splitlines() or [""]
                detail["error"] = lines_of_error[-1][:200]
            text = ", ".join(f"{k}: {v}" for k, v in detail.items()).replace("|", "/")
            lines.append(f"| {name} | {r['status']} | {r.get('seconds', '')} | {text} |")
        with open(os.path.join(self.out, "gpu_check.md"), "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder for gpu_check.json, gpu_check.md, runs/")
    p.add_argument("--dry", action="store_true",
                   help="smallest sizes on CPU with gloo (CUDA-only steps skipped)")
    p.add_argument("--only", nargs="*", default=None,
                   help="run these steps only (make_data always runs)")
    p.add_argument("--max_gpus", type=int, default=8, help="processes on a GPU machine at most")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    check = Check(args)
    start = time.perf_counter()
    check.run()
    LOG.info("\n%s", check.write(time.perf_counter() - start))
    return int(any(r["status"] == FAILED for r in check.results.values()))


if __name__ == "__main__":
    sys.exit(main())
