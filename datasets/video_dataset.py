"""The video classification dataset (docs/DATA.md): training, validation, multi-view test items.

Item formats (the engine relies on them); clips are uint8 pixels, normalised (and, in training,
randomly erased) on the device by ``datasets.transforms.ToModelInput`` / ``normalize_video``:

* train: ``(clips (S,3,T,H,W) uint8, labels (S,) int64, index, bad_paths)``, S = num_sample;
* val:   ``(clip (3,T,H,W) uint8, label, index, bad_paths)``;
* test:  ``(views (V,3,T,H,W) uint8, label, index, bad_paths)``, V = test_num_segment *
  test_num_crop, segment-major (view v = temporal segment v // num_crop, spatial crop v % num_crop).

A bad video in training is logged and replaced by another random sample (at most
``MAX_ATTEMPTS`` tries). In validation/test it is not replaced, since that would change the
evaluated set: the item is zeros with label -1 and the engine leaves it out of the metrics.

With ``--cache_videos`` (:meth:`VideoClsDataset.cache_frames`), every frame of each video is
decoded once and the frame indices of each item are picked from the cached frames as from the
decoder, so items are the same with or without the cache (a video that cannot be decoded whole
is read per item, as without it).
"""

from __future__ import annotations

import logging
import random
from typing import Any, Callable, List, Optional, Sequence, Set, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from utils.config import DataConfig

from . import decoders
from .bad_videos import BadVideoTracker
from .decoders import VideoDecodeError
from .frame_cache import CacheBudget, FrameStore, cached_frames
from .listfile import VideoRecord
from .sampling import (crop_offsets, dense_test_indices, dense_train_indices, dense_val_indices,
                       resized_short_side, segment_test_indices, segment_train_indices,
                       segment_val_indices)
from .transforms import TrainTransform, clip_buffer, resize, stack_clips, to_tchw

logger = logging.getLogger(__name__)

# Tries to find a decodable training video (the requested one and its replacements).
MAX_ATTEMPTS = 10
MODES = ("train", "val", "test")


