"""Clip transforms. Every random choice is made once per clip and applied to all of its frames.

Frames arrive from the decoders as ``uint8`` NumPy arrays ``(T, H, W, 3)``. Everything a
DataLoader worker does stays in ``uint8`` (RandAugment on the whole clip tensor, crop, antialiased
resize, flip): items leave the workers as ``uint8`` ``(3, T, S, S)`` clips, a quarter of the bytes
of float32. The float cast, ImageNet normalisation and random erasing run on the device in the
engine (:class:`ToModelInput`), where they cost nothing next to the model.

Randomness: NumPy's global generator and Python's ``random`` (the latter only in RandAugment's
draws), both seeded per DataLoader worker by ``seed_worker``; random erasing draws its boxes from
NumPy's generator of the training process and its noise from torch's.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .rand_augment import IMAGENET_MEAN, ClipRandAugment

IMAGENET_STD = (0.229, 0.224, 0.225)

_RESIZE_MODES = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest",
                 # timm's 'random' picks an interpolation per RandAugment op; the crop resize
                 # needs one mode, so it uses bilinear.
                 "random": "bilinear"}


def random_resized_crop_params(height: int, width: int,
                               scale: Tuple[float, float] = (0.08, 1.0),
                               ratio: Tuple[float, float] = (3 / 4, 4 / 3)) -> Tuple[int, int, int, int]:
    """Sample ``(top, left, crop_h, crop_w)`` as torchvision's RandomResizedCrop does, with NumPy.

    Args:
        height: frame height.
        width: frame width.
        scale: range of the crop area as a fraction of the frame area.
        ratio: range of the crop aspect ratio (w/h), sampled log-uniformly.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * np.random.uniform(scale[0], scale[1])
        aspect = math.exp(np.random.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(np.random.randint(0, height - h + 1))
            left = int(np.random.randint(0, width - w + 1))
            return top, left, h, w
    # Fallback (as torchvision): the largest centred crop with the ratio clamped to the range.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def to_tchw(frames: np.ndarray) -> torch.Tensor:
    """uint8 ``(T, H, W, 3)`` array -> uint8 ``(T, 3, H, W)`` tensor (channels-last memory)."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)


def clip_buffer(shape: Sequence[int]) -> torch.Tensor:
    """An uninitialised uint8 tensor of shape ``(..., 3, T, H, W)`` stored as ``(..., T, H, W, 3)``.

    Decoded frames and the uint8 resize are channels-last (interleaved RGB); keeping items in
    that memory order spares each clip a transposing copy on the worker (about 2 ms for
    16x224x224). ``normalize_video`` makes the float input contiguous on the device.
    """
    *lead, c, t, h, w = shape
    return torch.empty((*lead, t, h, w, c), dtype=torch.uint8).movedim(-1, -4)


def stack_clips(clips: Sequence[torch.Tensor]) -> torch.Tensor:
    """``torch.stack`` of uint8 clips into a :func:`clip_buffer` (no transposing copies)."""
    out = clip_buffer((len(clips), *clips[0].shape))
    for i, clip in enumerate(clips):
        out[i].copy_(clip)
    return out


def resize(x: torch.Tensor, size: Tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize a uint8 ``(T, 3, H, W)`` clip to ``size = (h, w)`` with antialiasing.

    Args:
        x: uint8 clip.
        size: output (height, width).
        mode: 'bilinear', 'bicubic' or 'nearest'.
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    return F.interpolate(x, size=size, mode=mode, antialias=True, align_corners=False)


def normalize_video(videos: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """uint8 videos ``(..., 3, T, H, W)`` -> float32 normalised with ``mean``/``std``, on their device.

    The same float32 arithmetic as the worker-side normalisation this replaced (subtract
    ``255 * mean``, divide by ``255 * std``; tests/test_data_device_input.py keeps it as the
    reference), so the model inputs are the same bits.
    Floating-point input is taken as already normalised (in-memory clips of tests and tools)
    and returned as it is.

    Args:
        videos: uint8 clips, channels at dim -4 (a clip, a batch, or a batch of test views).
        mean: per-channel mean in [0, 1] units.
        std: per-channel std in [0, 1] units.
    """
    if videos.is_floating_point():
        return videos
    if videos.dtype != torch.uint8:
        raise TypeError(f"videos must be uint8 or floating point, got {videos.dtype}")
    shape = (len(mean), 1, 1, 1)
    m = torch.tensor(mean, dtype=torch.float32, device=videos.device).view(shape) * 255.0
    s = torch.tensor(std, dtype=torch.float32, device=videos.device).view(shape) * 255.0
    # Items are stored channels-last (clip_buffer); the model gets a contiguous tensor.
    x = videos.to(torch.float32, memory_format=torch.contiguous_format)
    return x.sub_(m).div_(s)


class ClipRandomErasing:
    """Random erasing as VideoMAE's default (``cube=True``): each box is drawn once per clip and
    covers the same place in every frame; its pixels ('pixel' noise, 'rand' colour) are drawn
    afresh for every frame.

    Args:
        probability: chance that a clip is erased (``--reprob``).
        mode: 'pixel' (per-pixel normal noise), 'rand' (one random colour per channel) or
            'const' (zero, i.e. the mean colour after normalisation) (``--remode``).
        max_count: up to this many boxes, the count drawn uniformly in [1, max_count] (``--recount``).
        min_area: minimum box area as a fraction of the frame.
        max_area: maximum box area as a fraction of the frame.
        min_aspect: aspect ratio range is [min_aspect, 1/min_aspect], log-uniform.
    """

    def __init__(self, probability: float, mode: str = "pixel", max_count: int = 1,
                 min_area: float = 0.02, max_area: float = 1 / 3, min_aspect: float = 0.3) -> None:
        if mode not in ("pixel", "rand", "const"):
            raise ValueError(f"--remode must be 'pixel', 'rand' or 'const', got {mode!r}")
        self.probability = probability
        self.mode = mode
        self.max_count = max(1, int(max_count))
        self.min_area = min_area
        self.max_area = max_area
        self.log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        """Erase in place and return a normalised float clip ``(3, T, H, W)`` (on any device)."""
        if np.random.uniform() >= self.probability:
            return clip
        c, t, h, w = clip.shape
        count = 1 if self.max_count == 1 else int(np.random.randint(1, self.max_count + 1))
        for _ in range(count):
            for _attempt in range(10):
                area = np.random.uniform(self.min_area, self.max_area) * h * w / count
                aspect = math.exp(np.random.uniform(*self.log_aspect))
                eh = int(round(math.sqrt(area * aspect)))
                ew = int(round(math.sqrt(area / aspect)))
                if 0 < eh < h and 0 < ew < w:
                    top = int(np.random.randint(0, h - eh + 1))
                    left = int(np.random.randint(0, w - ew + 1))
                    clip[:, :, top:top + eh, left:left + ew] = self._fill(c, t, eh, ew, clip.device)
                    break
        return clip

    def _fill(self, c: int, t: int, eh: int, ew: int, device: torch.device) -> torch.Tensor:
        # New pixels for every frame, as VideoMAE; drawn where the clip is (torch's generator
        # for that device).
        if self.mode == "pixel":
            return torch.randn((c, t, eh, ew), device=device)
        if self.mode == "rand":
            return torch.randn((c, t, 1, 1), device=device)
        return torch.zeros((c, 1, 1, 1), device=device)


class TrainTransform:
    """Training augmentation of one clip on a DataLoader worker (docs/DATA.md), all in uint8:
    RandAugment (one draw of ops for the whole clip) -> random resized crop (scale 0.08-1,
    ratio 3/4-4/3) to ``input_size`` -> horizontal flip (unless ``flip`` is False, e.g. SSV2).
    Normalisation and random erasing follow on the device (:class:`ToModelInput`).

    Args:
        input_size: output crop size.
        auto_augment: timm RandAugment string, or None for no RandAugment.
        interpolation: interpolation for RandAugment and the crop resize.
        flip: allow random horizontal flips.
        crop_scale: area range of the random resized crop, as a fraction of the frame.
    """

    def __init__(self, input_size: int, auto_augment: Optional[str] = None,
                 interpolation: str = "bicubic", flip: bool = True,
                 crop_scale: Tuple[float, float] = (0.08, 1.0)) -> None:
        if not 0 < crop_scale[0] <= crop_scale[1] <= 1:
            raise ValueError(f"--train_crop_scale must satisfy 0 < MIN <= MAX <= 1, got {crop_scale}")
        self.crop_scale = (float(crop_scale[0]), float(crop_scale[1]))
        if interpolation not in _RESIZE_MODES:
            raise ValueError(f"--train_interpolation must be one of {sorted(_RESIZE_MODES)}, "
                             f"got {interpolation!r}")
        self.input_size = input_size
        self.rand_augment = ClipRandAugment(auto_augment, input_size, interpolation) if auto_augment else None
        self.resize_mode = _RESIZE_MODES[interpolation]
        self.flip = flip

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        """Args: frames: uint8 ``(T, H, W, 3)``. Returns: uint8 ``(3, T, S, S)`` (a view)."""
        x = to_tchw(frames)
        # Draw order as in the original pipeline: RandAugment's ops, then the crop.
        drawn = self.rand_augment.draw() if self.rand_augment is not None else []
        crop = random_resized_crop_params(x.shape[-2], x.shape[-1], self.crop_scale)
        if drawn:  # the ops, computed only where the crop needs them
            x = self.rand_augment.apply(x, drawn, region=crop)
            if x.stride(1) != 1:  # planar after some ops; uint8 resizing is ~3x faster
                x = x.contiguous(memory_format=torch.channels_last)  # on interleaved RGB
        else:
            x = x[..., crop[0]:crop[0] + crop[2], crop[1]:crop[1] + crop[3]]
        x = resize(x, (self.input_size, self.input_size), self.resize_mode)
        if self.flip and np.random.uniform() < 0.5:
            x = x.flip(-1)
        return x.permute(1, 0, 2, 3)  # a view; the dataset copies it into its item buffer


class ToModelInput:
    """The data pipeline's last steps, on the device: float cast, ImageNet normalisation and,
    in training, random erasing (one box per erase shared by all frames of a clip).

    Args:
        erase: random erasing for training batches, None for none (evaluation).
    """

    def __init__(self, erase: Optional[ClipRandomErasing] = None) -> None:
        self.erase = erase

    @classmethod
    def for_training(cls, reprob: float, remode: str = "pixel", recount: int = 1) -> "ToModelInput":
        """With random erasing when ``reprob > 0`` (``--reprob/--remode/--recount``)."""
        return cls(ClipRandomErasing(reprob, remode, recount) if reprob > 0 else None)

    def __call__(self, videos: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, 3, T, H, W)`` (or any leading dims) -> normalised float32."""
        x = normalize_video(videos)
        if self.erase is not None:
            if x is videos:  # already float: erase a copy, never the caller's tensor
                x = x.clone()
            for clip in x.reshape(-1, *x.shape[-4:]):
                self.erase(clip)
        return x
