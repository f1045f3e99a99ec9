"""Fine-tuning with and without the frame cache (``--cache_videos``, ``--cache_dir``) on the demo
world (not a test; the table goes to BENCHMARKS.md).

The demo's labelled world (``tools/demo.py`` ``DemoConfig``: 8 classes x 40 videos, 64x64, 32
frames, mp4; clips of 8 frames 4 apart at 32x32, 2x3 test views, 2 loader workers), measured
side by side in one process, interleaved rounds, medians:

* **data epoch**: one pass over the train, val and test loaders that ``run_class_apt.py`` builds
  (batch 16, one clip per video, val batch 64), without the cache, and with the frames cached in
  memory (filled before the rounds; the fill is timed on its own);
* **run**: whole ``run_class_apt.py`` runs of APT on the committed demo backbone, as a user or a
  sweep launches them (subprocesses, start-up included): without the cache, with
  ``--cache_videos`` (each run decodes its lists once), and with ``--cache_videos --cache_dir``
  on a folder an earlier run filled (each run maps the files, decoding nothing). The runs'
  ``log.txt`` numbers are compared: the cache must not change them.

Usage::

    python benchmarks/bench_cache.py              # benchmarks/results/cache.md
    python benchmarks/bench_cache.py --quick      # a smoke run of a few seconds
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # entry point

from benchmarks.common import (LOG, header_lines, interleaved, machine_info, md_table,  # noqa: E402
                               median, ratio, setup_logging, setup_threads, write_section)
import torch  # noqa: E402

from datasets import CacheBudget, build_dataset, collate_eval, collate_train  # noqa: E402
from datasets.synthetic import make_synthetic_dataset  # noqa: E402
from utils.config import DataConfig  # noqa: E402

BACKBONE = os.path.join(ROOT, "assets", "demo_backbone", "pretrain_videomae_mini_patch8.pth")


@dataclasses.dataclass(frozen=True)
class World:
    """The demo's labelled world and clip settings (``tools/demo.py`` ``DemoConfig``)."""

    num_classes: int = 8
    videos_per_class: int = 40
    video_frames: int = 32
    video_size: int = 64
    num_frames: int = 8
    sampling_rate: int = 4
    input_size: int = 32
    batch_size: int = 16
    test_num_segment: int = 2
    test_num_crop: int = 3
    workers: int = 2
    epochs: int = 5  # per timed run (the demo trains 20)
    rounds: int = 5
    run_rounds: int = 3


QUICK = World(num_classes=3, videos_per_class=5, video_frames=12, video_size=40, num_frames=4,
              sampling_rate=2, batch_size=4, test_num_crop=2, workers=0, epochs=1, rounds=2,
              run_rounds=1)


def data_config(w: World, data: str, **extra: object) -> DataConfig:
    """The data settings of the demo's fine-tuning runs."""
    return DataConfig.from_args(dict(
        data_path=data, data_set="custom", nb_classes=w.num_classes, num_frames=w.num_frames,
        sampling_rate=w.sampling_rate, input_size=w.input_size, short_side_size=w.input_size,
        batch_size=w.batch_size, batch_size_val=4 * w.batch_size, num_sample=1,
        test_num_segment=w.test_num_segment, test_num_crop=w.test_num_crop, no_flip=True,
        train_crop_scale=(0.6, 1.0), num_workers=w.workers, **extra))


def loaders(cfg: DataConfig) -> List[torch.utils.data.DataLoader]:
    """Train, val and test loaders as ``run_class_apt.py`` builds them (one process)."""
    budget = CacheBudget(cfg.cache_max_gb)
    common = dict(num_workers=cfg.num_workers, pin_memory=False)
    train = build_dataset(True, False, cfg, budget)[0]
    val = build_dataset(False, False, cfg, budget)[0]
    test = build_dataset(False, True, cfg, budget)[0]
    return [torch.utils.data.DataLoader(train, batch_size=cfg.batch_size, shuffle=True,
                                        drop_last=True, collate_fn=collate_train, **common),
            torch.utils.data.DataLoader(val, batch_size=cfg.batch_size_val,
                                        collate_fn=collate_eval, **common),
            torch.utils.data.DataLoader(test, batch_size=math.ceil(cfg.batch_size_val /
                                                                   cfg.test_views),
                                        collate_fn=collate_eval, **common)]


def data_epoch(parts: Sequence[torch.utils.data.DataLoader]) -> Callable[[], int]:
    def run() -> int:
        return sum(1 for loader in parts for _batch in loader)
    return run


