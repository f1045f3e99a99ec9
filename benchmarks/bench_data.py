"""Data pipeline throughput, ours against an original-style per-frame PIL pipeline (not a test;
the table goes to BENCHMARKS.md).

Both pipelines run side by side in one process on the same files: ours through
``datasets.build_dataset`` (``ds[i]``), the original-style one through
``benchmarks/original_pipeline.py`` (VideoMAE's ``VideoClsDataset`` steps). Measured, per
source (320x240 avi/mpeg4, mp4/h264, webm/vp9, 340x256 mp4/h264, frame folders) and decoder
(decord, PyAV):

* training items per second (one item = one decoded video -> ``num_sample`` augmented clips);
* test videos per second (all 5 temporal x 3 spatial views of a video; the original makes one
  item per view and decodes the video for each);
* bytes per item passed from a DataLoader worker to the trainer;
* where the original's time goes (CPU ms per stage).

Rates are per CPU-second of this process (one torch thread = one DataLoader worker with a core
of its own) and per wall-clock second, median over repeats after a warm-up item; ours and the
original are measured alternately (ours first on even repeats, the original first on odd ones),
so a busy machine slows both alike.

Usage::

    python benchmarks/bench_data.py --out benchmarks/results/data.md
    python benchmarks/bench_data.py --quick          # tiny smoke run, a few seconds

Long on purpose: one benchmark, both pipelines' timing loops and its report side by side.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import av
import numpy as np
import PIL
import timm
import torch
import torchvision
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # entry point

from benchmarks.original_pipeline import OriginalStyleDataset, StageTimer  # noqa: E402
from datasets import build_dataset  # noqa: E402
from datasets.synthetic import MOTION_CLASSES, render_clip, write_video  # noqa: E402
from utils.config import DataConfig  # noqa: E402

logger = logging.getLogger("bench_data")

# Pixel noise of std 4.5 grey levels on the rendered clips gives the bit rates of real files
# (a few hundred kbit/s at 320x240, like UCF101/HMDB51; more at 340x256, like Kinetics), so
# decoding costs what it costs on real data sets. x264 crf 20 as the earlier version of this
# benchmark; mpeg4 at a fixed 400 kbit/s (its default qscale 3 squeezes the noise out to about
# 80 kbit/s); vp9 with datasets.synthetic's defaults.
NOISE_STD = 4.5
_OPTIONS = {".mp4": {"crf": "20", "preset": "veryfast", "threads": "1"},
            ".avi": {"b": "400k"},
            ".webm": None}


@dataclass
class Settings:
    """Clip and view settings shared by both pipelines.

    Args:
        num_frames: frames per clip.
        sampling_rate: frame distance.
        input_size: training crop and test view size.
        short_side_size: test resize of the short side.
        test_num_segment: temporal test views.
        test_num_crop: spatial test views.
        num_sample: augmented clips per decoded training video.
        aa: RandAugment string.
        reprob: random erasing probability.
    """

    num_frames: int = 16
    sampling_rate: int = 4
    input_size: int = 224
    short_side_size: int = 224
    test_num_segment: int = 5
    test_num_crop: int = 3
    num_sample: int = 2
    aa: str = "rand-m4-n2-mstd0.2-inc1"
    reprob: float = 0.25


@dataclass
class Source:
    """One kind of input: a list of videos or frame folders of the same format.

    Args:
        name: row label.
        paths: the files or folders.
        backends: decoders to measure it with (frame folders: PIL only, one row).
        kbps: average bit rate (video files) or None.
    """

    name: str
    paths: List[str]
    backends: Tuple[str, ...] = ("decord", "pyav")
    kbps: Optional[float] = None


@dataclass
class Result:
    """Rates of one (source, backend, pipeline, split)."""

    cpu: List[float] = field(default_factory=list)
    wall: List[float] = field(default_factory=list)
    bytes_per_item: float = 0.0
    stages: Dict[str, float] = field(default_factory=dict)


def write_frame_folder(folder: str, frames: np.ndarray) -> None:
    """Frames as ``img_00001.jpg, ...`` (1-based, JPEG quality 90, the mmaction convention)."""
    os.makedirs(folder, exist_ok=True)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(os.path.join(folder, f"img_{i + 1:05d}.jpg"), quality=90)


def _noisy_clip(seed: int, num_frames: int, height: int, width: int) -> np.ndarray:
    """A synthetic clip with pixel noise of std ``NOISE_STD`` (a fixed level, unlike
    render_clip's random one, so every file has a realistic bit rate)."""
    rng = np.random.default_rng(seed)
    frames = render_clip(MOTION_CLASSES[seed % 8], num_frames, height, width, rng, noise_max=0.0)
    noisy = frames + rng.normal(0.0, NOISE_STD, size=frames.shape).astype(np.float32)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def make_sources(folder: str, count: int, num_frames: int, fps: int,
                 sizes: Tuple[Tuple[int, int], Tuple[int, int]] = ((240, 320), (256, 340))
                 ) -> List[Source]:
    """Render ``count`` clips and write them in every benchmarked format.

    Args:
        folder: output folder.
        count: videos per format.
        num_frames: frames per video.
        fps: frame rate written into the files.
        sizes: (height, width) of the small videos (avi, mp4, webm, frame folders) and of the
            Kinetics-like mp4 files.

    Returns:
        The sources, in table order.
    """
    (h, w), (kh, kw) = sizes
    small = {".avi": [], ".mp4": [], ".webm": []}
    kinetics, folders = [], []
    for i in range(count):
        frames = _noisy_clip(i, num_frames, h, w)
        for ext, paths in small.items():
            path = os.path.join(folder, f"v{i}{ext}")
            write_video(path, frames, fps=fps, options=_OPTIONS[ext])
            paths.append(path)
        folders.append(os.path.join(folder, f"v{i}_frames"))
        write_frame_folder(folders[-1], frames)
        kinetics.append(os.path.join(folder, f"k{i}.mp4"))
        write_video(kinetics[-1], _noisy_clip(1000 + i, num_frames, kh, kw), fps=fps,
                    options=_OPTIONS[".mp4"])

    def kbps(paths: Sequence[str]) -> float:
        return sum(os.path.getsize(p) * 8 for p in paths) / (len(paths) * num_frames / fps) / 1000

    return [Source(f"{w}x{h} avi/mpeg4", small[".avi"], kbps=kbps(small[".avi"])),
            Source(f"{w}x{h} mp4/h264", small[".mp4"], kbps=kbps(small[".mp4"])),
            Source(f"{w}x{h} webm/vp9", small[".webm"], kbps=kbps(small[".webm"])),
            Source(f"{kw}x{kh} mp4/h264", kinetics, kbps=kbps(kinetics)),
            Source(f"{w}x{h} frame folders (JPEG q90)", folders, backends=("PIL",))]


def ours_dataset(source: Source, backend: str, train: bool, s: Settings, folder: str) -> Any:
    """Our dataset over ``source`` through ``build_dataset`` (lists written into ``folder``)."""
    os.makedirs(folder, exist_ok=True)
    for split in ("train", "test"):
        with open(os.path.join(folder, f"{split}.csv"), "w", encoding="utf-8") as f:
            f.write("".join(f"{os.path.abspath(p)} 0\n" for p in source.paths))
    args = argparse.Namespace(
        data_set="custom", nb_classes=1, data_path=folder, data_root="", num_frames=s.num_frames,
        sampling_rate=s.sampling_rate, input_size=s.input_size,
        short_side_size=s.short_side_size, test_num_segment=s.test_num_segment,
        test_num_crop=s.test_num_crop, num_sample=s.num_sample, is_aa=True, aa=s.aa,
        train_interpolation="bicubic", reprob=s.reprob, remode="pixel", recount=1,
        video_backend="decord" if backend == "PIL" else backend, max_bad_fraction=0.01)
    ds, _ = build_dataset(train, not train, DataConfig.from_args(args))
    return ds


def original_dataset(source: Source, backend: str, train: bool, s: Settings,
                     timer: StageTimer) -> OriginalStyleDataset:
    """The original-style dataset over ``source``."""
    return OriginalStyleDataset(
        source.paths, [0] * len(source.paths), "train" if train else "test",
        backend="decord" if backend == "PIL" else backend, num_frames=s.num_frames,
        sampling_rate=s.sampling_rate, input_size=s.input_size,
        short_side_size=s.short_side_size, test_num_segment=s.test_num_segment,
        test_num_crop=s.test_num_crop, num_sample=s.num_sample, aa=s.aa,
        train_interpolation="bicubic", reprob=s.reprob, timer=timer)


def nbytes(x: Any) -> int:
    """Bytes of the tensors in an item's first field (a tensor or a list of tensors)."""
    if isinstance(x, torch.Tensor):
        return x.element_size() * x.nelement()
    return sum(nbytes(t) for t in x)


def timed_pass(fn: Callable[[], Tuple[int, int]]) -> Tuple[float, float, int, int]:
    """Run ``fn`` (returning (units, bytes)); return (CPU s, wall s, units, bytes)."""
    c0, w0 = time.process_time(), time.perf_counter()
    units, size = fn()
    return time.process_time() - c0, time.perf_counter() - w0, units, size


def measure(source: Source, backend: str, train: bool, s: Settings, repeats: int,
            folder: str, train_cycles: int = 1) -> Tuple[Result, Result]:
    """Interleaved passes of ours and the original over ``source``.

    Args:
        source: the files.
        backend: 'decord', 'pyav' or 'PIL' (frame folders).
        train: training items, else test views.
        s: settings.
        repeats: measured passes per pipeline.
        folder: where to write our list files.
        train_cycles: a training pass takes this many items per video (a training item is
            cheap next to a test video, and more items steady its rate).

    Returns:
        ``(ours, original)``; both rates count videos (a training item is one video).
    """
    timer = StageTimer()
    ours = ours_dataset(source, backend, train, s, folder)
    orig = original_dataset(source, backend, train, s, timer)
    n = len(source.paths)
    cycles = train_cycles if train else 1
    views = 1 if train else s.test_num_segment * s.test_num_crop

    def run_ours() -> Tuple[int, int]:
        return n * cycles, sum(nbytes(ours[i % n][0]) for i in range(n * cycles))

    def run_orig() -> Tuple[int, int]:
        # Test: the original has one item per (video, view); a video is all its views.
        return n * cycles, sum(nbytes(orig[i % len(orig)][0]) for i in range(n * cycles * views))

    # Warm-up (imports, decoder and RandAugment set-up, allocator): one item each.
    ours[0]
    orig[0]
    timer.seconds.clear()
    results = {"ours": Result(), "orig": Result()}
    for r in range(repeats):
        order = (("ours", run_ours), ("orig", run_orig))
        for name, fn in (order if r % 2 == 0 else order[::-1]):
            cpu, wall, units, size = timed_pass(fn)
            res = results[name]
            res.cpu.append(units / cpu)
            res.wall.append(units / wall)
            res.bytes_per_item = size / units
    results["orig"].stages = {k: v / (n * cycles * repeats) for k, v in timer.seconds.items()}
    return results["ours"], results["orig"]


def machine() -> str:
    """CPU model, core count and library versions."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import decord  # no wheels on some platforms; the rest of the benchmark works without it
    return (f"{cpu}, {os.cpu_count()} cores; Python {platform.python_version()}, torch "
            f"{torch.__version__}, torchvision {torchvision.__version__}, timm {timm.__version__}, "
            f"decord {decord.__version__}, PyAV {av.__version__}, Pillow {PIL.__version__}, "
            f"numpy {np.__version__}")


def _med(values: Sequence[float]) -> float:
    return statistics.median(values)


def _cell(values: Sequence[float]) -> str:
    return f"{_med(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def _fmt_bytes(b: float) -> str:
    return f"{b / 1e6:.1f} MB"


def rate_table(title: str, unit: str, rows: List[Tuple[str, str, Result, Result]]) -> List[str]:
    """Markdown rows of one measure (training or test)."""
    lines = [f"**{title}** ({unit}; CPU: median (range) over repeats)", "",
             "| source | decoder | ours (CPU) | original (CPU) | ours/original (CPU) | ours (wall) "
             "| original (wall) | ours/original (wall) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, backend, o, b in rows:
        lines.append(f"| {name} | {backend} | {_cell(o.cpu)} | {_cell(b.cpu)} | "
                     f"**{_med(o.cpu) / _med(b.cpu):.1f}x** | {_med(o.wall):.2f} | "
                     f"{_med(b.wall):.2f} | {_med(o.wall) / _med(b.wall):.1f}x |")
    return lines + [""]


def stage_table(rows: List[Tuple[str, str, Result, Result]], train: bool, views: int) -> List[str]:
    """Markdown rows: the original's CPU ms per stage per training item / test video."""
    names = sorted({k for *_, b in rows for k in b.stages},
                   key=lambda k: ["decode", "to_pil", "randaugment", "resize", "crop",
                                  "to_tensor", "normalize", "crop_resize", "flip",
                                  "erase"].index(k))
    what = "training item" if train else f"test video ({views} views)"
    lines = [f"Original-style pipeline, CPU ms per {what} by stage:", "",
             "| source | decoder | " + " | ".join(names) + " | total |",
             "| --- | --- | " + " | ".join("---" for _ in names) + " | --- |"]
    for name, backend, _o, b in rows:
        ms = [b.stages.get(k, 0.0) * 1000 for k in names]
        lines.append(f"| {name} | {backend} | " + " | ".join(f"{v:.0f}" for v in ms)
                     + f" | {sum(ms):.0f} |")
    return lines + [""]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark and write the markdown report.

    Args:
        argv: command-line arguments (``--videos``, ``--repeats``, ``--video_frames``,
            ``--quick``, ``--out``).
    """
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=int, default=3, help="videos per format")
    p.add_argument("--video_frames", type=int, default=200, help="frames per video")
    p.add_argument("--repeats", type=int, default=3, help="measured passes per pipeline")
    p.add_argument("--train_cycles", type=int, default=4,
                   help="training items per video in one pass")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1 small video per format, 8x112 clips, 2x3 views, 1 repeat")
    p.add_argument("--out", default="", help="write the markdown report here (default: print)")
    a = p.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)  # what a DataLoader worker gets
    if a.quick:
        s = Settings(num_frames=8, sampling_rate=2, input_size=112, short_side_size=112,
                     test_num_segment=2, test_num_crop=3)
        a.videos, a.video_frames, a.repeats, a.train_cycles = 1, 40, 1, 1
        sizes = ((120, 160), (128, 170))
    else:
        s = Settings()
        sizes = ((240, 320), (256, 340))
    np.random.seed(0)
    random.seed(0)
    torch.manual_seed(0)
    load_before = os.getloadavg()
    train_rows: List[Tuple[str, str, Result, Result]] = []
    test_rows: List[Tuple[str, str, Result, Result]] = []
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        sources = make_sources(tmp, a.videos, a.video_frames, 30, sizes)
        logger.info("wrote %d videos per format in %.0f s", a.videos, time.perf_counter() - t_start)
        for source in sources:
            for backend in source.backends:
                for train, rows in ((True, train_rows), (False, test_rows)):
                    o, b = measure(source, backend, train, s, a.repeats,
                                   os.path.join(tmp, "lists"), a.train_cycles)
                    rows.append((source.name, backend, o, b))
                    logger.info("%s %s %s: ours %.2f/s, original %.2f/s (CPU)", source.name,
                                backend, "train" if train else "test", _med(o.cpu), _med(b.cpu))
    load_after = os.getloadavg()
    views = s.test_num_segment * s.test_num_crop
    video_rows = [r for r in train_rows if "frame" not in r[0]]
    test_video_rows = [r for r in test_rows if "frame" not in r[0]]

    def ratios(rows: List[Tuple[str, str, Result, Result]]) -> List[float]:
        return [_med(o.cpu) / _med(b.cpu) for _n, _b, o, b in rows]

    def folder_ratio(rows: List[Tuple[str, str, Result, Result]]) -> float:
        # Ours on frame folders against the original on the same clips' mp4 files (decord).
        ours_frames = next(r[2] for r in rows if r[1] == "PIL")
        orig_video = next(r[3] for r in rows if r[0] == ref_name and r[1] == "decord")
        return _med(ours_frames.cpu) / _med(orig_video.cpu)

    ref_name = f"{sizes[0][1]}x{sizes[0][0]} mp4/h264"
    folder_train, folder_test = folder_ratio(train_rows), folder_ratio(test_rows)
    o_bytes, b_bytes = train_rows[0][2].bytes_per_item, train_rows[0][3].bytes_per_item
    o_tbytes, b_tbytes = test_rows[0][2].bytes_per_item, test_rows[0][3].bytes_per_item
    kbps = ", ".join(f"{src.name} {src.kbps:.0f} kbit/s" for src in sources if src.kbps)
    text = "\n".join([
        "## Data pipeline: ours against the original-style pipeline (benchmarks/bench_data.py)",
        "",
        f"Machine: {machine()}. Date: {datetime.date.today().isoformat()}. Load average "
        f"(1/5/15 min) {load_before[0]:.1f}/{load_before[1]:.1f}/{load_before[2]:.1f} at the "
        f"start and {load_after[0]:.1f}/{load_after[1]:.1f}/{load_after[2]:.1f} at the end of the "
        f"run (on {os.cpu_count()} cores; above 1 the machine was shared and the wall-clock rates "
        f"are low). Run time {time.perf_counter() - t_start:.0f} s"
        + (" (--quick smoke run: not a measurement)." if a.quick else "."),
        "",
        f"Inputs: {a.videos} synthetic clips per format (datasets/synthetic.py render_clip), "
        f"{a.video_frames} frames at 30 fps, "
        f"pixel noise std {NOISE_STD}; the same clips as avi/mpeg4 (400 kbit/s), mp4/h264 (x264 "
        f"veryfast crf 20), webm/vp9 "
        f"(crf 30, realtime) and frame folders (img_00001.jpg, ..., JPEG quality 90), and other "
        f"clips at {sizes[1][1]}x{sizes[1][0]} (Kinetics-like) as mp4/h264. Bit rates: {kbps}.",
        "",
        f"Settings: {s.num_frames} frames x sampling rate {s.sampling_rate} at {s.input_size}, "
        f"num_sample {s.num_sample}, RandAugment {s.aa}, random resized crop (0.08-1), flip, "
        f"reprob {s.reprob}; test {s.test_num_segment}x{s.test_num_crop} views at short side "
        f"{s.short_side_size}. One process, torch.set_num_threads(1) (= one DataLoader worker), "
        "decoders with one thread. **Ours**: datasets.build_dataset items (one training item = "
        "one decoded video -> num_sample clips; one test item = all views of a video, decoded "
        "once). **Original**: benchmarks/original_pipeline.py, VideoMAE's VideoClsDataset steps "
        "(per-frame PIL RandAugment, ToTensor, float normalise, float crop-resize, timm random "
        "erasing per frame; at test one item per view, each decoding every "
        f"{s.sampling_rate}th frame of the whole video and resizing them with PIL, then "
        "ClipToTensor), float32 items. A pass handles every video of a source (training: "
        f"{a.train_cycles} items per video; test: all {views} views); after a warm-up item, "
        f"{a.repeats} passes per "
        "pipeline alternate between ours and the original (ours first on even repeats). Rates are "
        "per CPU-second of the process (a worker with a core of its own; this counts the "
        "decoders' own helper threads too, which is why a wall-clock rate can exceed the CPU "
        "one) and per wall-clock second (lower when the machine is shared).",
        "",
        *rate_table("Training", "items/s, one item = one video -> num_sample clips", train_rows),
        *rate_table("Test", f"videos/s, all {views} views", test_rows),
        f"**Bytes per item from a worker to the trainer**: training item ({s.num_sample} clips) "
        f"ours {_fmt_bytes(o_bytes)}, original {_fmt_bytes(b_bytes)} "
        f"(original/ours {b_bytes / o_bytes:.1f}x); test video ({views} views) ours "
        f"{_fmt_bytes(o_tbytes)}, original {_fmt_bytes(b_tbytes)} "
        f"(original/ours {b_tbytes / o_tbytes:.1f}x).",
        "",
        "**Against the targets** (CPU-time rates):",
        "",
        "| measure | measured | target |",
        "| --- | --- | --- |",
        f"| training items/s, ours/original (video files) | {min(ratios(video_rows)):.1f}x-"
        f"{max(ratios(video_rows)):.1f}x | >= 2x |",
        f"| test videos/s, ours/original (video files) | {min(ratios(test_video_rows)):.1f}x-"
        f"{max(ratios(test_video_rows)):.1f}x | >= 4x |",
        f"| bytes per training item, original/ours | {b_bytes / o_bytes:.1f}x | >= 4x |",
        f"| ours on frame folders / original on {ref_name} (decord): training | "
        f"{folder_train:.1f}x | >= 3x |",
        f"| ours on frame folders / original on {ref_name} (decord): test | "
        f"{folder_test:.1f}x | >= 3x |",
        "",
        *stage_table(train_rows, True, views),
        *stage_table(test_rows, False, views),
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
