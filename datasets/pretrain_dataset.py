"""Unlabelled clips and token masks for VideoMAE pre-training (docs/PRETRAINING.md).

As VideoMAE's pre-training ``VideoMAE`` dataset: one random dense window per video
(``num_frames`` frames ``sampling_rate`` apart), a multi-scale corner/centre crop
(``GroupMultiScaleCrop`` with scales 1, .875, .75, .66 of the short side) resized to
``input_size``, and a fresh token mask per clip (ImageNet normalisation follows on the device,
in the pre-training step). VideoMAE does not flip in pre-training; ``flip=True`` allows it
(never for SSV2, whose labels depend on left/right).

List files are the fine-tuning ones (``<path> <label>``, parsed by :mod:`datasets.listfile`);
the label is ignored, so unlabelled videos are listed as ``<path> 0``.

Item: ``(clip (3, T, H, W) uint8, mask (N,) bool, bad_paths)``; ``bad_paths`` lists the videos
that failed and were replaced by another random one (the engine counts them per epoch).

For small data sets, ``cache=True`` decodes every video once (in parallel, by
:meth:`VideoMAEPretrainDataset.preload`, through :mod:`datasets.frame_cache`) and keeps all its
frames as uint8 (in memory, or mapped from ``--cache_dir``), so later epochs only crop: on a CPU,
decoding costs far more than a tiny model's step.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from utils.config import PretrainDataConfig, check_video_backend, require_at_least

from . import decoders
from .bad_videos import BadVideoTracker
from .decoders import VideoDecodeError
from .frame_cache import CacheBudget, FrameStore, cached_frames
from .listfile import VideoRecord, parse_list_file
from .masking import build_masking_generator
from .sampling import dense_train_indices
from .transforms import clip_buffer, resize, stack_clips, to_tchw

logger = logging.getLogger(__name__)

# Tries to find a decodable video (the requested one and its replacements).
MAX_ATTEMPTS = 10
# VideoMAE's GroupMultiScaleCrop scales (fractions of the short side).
MULTI_SCALES = (1.0, 0.875, 0.75, 0.66)


# --------------------------------------------------------------------------------- cropping
def multi_scale_crop_params(height: int, width: int, input_size: int,
                            scales: Sequence[float] = MULTI_SCALES, max_distort: int = 1,
                            rng: Optional[Any] = None) -> Tuple[int, int, int, int]:
    """Sample ``(top, left, crop_h, crop_w)`` as TSN/VideoMAE's ``GroupMultiScaleCrop``.

    Crop sides are ``int(short_side * s)`` for s in ``scales`` (snapped to ``input_size`` when
    within 3 pixels); height and width scales differ by at most ``max_distort`` steps; the
    offset is one of 13 fixed positions (corners, centre, edge centres, quarter points) on a
    grid of quarter steps of the free space (``more_fix_crop``).

    Args:
        height: frame height.
        width: frame width.
        input_size: output side (the crop is resized to it afterwards).
        scales: crop side fractions of the short side.
        max_distort: largest index distance between the height and width scales.
        rng: generator with ``randint`` (default: NumPy's global one).
    """
    r = np.random if rng is None else rng
    base = min(height, width)
    sizes = [int(base * s) for s in scales]
    crop_h = [input_size if abs(s - input_size) < 3 else s for s in sizes]
    crop_w = [input_size if abs(s - input_size) < 3 else s for s in sizes]
    pairs = [(h, w) for i, h in enumerate(crop_h) for j, w in enumerate(crop_w)
             if abs(i - j) <= max_distort]
    ch, cw = pairs[int(r.randint(len(pairs)))]
    # A snapped side can exceed a frame smaller than input_size: crop what exists.
    ch, cw = max(1, min(ch, height)), max(1, min(cw, width))
    hs, ws = (height - ch) // 4, (width - cw) // 4
    offsets = [(0, 0), (0, 4 * ws), (4 * hs, 0), (4 * hs, 4 * ws), (2 * hs, 2 * ws),
               (2 * hs, 0), (2 * hs, 4 * ws), (4 * hs, 2 * ws), (0, 2 * ws),
               (hs, ws), (hs, 3 * ws), (3 * hs, ws), (3 * hs, 3 * ws)]
    top, left = offsets[int(r.randint(len(offsets)))]
    return top, left, ch, cw


class PretrainTransform:
    """Multi-scale crop -> resize to ``input_size`` -> optional flip -> ImageNet normalisation.

    Args:
        input_size: output side.
        scales: multi-scale crop fractions of the short side.
        flip: random horizontal flip (off in VideoMAE pre-training; never for SSV2).
    """

    def __init__(self, input_size: int, scales: Sequence[float] = MULTI_SCALES,
                 flip: bool = False) -> None:
        self.input_size = int(input_size)
        self.scales = tuple(scales)
        self.flip = flip

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        """Args: frames: uint8 ``(T, H, W, 3)``. Returns: uint8 ``(3, T, S, S)`` (normalised on
        the device by the pre-training step)."""
        x = to_tchw(frames)  # (T, 3, H, W) uint8
        top, left, h, w = multi_scale_crop_params(x.shape[-2], x.shape[-1], self.input_size,
                                                  self.scales)
        # Crop before resizing (less work); resizing uint8 is the fast path (see transforms).
        x = resize(x[..., top:top + h, left:left + w], (self.input_size, self.input_size),
                   "bilinear")
        if self.flip and np.random.uniform() < 0.5:
            x = x.flip(-1)
        x = x.permute(1, 0, 2, 3)
        return clip_buffer(x.shape).copy_(x)


# --------------------------------------------------------------------------------- dataset
class VideoMAEPretrainDataset(Dataset):
    """Random clips of listed videos with a token mask each.

    Args:
        records: parsed list file (labels are ignored).
        num_frames: frames per clip (``--num_frames``).
        sampling_rate: frame distance (``--sampling_rate``).
        input_size: crop side (``--input_size``).
        mask_generator: callable returning a bool ``(N,)`` mask (``datasets.masking``).
        flip: random horizontal flips.
        video_backend: 'decord' or 'pyav' (``--video_backend``).
        max_bad_fraction: ``--max_bad_fraction``.
        list_path: the list file (for messages).
        cache: keep decoded videos in memory after :meth:`preload` (small data sets only).
    """

    def __init__(self, records: Sequence[VideoRecord], num_frames: int, sampling_rate: int,
                 input_size: int, mask_generator: Callable[[], np.ndarray], flip: bool = False,
                 video_backend: str = "decord", max_bad_fraction: float = 0.01,
                 list_path: str = "", cache: bool = False) -> None:
        # the command line's check, for datasets made in code
        require_at_least({"num_frames": num_frames, "sampling_rate": sampling_rate,
                          "input_size": input_size}, 1)
        check_video_backend(video_backend)
        self.records = list(records)
        self.num_frames = int(num_frames)
        self.sampling_rate = int(sampling_rate)
        self.transform = PretrainTransform(input_size, flip=flip)
        self.mask_generator = mask_generator
        self.video_backend = video_backend
        self.max_bad_fraction = float(max_bad_fraction)
        self.list_path = list_path
        self.split = "train"
        self.cache = cache
        self._frames: Optional[FrameStore] = None  # every frame of each video, after preload
        self._known_bad: Set[int] = set()
        self._bad_reason: Dict[int, str] = {}
        self.preload_bad: List[str] = []  # videos that failed in ``preload``
        # VideoMAE attribute name, for code that reads it.
        self.dataset_samples = [r.path for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def make_bad_video_tracker(self) -> BadVideoTracker:
        """A tracker for this split with its size and ``--max_bad_fraction``."""
        return BadVideoTracker(self.split, len(self), self.max_bad_fraction)

    # ----------------------------------------------------------------------------- caching
    def preload(self, num_workers: int = 0, budget: Optional[CacheBudget] = None,
                cache_dir: str = "") -> List[str]:
        """Decode every video once and keep its frames (``cache=True``).

        Args:
            num_workers: decoding processes (0: in this process).
            budget: the run's ``--cache_max_gb`` (default: its default, for this list alone).
            cache_dir: ``--cache_dir`` (''; in memory).

        Returns:
            The paths of the videos that failed to decode (they are replaced when sampled).

        Raises:
            CacheTooLarge: the frames would exceed ``--cache_max_gb`` (a ``ConfigError``).
        """
        budget = budget or CacheBudget(PretrainDataConfig.cache_max_gb)
        self._frames = cached_frames([r.path for r in self.records], self.video_backend,
                                     num_workers, budget, cache_dir,
                                     self.list_path or "the pre-training list")
        bad: List[str] = []
        for i, rec in enumerate(self.records):
            reason = self._frames.failed.get(rec.path)
            if reason is not None:
                self._report_bad(i, VideoDecodeError(rec.path, reason))
                bad.append(rec.path)
        self.preload_bad = bad
        return bad

    # ----------------------------------------------------------------------------- items
    def _report_bad(self, index: int, err: VideoDecodeError) -> None:
        self._known_bad.add(index)
        self._bad_reason[index] = err.reason
        logger.warning("bad video in pre-training split (%s line %d): %s: %s",
                       self.list_path or "list", self.records[index].line, err.path, err.reason)

    def _replacement_index(self) -> int:
        # Uniform over the videos not yet known to be bad in this process; bounded work.
        n = len(self.records)
        i = int(np.random.randint(n))
        if i in self._known_bad and len(self._known_bad) < n:
            good = [j for j in range(n) if j not in self._known_bad]
            i = good[int(np.random.randint(len(good)))]
        return i

    def _clip_frames(self, index: int) -> np.ndarray:
        """uint8 (T, H, W, 3) frames of a random dense window of video ``index``."""
        rec = self.records[index]
        if index in self._known_bad:
            raise VideoDecodeError(rec.path, self._bad_reason.get(index, "known bad"))
        cached = None if self._frames is None else self._frames.get(rec.path)
        if cached is not None:
            return cached[dense_train_indices(len(cached), self.num_frames, self.sampling_rate)]
        reader = decoders.open_video(rec.path, self.video_backend)
        return reader.get_batch(dense_train_indices(len(reader), self.num_frames,
                                                    self.sampling_rate))

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor, List[str]]:
        bad: List[str] = []
        for _attempt in range(MAX_ATTEMPTS):
            try:
                frames = self._clip_frames(index)
            except VideoDecodeError as err:
                if index not in self._known_bad:
                    self._report_bad(index, err)
                bad.append(self.records[index].path)
                index = self._replacement_index()
                continue
            clip = self.transform(frames)  # (3, T, S, S)
            mask = torch.from_numpy(np.asarray(self.mask_generator(), dtype=bool))  # (N,)
            return clip, mask, bad
        raise RuntimeError(f"no decodable video found in {MAX_ATTEMPTS} attempts "
                           f"({self.list_path}); bad videos: {', '.join(bad)}")


def collate_pretrain(batch: Sequence[Tuple[torch.Tensor, torch.Tensor, List[str]]]
                     ) -> Tuple[torch.Tensor, torch.Tensor, List[str]]:
    """Collate pre-training items into ``(videos (B,3,T,H,W), masks (B,N) bool, bad_paths)``."""
    videos = stack_clips([item[0] for item in batch])
    masks = torch.stack([item[1] for item in batch])
    bad = [p for item in batch for p in item[2]]
    return videos, masks, bad


# --------------------------------------------------------------------------------- building
def pretrain_list_path(data_path: str) -> str:
    """``--data_path`` as a list file, or the ``train.csv`` inside a folder."""
    if not data_path:
        raise ValueError("--data_path (a list file, or a folder with train.csv) is required")
    if os.path.isdir(data_path):
        return os.path.join(data_path, "train.csv")
    return data_path


def token_grid(cfg: PretrainDataConfig, patch_size: int = 16) -> Tuple[int, int, int]:
    """VideoMAE's ``window_size``: ``(num_frames // tubelet, input_size // p, input_size // p)``."""
    frames, size, tubelet = int(cfg.num_frames), int(cfg.input_size), int(cfg.tubelet_size)
    if frames % tubelet or size % patch_size:
        raise ValueError(f"--num_frames {frames} must be a multiple of --tubelet_size {tubelet} "
                         f"and --input_size {size} a multiple of the patch size {patch_size}")
    return frames // tubelet, size // patch_size, size // patch_size


def build_pretraining_dataset(cfg: PretrainDataConfig, patch_size: int = 16
                              ) -> VideoMAEPretrainDataset:
    """The pre-training dataset of ``run_mae_pretraining.py``'s data settings.

    Args:
        cfg: the data settings (``PretrainDataConfig.from_args`` of the flags).
        patch_size: the model's spatial patch side.

    Raises:
        ListFileError: a list-file problem, naming the file and line.
        ValueError: an invalid flag, naming it.
    """
    list_path = pretrain_list_path(cfg.data_path)
    # Labels are not used: accept any non-negative integer (unlabelled videos are listed as 0).
    records = parse_list_file(list_path, nb_classes=sys.maxsize, data_root=cfg.data_root,
                              allow_duplicates=cfg.allow_duplicates)
    grid = token_grid(cfg, patch_size)
    mask_generator = build_masking_generator(cfg.mask_type, grid, float(cfg.mask_ratio))
    dataset = VideoMAEPretrainDataset(
        records, cfg.num_frames, cfg.sampling_rate, cfg.input_size, mask_generator,
        flip=cfg.flip, video_backend=cfg.video_backend,
        max_bad_fraction=float(cfg.max_bad_fraction), list_path=list_path,
        cache=cfg.cache_videos)
    logger.info("pre-training data: %d videos from %s, %s", len(dataset), list_path,
                mask_generator)
    return dataset


__all__ = ["VideoMAEPretrainDataset", "PretrainTransform", "multi_scale_crop_params",
           "collate_pretrain", "build_pretraining_dataset", "pretrain_list_path", "token_grid",
           "MULTI_SCALES"]
