"""Clip transforms. Every random choice is made once per clip and applied to all of its frames.

Frames arrive from the decoders as ``uint8`` NumPy arrays ``(T, H, W, 3)``. Resizing is done on
``uint8`` tensors (PyTorch's antialiased uint8 kernels are several times faster than float ones),
and only the final ``input_size`` crop is converted to float and normalised.

Randomness: NumPy's global generator and Python's ``random`` (the latter only inside timm's
RandAugment), both seeded per DataLoader worker by ``seed_worker``.
"""

from __future__ import annotations

import math
import random
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_RESIZE_MODES = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest",
                 # timm's 'random' picks an interpolation per RandAugment op; the crop resize
                 # needs one mode, so it uses bilinear.
                 "random": "bilinear"}


class ClipRandAugment:
    """timm RandAugment applied with the same ops and magnitudes to every frame of a clip.

    timm's ``RandAugment.__call__`` draws the ops with ``np.random`` and their probability,
    magnitude and sign with ``random``. To make a clip consistent through timm's public API only,
    the states of both generators are saved before the first frame and restored before each
    further frame, so every frame replays exactly the same draws. After the last frame the
    generators have advanced exactly as after one image, so different clips still differ.

    Args:
        config_str: timm RandAugment string, e.g. ``'rand-m7-n4-mstd0.5-inc1'``.
        input_size: training crop size (sets the absolute translate range, as VideoMAE does).
        interpolation: 'bicubic', 'bilinear', 'nearest' or 'random'.
    """

    def __init__(self, config_str: str, input_size: int, interpolation: str = "bicubic") -> None:
        from timm.data import rand_augment_transform, str_to_pil_interp

        hparams = {"translate_const": int(input_size * 0.45),
                   "img_mean": tuple(int(round(255 * m)) for m in IMAGENET_MEAN),
                   # timm clips magnitudes to [0, 10]; at exactly 10 (reached by 'mstd' noise or
                   # 'm10'), PosterizeIncreasing keeps 0 bits, which current Pillow rejects with a
                   # ValueError that would kill a DataLoader worker. Capping just below 10 keeps
                   # every other op's argument the same to 5 decimals. An explicit 'mmax' wins.
                   "magnitude_max": 10 - 1e-6}
        if interpolation and interpolation != "random":
            hparams["interpolation"] = str_to_pil_interp(interpolation)
        try:
            self.ra = rand_augment_transform(config_str, hparams)
        except (AssertionError, KeyError, ValueError) as exc:
            raise ValueError(f"--aa {config_str!r} is not a valid timm RandAugment string "
                             f"(e.g. 'rand-m7-n4-mstd0.5-inc1'): {exc}") from exc

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """Augment a clip.

        Args:
            frames: uint8 ``(T, H, W, 3)``.

        Returns:
            uint8 ``(T, H, W, 3)``.
        """
        from PIL import Image

        py_state = random.getstate()
        np_state = np.random.get_state()
        out = []
        for t, frame in enumerate(frames):
            if t > 0:
                random.setstate(py_state)
                np.random.set_state(np_state)
            out.append(np.asarray(self.ra(Image.fromarray(frame))))
        return np.stack(out)


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


def normalize(x: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """uint8 ``(T, 3, H, W)`` -> float32 ``(3, T, H, W)`` normalised with ``mean``/``std``.

    Args:
        x: uint8 clip.
        mean: per-channel mean in [0, 1] units.
        std: per-channel std in [0, 1] units.
        out: float32 ``(3, T, H, W)`` tensor to write into (e.g. one view of a test item),
            saving an allocation and a later copy.
    """
    t, c, h, w = x.shape
    # Convert straight into the (3, T, H, W) layout, then normalise in place: fewer passes
    # over memory than float() -> arithmetic -> permute().contiguous().
    if out is None:
        out = torch.empty((c, t, h, w), dtype=torch.float32)
    out.copy_(x.permute(1, 0, 2, 3))
    out.sub_(torch.tensor(mean, dtype=torch.float32).view(c, 1, 1, 1) * 255.0)
    out.div_(torch.tensor(std, dtype=torch.float32).view(c, 1, 1, 1) * 255.0)
    return out


class ClipRandomErasing:
    """Random erasing with one box per erase shared by all frames of the clip (a static
    occluder), unlike VideoMAE, which erased a different box in every frame.

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
        """Erase in place and return a normalised float clip ``(3, T, H, W)``."""
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
                    clip[:, :, top:top + eh, left:left + ew] = self._fill(c, eh, ew)
                    break
        return clip

    def _fill(self, c: int, eh: int, ew: int) -> torch.Tensor:
        # Shape (C, 1, h, w) broadcasts over time: the patch is the same in every frame.
        if self.mode == "pixel":
            return torch.from_numpy(np.random.standard_normal((c, 1, eh, ew)).astype(np.float32))
        if self.mode == "rand":
            return torch.from_numpy(np.random.standard_normal((c, 1, 1, 1)).astype(np.float32))
        return torch.zeros((c, 1, 1, 1))


class TrainTransform:
    """Training augmentation of one clip (docs/DATA.md): RandAugment (same ops for all frames) ->
    random resized crop (scale 0.08-1, ratio 3/4-4/3) to ``input_size`` -> horizontal flip
    (unless ``flip`` is False, e.g. SSV2) -> ImageNet normalisation -> random erasing.

    Args:
        input_size: output crop size.
        auto_augment: timm RandAugment string, or None for no RandAugment.
        interpolation: interpolation for RandAugment and the crop resize.
        flip: allow random horizontal flips.
        reprob: random erasing probability (0 disables it).
        remode: random erasing mode.
        recount: maximum number of erased boxes.
        crop_scale: area range of the random resized crop, as a fraction of the frame.
    """

    def __init__(self, input_size: int, auto_augment: Optional[str] = None,
                 interpolation: str = "bicubic", flip: bool = True, reprob: float = 0.0,
                 remode: str = "pixel", recount: int = 1,
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
        self.erase = ClipRandomErasing(reprob, remode, recount) if reprob > 0 else None

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        """Args: frames: uint8 ``(T, H, W, 3)``. Returns: float32 ``(3, T, S, S)``."""
        if self.rand_augment is not None:
            frames = self.rand_augment(frames)
        x = to_tchw(frames)
        top, left, h, w = random_resized_crop_params(x.shape[-2], x.shape[-1], self.crop_scale)
        x = resize(x[..., top:top + h, left:left + w], (self.input_size, self.input_size),
                   self.resize_mode)
        if self.flip and np.random.uniform() < 0.5:
            x = x.flip(-1)
        clip = normalize(x)
        if self.erase is not None:
            clip = self.erase(clip)
        return clip
