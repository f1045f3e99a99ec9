"""Shared helpers of the engine/CLI tests: a tiny synthetic data set, the tiny-model flag set,
in-process and subprocess runs of ``run_class_apt.py``, and readers of what a run writes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Dict, List, Optional, Sequence

from utils.cli import flags_to_argv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# 3 classes x 7 videos: 9 train, 3 val, 9 test videos (an odd test count, so a 2-process
# DistributedSampler pads one video and the de-duplication is exercised).
SYNTH = dict(num_classes=3, videos_per_class=7, num_frames=8, size=(32, 40), seed=0,
             splits={"train": 3, "val": 1, "test": 3})
NUM_TEST = 9


def make_data(folder: str) -> str:
    """Write the synthetic data set once into ``folder``; returns it (the --data_path)."""
    from datasets.synthetic import make_synthetic_dataset
    if not os.path.exists(os.path.join(folder, "test.csv")):
        make_synthetic_dataset(folder, **SYNTH)
    return folder


def write_tiny_backbone(folder: str) -> str:
    """A VideoMAE pre-training style checkpoint (``encoder.`` keys, no head) of the tiny
    backbone of ``tiny_argv`` (``vit_micro_patch16`` at 4x32x32), seeded; returns its path."""
    import torch
    from models import create_model
    torch.manual_seed(1)
    model = create_model("vit_micro_patch16", num_classes=3, all_frames=4, img_size=32,
                         use_mean_pooling=False)
    state = {f"encoder.{k}": v for k, v in model.state_dict().items() if not k.startswith("head.")}
    path = os.path.join(folder, "videomae_micro_pretrain.pth")
    torch.save({"model": state, "epoch": 10}, path)
    return path


def tiny_argv(data_path: str, output_dir: str, transfer_type: str = "prompt",
              model: str = "vit_micro_patch16", epochs: int = 1, **flags: object) -> List[str]:
    """Flags of a tiny, fast run (4 frames of 32x32, batch 2 x 2 clips, 2x2 test views).

    Extra ``flags`` are added as ``--name value`` (``True``: a bare switch; ``None``: removed).
    """
    base: Dict[str, object] = {
        "model": model, "transfer_type": transfer_type, "data_set": "custom", "nb_classes": 3,
        "data_path": data_path, "output_dir": output_dir, "log_dir": output_dir,
        "batch_size": 2, "batch_size_val": 4, "num_sample": 2, "input_size": 32,
        "short_side_size": 32, "num_frames": 4, "sampling_rate": 2, "test_num_segment": 2,
        "test_num_crop": 2, "opt": "adamw", "lr": 0.05, "weight_decay": 1e-5, "epochs": epochs,
        "warmup_epochs": 1, "num_workers": 0, "device": "cpu", "prompt_num_tokens": 2,
        "prompt_dropout": 0.1, "prompt_reparam": True, "save_ckpt_freq": 1, "log_every": 50,
        "seed": 0, "smoothing": 0.1,
    }
    base.update(flags)
    return flags_to_argv(base)


def parse(argv: Sequence[str]):
    import run_class_apt
    return run_class_apt.get_args_parser().parse_args(list(argv))


def run_main(argv: Sequence[str]) -> dict:
    """Parse and run in this process; returns ``main``'s result."""
    import run_class_apt
    return run_class_apt.main(parse(argv))


def read_log(output_dir: str) -> List[dict]:
    with open(os.path.join(output_dir, "log.txt"), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def final_record(output_dir: str) -> dict:
    """The last ``Final top-1`` line of ``log.txt``."""
    finals = [r for r in read_log(output_dir) if "Final top-1" in r]
    assert finals, f"no final test line in {output_dir}/log.txt"
    return finals[-1]


def subprocess_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT",
                        "PYTEST_XDIST_WORKER")}
    env.update({"OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT + os.pathsep + env.get("PYTHONPATH", "")})
    env.update(extra or {})
    return env


def run_cli(argv: Sequence[str], nproc: int = 0, port: int = 0, timeout: int = 240,
            env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    """Run ``run_class_apt.py`` in a subprocess, under ``torchrun --nproc_per_node=nproc`` when
    ``nproc`` > 0; fails the test with the output tail on a non-zero exit."""
    script = os.path.join(ROOT, "run_class_apt.py")
    if nproc:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               "--master_addr=127.0.0.1", f"--master_port={port}", script, *argv]
    else:
        cmd = [sys.executable, script, *argv]
    proc = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(env), capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited with {proc.returncode}:\n"
                             f"{(proc.stdout + proc.stderr)[-6000:]}")
    return proc



def train_epoch(model, batches: Sequence, lrs: Sequence[float], update_freq: int = 1,
                criterion=None, epoch: int = 0, start_steps: int = 0,
                distributed: bool = False) -> Dict[str, float]:
    """One ``engine.train_one_epoch`` on CPU with plain SGD (no momentum, no weight decay) and
    the per-step learning rates ``lrs`` (indexed by global step), one optimizer step per
    ``update_freq`` of ``batches`` (``(x, y, bad_paths)`` tuples); returns its stats.

    The unit tests reach ``train_one_epoch`` only through here, so a change of its signature
    is adapted in this one place.
    """
    import torch
    import engine
    from utils.backend import PlainBackend

    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)  # the schedule sets every step's lr
    for group in optimizer.param_groups:
        group["lr_scale"] = 1.0
    backend = PlainBackend(model, optimizer, torch.device("cpu"), None, distributed,
                           update_freq=update_freq)
    step_fn = engine.classification_step(criterion or torch.nn.CrossEntropyLoss())
    return engine.train_one_epoch(backend, step_fn, batches, epoch, lr_values=lrs,
                                  start_steps=start_steps, steps=len(batches) // update_freq,
                                  update_freq=update_freq, print_freq=100)