def run_argv(w: World, data: str, out: str, *extra: str) -> List[str]:
    """A demo APT run (``tools/demo.py``'s flags) on the committed demo backbone."""
    return [sys.executable, os.path.join(ROOT, "run_class_apt.py"), "--model", "vit_mini_patch8",
            "--transfer_type", "apt", "--prompt_num_tokens", "32", "--prompt_dropout", "0.0",
            "--data_set", "custom", "--nb_classes", str(w.num_classes), "--data_path", data,
            "--batch_size", str(w.batch_size), "--batch_size_val", str(4 * w.batch_size),
            "--num_sample", "1", "--short_side_size", str(w.input_size), "--opt", "adamw",
            "--lr", "0.48", "--weight_decay", "1e-4", "--epochs", str(w.epochs),
            "--warmup_epochs", "1", "--smoothing", "0.0", "--init_scale", "0.001",
            "--test_num_segment", str(w.test_num_segment), "--test_num_crop",
            str(w.test_num_crop), "--save_ckpt_freq", "1000", "--no_flip",
            "--train_crop_scale", "0.6", "1.0", "--no_auto_resume", "--num_frames",
            str(w.num_frames), "--sampling_rate", str(w.sampling_rate), "--input_size",
            str(w.input_size), "--num_workers", str(w.workers), "--device", "cpu", "--seed", "0",
            "--finetune", BACKBONE, "--output_dir", out, *extra]


def log_numbers(out: str) -> List[Dict[str, object]]:
    """``log.txt`` without its timings."""
    with open(os.path.join(out, "log.txt"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [{k: v for k, v in r.items() if "time" not in k and "eta" not in k} for r in rows]


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--out", default="", help="the Markdown table (default: results/cache.md)")
    args = parser.parse_args(argv)
    setup_logging()
    threads = setup_threads()
    w = QUICK if args.quick else World()
    work = tempfile.mkdtemp(prefix="bench_cache_")
    try:
        data = os.path.join(work, "data")
        make_synthetic_dataset(data, num_classes=w.num_classes, videos_per_class=w.videos_per_class,
                               num_frames=w.video_frames, size=w.video_size, seed=0,
                               splits={"train": 0.5, "val": 0.2, "test": 0.3})
        # -- data epochs
        plain = loaders(data_config(w, data))
        fill_s = []
        for _ in range(w.rounds):  # the fill, timed alone (decoded in --num_workers processes)
            fill_s.append(timed(lambda: loaders(data_config(w, data, cache_videos=True))))
        cached = loaders(data_config(w, data, cache_videos=True))
        cache_mib = sum(p.dataset.frames.nbytes for p in cached) / 2 ** 20
        LOG.info("data epochs: %d rounds", w.rounds)
        t = interleaved({"plain": data_epoch(plain), "cached": data_epoch(cached)}, w.rounds,
                        warmup=1)
        # -- whole runs
        cache_dir = os.path.join(work, "cache")
        fill_run = timed(lambda: subprocess.run(
            run_argv(w, data, os.path.join(work, "fill"), "--cache_videos", "--cache_dir",
                     cache_dir), check=True, capture_output=True))
        variants = {"plain": [], "memory": ["--cache_videos"],
                    "disk": ["--cache_videos", "--cache_dir", cache_dir]}
        counter = {"n": 0}

        def launch(extra: List[str]) -> Callable[[], object]:
            def go() -> object:
                counter["n"] += 1
                out = os.path.join(work, f"run{counter['n']}")
                subprocess.run(run_argv(w, data, out, *extra), check=True, capture_output=True)
                logs.setdefault(tuple(extra), log_numbers(out))
                return out
            return go

        logs: Dict[tuple, List[Dict[str, object]]] = {}
        LOG.info("runs: %d rounds of %d epochs", w.run_rounds, w.epochs)
        r = interleaved({k: launch(v) for k, v in variants.items()}, w.run_rounds, warmup=0)
        same = all(v == logs[()] for v in logs.values())
    finally:
        shutil.rmtree(work, ignore_errors=True)

    info = machine_info()
    rows = [["data epoch (train + val + test loaders)", median(t.wall["plain"]),
             median(t.wall["cached"]), ratio(t.wall, "plain", "cached")]]
    run_rows = [[f"run of {w.epochs} epochs, `--cache_videos`", median(r.wall["plain"]),
                 median(r.wall["memory"]), ratio(r.wall, "plain", "memory")],
                [f"run of {w.epochs} epochs, `--cache_videos --cache_dir` (filled)",
                 median(r.wall["plain"]), median(r.wall["disk"]), ratio(r.wall, "plain", "disk")]]
    lines = [f"Demo world: {w.num_classes} classes x {w.videos_per_class} videos ({w.video_size}x"
             f"{w.video_size}, {w.video_frames} frames, mp4), clips of {w.num_frames} frames at "
             f"{w.input_size}x{w.input_size}, batch {w.batch_size}, {w.workers} loader workers, "
             f"{threads} torch threads; medians of {w.rounds} (data) and {w.run_rounds} (runs) "
             f"interleaved rounds, wall-clock seconds.", "",
             *header_lines(info, t.load), "",
             *md_table(["what", "no cache (s)", "cache (s)", "speed-up"], rows + run_rows), "",
             f"- decoded frames of the three lists: {cache_mib:.0f} MiB; filling them in memory "
             f"took {median(fill_s):.2f} s (median of {w.rounds}); the run that filled "
             f"`--cache_dir` took {fill_run:.1f} s.",
             f"- the runs' `log.txt` numbers with and without the cache: "
             f"{'identical' if same else 'DIFFERENT'}."]
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")
        path = args.out
    else:
        path = write_section("cache", lines, quick=args.quick)
    LOG.info("wrote %s:\n%s", path, "\n".join(lines))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