class VideoClsDataset(Dataset):
    """Videos listed in a list file, as training clips, validation clips or test views.

    Args:
        records: parsed list file.
        mode: 'train', 'val' or 'test'.
        config: the data settings (``DataConfig``; the training-only ones are read in
            training only).
        list_path: the list file (for messages).
    """

    # Test items decode each video once for all its views (False: once per view, kept only to
    # measure the difference).
    decode_once = True

    def __init__(self, records: Sequence[VideoRecord], mode: str, config: DataConfig,
                 list_path: str = "") -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        config.validate(mode)
        self.records = list(records)
        self.mode = mode
        self.split = mode
        self.config = config
        self.list_path = list_path
        # VideoMAE attribute names, for code that reads them.
        self.dataset_samples = [r.path for r in self.records]
        self.label_array = [r.label for r in self.records]
        self.train_transform = TrainTransform(
            config.input_size, config.auto_augment, config.train_interpolation,
            config.train_flip, tuple(config.train_crop_scale)) if mode == "train" else None
        # Indices found bad in this process (one copy per worker): not picked as replacements.
        self._known_bad: Set[int] = set()
        self.frames: Optional[FrameStore] = None  # decoded frames, after cache_frames

    def __len__(self) -> int:
        return len(self.records)

    @property
    def max_bad_fraction(self) -> float:
        """``--max_bad_fraction`` of this dataset."""
        return self.config.max_bad_fraction

    @property
    def num_views(self) -> int:
        """Views per test item (``test_num_segment * test_num_crop``)."""
        return self.config.test_num_segment * self.config.test_num_crop

    def make_bad_video_tracker(self) -> BadVideoTracker:
        """A tracker for this split with its size and ``--max_bad_fraction``."""
        return BadVideoTracker(self.split, len(self), self.config.max_bad_fraction)

    def __getitem__(self, index: int) -> Tuple[Any, Any, int, List[str]]:
        if self.mode == "train":
            return self._train_item(index)
        if self.mode == "val":
            return self._val_item(index)
        return self._test_item(index)

    # ----------------------------------------------------------------------------- decoding
    def _open(self, rec: VideoRecord) -> decoders.VideoReader:
        # Looked up through the module so tests can count decoder calls.
        return decoders.open_video(rec.path, self.config.video_backend)

    def cache_frames(self, budget: CacheBudget) -> FrameStore:
        """Decode every frame of each listed video once (``--cache_videos``; in memory, or
        mapped from ``--cache_dir``); later items pick their frames from them.

        Args:
            budget: the run's ``--cache_max_gb`` left.

        Raises:
            CacheTooLarge: the frames exceed ``--cache_max_gb``.
        """
        c = self.config
        self.frames = cached_frames([r.path for r in self.records], c.video_backend,
                                    c.num_workers, budget, c.cache_dir,
                                    f"the {self.split} split ({self.list_path or 'list'})")
        return self.frames

    def _read(self, rec: VideoRecord, pick: Callable[[int], np.ndarray]) -> np.ndarray:
        """Open a video, pick frame indices from its frame count, decode them (or take them
        from the frame cache: the same frames, without decoding).

        The reader is released on return, before any augmentation: decord's decoder thread
        keeps decoding ahead while its reader lives (about 15 ms of CPU per 320x240 h264
        video, measured), work that nobody uses.
        """
        cached = None if self.frames is None else self.frames.get(rec.path)
        if cached is not None:
            return cached[pick(len(cached))]  # indexing copies: the cache stays untouched
        reader = self._open(rec)
        return reader.get_batch(pick(len(reader)))

    def _report_bad(self, index: int, err: VideoDecodeError) -> None:
        self._known_bad.add(index)
        logger.warning("bad video in %s split (%s line %d): %s: %s", self.split,
                       self.list_path or "list", self.records[index].line, err.path, err.reason)

    # ----------------------------------------------------------------------------- training
    def _train_indices(self, n: int) -> np.ndarray:
        c = self.config
        if c.segment_sampling:
            return segment_train_indices(n, c.num_frames)
        return dense_train_indices(n, c.num_frames, c.sampling_rate)

    def _train_item(self, index: int) -> Tuple[torch.Tensor, torch.Tensor, int, List[str]]:
        bad: List[str] = []
        for _attempt in range(MAX_ATTEMPTS):
            rec = self.records[index]
            try:
                frames = self._read(rec, self._train_indices)
            except VideoDecodeError as err:
                self._report_bad(index, err)
                bad.append(rec.path)
                index = self._replacement_index()
                continue
            # Repeated augmentation: one decode, num_sample independently augmented clips.
            clips = stack_clips([self.train_transform(frames) for _ in range(self.config.num_sample)])
            labels = torch.full((self.config.num_sample,), rec.label, dtype=torch.long)
            return clips, labels, index, bad
        raise RuntimeError(
            f"no decodable training video found in {MAX_ATTEMPTS} attempts "
            f"({self.list_path}); bad videos: {', '.join(bad)}")

    def _replacement_index(self) -> int:
        # Uniform over the videos not yet known to be bad in this process; bounded work.
        n = len(self.records)
        i = int(np.random.randint(n))
        if i in self._known_bad and len(self._known_bad) < n:
            good = [j for j in range(n) if j not in self._known_bad]
            i = good[int(np.random.randint(len(good)))]
        return i

    # ----------------------------------------------------------------------------- evaluation
    def _eval_resize(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 (T,H,W,3) -> uint8 (T,3,h,w) with the short side at short_side_size."""
        x = to_tchw(frames)
        size = resized_short_side(x.shape[-2], x.shape[-1], self.config.short_side_size)
        return resize(x, size, "bilinear")

    def _crop_starts(self, height: int, width: int, num_crops: int) -> List[Tuple[int, int]]:
        """(top, left) of each spatial view: spaced along the long side, centred on the short."""
        s = self.config.input_size
        if height >= width:  # portrait or square: crops move down the frame (as VideoMAE)
            left = (width - s) // 2
            return [(top, left) for top in crop_offsets(height, s, num_crops)]
        top = (height - s) // 2
        return [(top, left) for left in crop_offsets(width, s, num_crops)]

    def _val_item(self, index: int) -> Tuple[torch.Tensor, int, int, List[str]]:
        rec = self.records[index]
        c = self.config
        try:
            frames = self._read(rec, lambda n: (
                segment_val_indices(n, c.num_frames) if c.segment_sampling
                else dense_val_indices(n, c.num_frames, c.sampling_rate)))
        except VideoDecodeError as err:
            self._report_bad(index, err)
            shape = (3, c.num_frames, c.input_size, c.input_size)
            return torch.zeros(shape, dtype=torch.uint8), -1, index, [rec.path]
        x = self._eval_resize(frames)
        (top, left), = self._crop_starts(x.shape[-2], x.shape[-1], 1)
        x = x[..., top:top + c.input_size, left:left + c.input_size].permute(1, 0, 2, 3)
        return clip_buffer(x.shape).copy_(x), rec.label, index, []

    def test_view_indices(self, num_video_frames: int) -> List[np.ndarray]:
        """Frame indices of each temporal test view of a video with that many frames."""
        c = self.config
        if c.segment_sampling:
            return segment_test_indices(num_video_frames, c.num_frames, c.test_num_segment)
        return dense_test_indices(num_video_frames, c.num_frames, c.sampling_rate, c.test_num_segment)

    def _test_item(self, index: int) -> Tuple[torch.Tensor, int, int, List[str]]:
        rec = self.records[index]
        c = self.config
        try:
            views = self._decode_test_views(rec)
        except VideoDecodeError as err:
            self._report_bad(index, err)
            shape = (self.num_views, 3, c.num_frames, c.input_size, c.input_size)
            return torch.zeros(shape, dtype=torch.uint8), -1, index, [rec.path]
        return self.test_views(views), rec.label, index, []

    def test_views(self, segments: Sequence[torch.Tensor]) -> torch.Tensor:
        """The test item's views: each temporal segment's resized frames cut into the
        ``test_num_crop`` spatial crops.

        Args:
            segments: resized uint8 frames ``(T, 3, h, w)`` per temporal view (in order).

        Returns:
            uint8 ``(len(segments) * test_num_crop, 3, T, S, S)``, segment-major.
        """
        c = self.config
        # Written in place view by view (one pass over the 5x3 item's 36 MB of uint8).
        out = clip_buffer((len(segments) * c.test_num_crop, 3, c.num_frames, c.input_size,
                           c.input_size))
        v = 0
        for x in segments:  # one per temporal segment, already resized
            for top, left in self._crop_starts(x.shape[-2], x.shape[-1], c.test_num_crop):
                out[v].copy_(x[..., top:top + c.input_size, left:left + c.input_size]
                             .permute(1, 0, 2, 3))
                v += 1
        return out

    def test_segments(self, read: Callable[[Callable[[int], np.ndarray]], np.ndarray]
                      ) -> List[torch.Tensor]:
        """Resized uint8 frames ``(T, 3, h, w)`` of each temporal test view of one video, its
        frames read once: the union of all views' frames, resized once, then indexed per view.

        Args:
            read: ``read(pick)`` returns the uint8 frames ``(k, H, W, 3)`` at the indices
                ``pick(n)`` chooses among the video's ``n`` frames (a decoder, the frame cache,
                or frames already in memory: ``tools/predict.py --window``).
        """
        inverse: List[np.ndarray] = []  # per view: positions of its frames in the union

        def union(n: int) -> np.ndarray:
            per_view = self.test_view_indices(n)
            frames, where = np.unique(np.concatenate(per_view), return_inverse=True)
            inverse.extend(where.reshape(len(per_view), -1))
            return frames

        frames = self._eval_resize(read(union))
        return [frames[torch.from_numpy(inv)] for inv in inverse]

    def _decode_test_views(self, rec: VideoRecord) -> List[torch.Tensor]:
        """Resized uint8 frames (T,3,h,w) of each temporal view."""
        if self.decode_once:
            return self.test_segments(lambda pick: self._read(rec, pick))
        # Baseline for the benchmark and tests: one decode per (segment, crop) view, as in a
        # dataset with one item per view (VideoMAE); the crops of a segment share frames.
        views = []
        for idx in self.test_view_indices(len(self._open(rec))):
            decoded = [self._eval_resize(self._read(rec, lambda n, idx=idx: idx))
                       for _crop in range(self.config.test_num_crop)]
            views.append(decoded[0])
        return views


def collate_train(batch: Sequence[Tuple[torch.Tensor, torch.Tensor, int, List[str]]]
                  ) -> Tuple[torch.Tensor, torch.Tensor, List[str]]:
    """Collate training items.

    Args:
        batch: train items ``(clips (S,3,T,H,W), labels (S,), index, bad_paths)``.

    Returns:
        ``(clips (B*S,3,T,H,W), labels (B*S,), bad_paths)``.
    """
    clips = stack_clips([clip for item in batch for clip in item[0]])
    labels = torch.cat([item[1] for item in batch])
    bad = [p for item in batch for p in item[3]]
    return clips, labels, bad


def collate_eval(batch: Sequence[Tuple[torch.Tensor, int, int, List[str]]]
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, List[str]]:
    """Collate validation or test items.

    Args:
        batch: items ``(clip or views, label, index, bad_paths)``.

    Returns:
        ``(videos (B, ...), labels (B,), indices (B,), bad_paths)``; label -1 marks a bad video.
    """
    videos = stack_clips([item[0] for item in batch])
    labels = torch.tensor([int(item[1]) for item in batch], dtype=torch.long)
    indices = torch.tensor([int(item[2]) for item in batch], dtype=torch.long)
    bad = [p for item in batch for p in item[3]]
    return videos, labels, indices, bad


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed NumPy and ``random`` from the worker's torch seed.

    DataLoader gives each worker the torch seed ``base_seed + worker_id``, where ``base_seed``
    comes from the loader's generator; deriving the other generators from it makes workers
    differ from each other and a run with a seeded generator reproducible.

    Args:
        worker_id: the worker's index (unused; the torch seed already includes it).
    """
    seed = torch.initial_seed() % 2 ** 32
    np.random.seed(seed)
    random.seed(seed)
