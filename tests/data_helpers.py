"""Helpers for the data-pipeline tests: tiny videos written with PyAV, list files, flag sets.

Videos are small (<= 96x72, <= 40 frames) so the whole data test set stays fast on 2 cores.
"""
from __future__ import annotations

import argparse
import os
from typing import Iterable, List, Sequence, Tuple

import numpy as np
import torch

from datasets.transforms import IMAGENET_MEAN, IMAGENET_STD
from datasets.synthetic import render_clip, write_video
from utils.config import DataConfig

__all__ = ["write_video", "index_coded_frames", "decode_frame_codes", "gradient_frames",
           "textured_frames", "write_faststart_mp4", "write_list", "make_args", "denormalize",
           "FixedRng", "write_frame_folder", "CODE_BASE", "CODE_STEP"]

# Frame i of an index-coded video is uniform grey CODE_BASE + CODE_STEP * i: after lossy coding
# and any resize/crop the index is still recovered by rounding (error << CODE_STEP / 2).
CODE_BASE, CODE_STEP = 10, 6


def index_coded_frames(num_frames: int, height: int = 48, width: int = 64) -> np.ndarray:
    """uint8 (T,H,W,3) grey frames whose grey level encodes the frame index (max 39 frames)."""
    assert CODE_BASE + CODE_STEP * (num_frames - 1) <= 255
    values = CODE_BASE + CODE_STEP * np.arange(num_frames)
    return np.broadcast_to(values[:, None, None, None], (num_frames, height, width, 3)).astype(np.uint8)


def denormalize(clip: torch.Tensor) -> torch.Tensor:
    """A dataset clip (uint8 pixels) or a normalised float clip (..., 3, T, H, W) -> float
    pixel values in [0, 255] units."""
    if clip.dtype == torch.uint8:
        return clip.float()
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1) * 255
    return clip * std + mean


def decode_frame_codes(clip: torch.Tensor) -> List[int]:
    """Frame indices of a normalised clip (3,T,H,W) cut from an index-coded video."""
    pixels = denormalize(clip)
    means = pixels.mean(dim=(0, 2, 3))
    return [int(round((float(m) - CODE_BASE) / CODE_STEP)) for m in means]


def gradient_frames(num_frames: int, height: int = 64, width: int = 96, base: int = 20,
                    slope: int = 2) -> np.ndarray:
    """Grey frames whose level grows left to right: ``base + slope * x``."""
    row = base + slope * np.arange(width)
    assert row.max() <= 255
    return np.broadcast_to(row[None, None, :, None], (num_frames, height, width, 3)).astype(np.uint8)


def textured_frames(num_frames: int, height: int = 72, width: int = 96, seed: int = 0) -> np.ndarray:
    """Moving shape with noise (the synthetic generator's content)."""
    return render_clip("move_right", num_frames, height, width, np.random.default_rng(seed))


def write_frame_folder(folder: str, frames: np.ndarray, quality: int = 95) -> None:
    """Write frames as img_00001.jpg, img_00002.jpg, ... (1-based, the mmaction convention)."""
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(os.path.join(folder, f"img_{i + 1:05d}.jpg"), quality=quality)


def write_faststart_mp4(path: str, num_frames: int = 40) -> bytes:
    """An h264 mp4 of random 64x48 frames with its index at the start (``+faststart``), so a
    file cut short still claims every frame. Returns the file's bytes."""
    import av

    frames = np.random.default_rng(0).integers(0, 255, (num_frames, 48, 64, 3), dtype=np.uint8)
    with av.open(path, "w", options={"movflags": "+faststart"}) as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for fr in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(fr, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    with open(path, "rb") as f:
        return f.read()


def write_list(path: str, entries: Iterable[Tuple[str, int]], sep: str = " ") -> str:
    """Write a list file of (path, label) lines."""
    with open(path, "w", encoding="utf-8") as f:
        for p, label in entries:
            f.write(f"{p}{sep}{label}\n")
    return path


def make_args(data_path: str, **overrides) -> DataConfig:
    """The data settings of a small flag set as run_class_apt.py would parse it (tiny clips for
    speed), through the conversion the scripts use (``DataConfig.from_args``)."""
    args = dict(data_set="custom", data_path=data_path, data_root="", nb_classes=4, num_frames=4,
                sampling_rate=2, input_size=32, short_side_size=32,
                test_num_segment=2, test_num_crop=3, num_sample=1, is_aa=False,
                aa="rand-m7-n4-mstd0.5-inc1", train_interpolation="bicubic", reprob=0.0,
                remode="pixel", recount=1, video_backend="decord", max_bad_fraction=0.01, seed=0,
                # The fixtures list one small video under several labels (174 for SSV2's class
                # count); tests of the duplicate check pass allow_duplicates=False.
                allow_duplicates=True)
    args.update(overrides)
    return DataConfig.from_args(argparse.Namespace(**args))


class FixedRng:
    """Stand-in for np.random whose randint returns the lowest (or highest) allowed value."""

    def __init__(self, highest: bool = False) -> None:
        self.highest = highest

    def randint(self, low: int, high: int = None, size: Sequence[int] = None) -> int:
        if high is None:
            low, high = 0, low
        return high - 1 if self.highest else low
