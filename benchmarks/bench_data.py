"""Data pipeline throughput (not a test; numbers go to BENCHMARKS.md).

1. Training clips per second per worker: 16-frame clips (sampling rate 4) from 320x240 mp4 files,
   with the full augmentation (RandAugment, random resized crop to 224, flip, normalisation,
   random erasing), in one process with one torch thread, i.e. one DataLoader worker.
2. Test views per second at 5 temporal x 3 spatial views: each video decoded once for all its
   views against decoded once per view (what a dataset with one item per view does).

Usage::

    python benchmarks/bench_data.py --out benchmarks/results/data.md
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from datasets import build_dataset  # noqa: E402
from tools.make_synthetic import MOTION_CLASSES, render_clip, write_video  # noqa: E402

logger = logging.getLogger("bench_data")


def make_videos(folder: str, count: int, num_frames: int, fps: int) -> str:
    """Write ``count`` 320x240 h264 videos and a train/val/test list naming them."""
    lines = []
    for i in range(count):
        rel = f"v{i}.mp4"
        # Moderate noise at crf 20 gives the bit rate of real 320x240 clips (a few hundred
        # kbit/s), so decoding costs what it costs on UCF101/HMDB51-sized videos.
        frames = render_clip(MOTION_CLASSES[i % 8], num_frames, 240, 320, np.random.default_rng(i),
                             noise_max=6.0)
        write_video(os.path.join(folder, rel), frames, fps=fps,
                    options={"crf": "20", "preset": "veryfast", "threads": "1"})
        lines.append(f"{rel} {i % 2}")
    for split in ("train", "val", "test"):
        with open(os.path.join(folder, f"{split}.csv"), "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    return folder


def base_args(data_path: str, **kw) -> argparse.Namespace:
    args = dict(data_set="custom", nb_classes=2, data_path=data_path, data_root="", num_frames=16,
                sampling_rate=4, num_segments=1, input_size=224, short_side_size=224,
                test_num_segment=5, test_num_crop=3, num_sample=1, is_aa=True,
                aa="rand-m4-n2-mstd0.2-inc1", train_interpolation="bicubic", reprob=0.25,
                remode="pixel", recount=1, video_backend="decord", max_bad_fraction=0.01)
    args.update(kw)
    return argparse.Namespace(**args)


def rate(fn: Callable[[], int], repeats: int) -> Dict[str, float]:
    """Units per second over ``repeats`` runs (after one warm-up run), by CPU time and wall time.

    CPU time of this process (one torch thread, one decoder thread) is what a DataLoader worker
    with a core of its own would take; wall time also counts waiting for a shared machine.
    """
    fn()
    cpu, wall = [], []
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        units = fn()
        cpu.append(units / (time.process_time() - c0))
        wall.append(units / (time.perf_counter() - w0))
    return {"cpu": statistics.median(cpu), "cpu_min": min(cpu), "cpu_max": max(cpu),
            "wall": statistics.median(wall)}


def row(measure: str, backend: str, setting: str, r: Dict[str, float]) -> str:
    return (f"| {measure} | {backend} | {setting} | {r['cpu']:.1f} | "
            f"{r['cpu_min']:.1f}-{r['cpu_max']:.1f} | {r['wall']:.1f} |")


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import av
    import decord
    import timm
    import torchvision
    return (f"{cpu}, {os.cpu_count()} cores; Python {platform.python_version()}, torch "
            f"{torch.__version__}, torchvision {torchvision.__version__}, timm {timm.__version__}, "
            f"decord {decord.__version__}, PyAV {av.__version__}, numpy {np.__version__}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=int, default=6, help="at least 2")
    p.add_argument("--video_frames", type=int, default=300, help="frames per video (10 s at 30 fps)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default="", help="write the markdown result table here")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)  # what a DataLoader worker gets
    rows: List[str] = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        make_videos(tmp, a.videos, a.video_frames, 30)
        total_bits = sum(os.path.getsize(os.path.join(tmp, f"v{i}.mp4")) * 8 for i in range(a.videos))
        kbps = total_bits / (a.videos * a.video_frames / 30) / 1000
        for backend in ("decord", "pyav"):
            for num_sample in (1, 2):
                ds, _ = build_dataset(True, False, base_args(tmp, video_backend=backend,
                                                             num_sample=num_sample))
                np.random.seed(0)
                r = rate(lambda: sum(ds[i][0].shape[0] for i in range(len(ds))), a.repeats)
                rows.append(row("train clips/s per worker", backend, f"num_sample {num_sample}", r))
                logger.info(rows[-1])
            results = {}
            for once in (True, False):
                ds, _ = build_dataset(False, True, base_args(tmp, video_backend=backend))
                ds.config.decode_once = once
                results[once] = rate(lambda: sum(ds[i][0].shape[0] for i in range(len(ds))), a.repeats)
                rows.append(row("test views/s (5x3)", backend,
                                "decode once" if once else "decode per view", results[once]))
                logger.info(rows[-1])
            rows.append(f"| decode-once speed-up | {backend} | 5x3 views | "
                        f"{results[True]['cpu'] / results[False]['cpu']:.1f}x | | "
                        f"{results[True]['wall'] / results[False]['wall']:.1f}x |")
            logger.info(rows[-1])
    text = "\n".join([
        "## Data pipeline (benchmarks/bench_data.py)",
        "",
        f"Machine: {machine()}. Date: {datetime.date.today().isoformat()}. Load average "
        f"(1 min) {load_before:.1f} at the start and {os.getloadavg()[0]:.1f} at the end of the "
        f"run (on {os.cpu_count()} cores; above 1 the machine was shared and the wall-clock rates "
        "are low).",
        "",
        f"{a.videos} synthetic 320x240 h264 mp4 files of {a.video_frames} frames (30 fps, x264 "
        f"veryfast crf 20, default GOP 250, {kbps:.0f} kbit/s on average). One process, one torch thread (= one DataLoader worker). "
        "Training: 16 frames x sampling rate 4, RandAugment rand-m4-n2-mstd0.2-inc1, random "
        "resized crop to 224, flip, ImageNet normalisation, random erasing 0.25. Test: short side "
        f"224, 5 temporal x 3 spatial 224x224 views. Median of {a.repeats} passes over the files "
        "after a warm-up pass. Rates per CPU-second of the process (= a worker with a core of its "
        "own) with their range, and per wall-clock second (lower when the machine is shared).",
        "",
        "| measure | backend | setting | median (CPU time) | range | median (wall) |",
        "| --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
    ])
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w", encoding="utf-8") as f:
            f.write(text)
        logger.info("wrote %s", a.out)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
