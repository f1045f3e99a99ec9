"""Builders shared by the pre-training tests: tiny models, synthetic unlabelled videos, flags."""
from __future__ import annotations

import os
import subprocess
import sys
from typing import Any, List, Sequence

import pytest

from models.pretrain import create_pretrain_model

# Tiny clip shape: 4 frames of 32x32 -> a (2, 2, 2) token grid, 8 tokens.
PRETRAIN_TINY = dict(img_size=32, all_frames=4, decoder_depth=1)
# Synthetic videos: 64x64 (decord copies 32-pixel-wide frames wrongly; crops are resized to 32).
VIDEO_SIZE = 64
VIDEO_FRAMES = 12


def tiny_pretrain_model(**kwargs: Any):
    """``pretrain_videomae_micro_patch16`` (dim 64, depth 2) on 4x32x32 clips."""
    cfg = dict(PRETRAIN_TINY)
    cfg.update(kwargs)
    return create_pretrain_model("pretrain_videomae_micro_patch16", **cfg)


def write_synthetic_videos(root: str, num_classes: int = 4, videos_per_class: int = 4,
                           num_frames: int = VIDEO_FRAMES, size: int = VIDEO_SIZE) -> str:
    """Write synthetic mp4 videos and ``root/train.csv`` (labels present but unused)."""
    from datasets.synthetic import make_synthetic_dataset

    make_synthetic_dataset(root, num_classes=num_classes, videos_per_class=videos_per_class,
                           num_frames=num_frames, size=size, seed=0, splits={"train": 1.0})
    return root


@pytest.fixture(scope="module")
def synthetic_videos(tmp_path_factory) -> str:
    """A folder with 16 synthetic videos and train.csv, written once per test module."""
    return write_synthetic_videos(str(tmp_path_factory.mktemp("pretrain_videos")))


def pretrain_argv(data_path: str, output_dir: str, *extra: str) -> List[str]:
    """Command line for run_mae_pretraining.py on tiny clips (fast on 2 CPU cores)."""
    return ["--model", "pretrain_videomae_micro_patch16", "--decoder_depth", "1",
            "--data_path", data_path, "--output_dir", output_dir,
            "--log_dir", os.path.join(output_dir, "tb"), "--num_frames", "4",
            "--sampling_rate", "2", "--input_size", "32", "--batch_size", "4",
            "--num_workers", "0", "--device", "cpu", "--mask_ratio", "0.75",
            "--warmup_epochs", "0", "--seed", "0", *extra]


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_pretraining_cli(argv: Sequence[str], nproc: int = 0, port: int = 0,
                        timeout: int = 240) -> subprocess.CompletedProcess:
    """Run run_mae_pretraining.py in a subprocess (under ``torchrun`` when ``nproc`` > 0), one
    thread per process; fails the test with the output tail on a non-zero exit."""
    script = os.path.join(ROOT, "run_mae_pretraining.py")
    cmd = [sys.executable, script, *argv]
    if nproc:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               "--master_addr=127.0.0.1", f"--master_port={port}", script, *argv]
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update({"OMP_NUM_THREADS": "1",
                "PYTHONPATH": ROOT + os.pathsep + env.get("PYTHONPATH", "")})
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited with {proc.returncode}:\n"
                             f"{(proc.stdout + proc.stderr)[-6000:]}")
    return proc


__all__ = ["run_pretraining_cli", "PRETRAIN_TINY", "tiny_pretrain_model", "write_synthetic_videos",
           "synthetic_videos", "pretrain_argv", "VIDEO_SIZE", "VIDEO_FRAMES", "ROOT"]
