"""Pure frame-index and crop-offset functions (docs/DATA.md, 'Clip sampling', 'Test views'),
kept free of I/O so tests can check the exact indices.

Two temporal schemes:

* dense (UCF101, HMDB51, Kinetics, custom): a window of ``num_frames * sampling_rate`` frames,
  ``num_frames`` frames ``sampling_rate`` apart inside it; a video shorter than the window gives
  ``min(i * sampling_rate, n - 1)``, i.e. it repeats its last frame.
* segment (SSV2, TSN-style): the video is cut into ``num_frames`` equal segments and one frame is
  taken from each.

Randomness comes from ``rng`` (default: NumPy's global generator, which ``seed_worker`` seeds in
every DataLoader worker), so a fixed seed reproduces the clips.
"""

from __future__ import annotations

import math
from typing import Any, List, Optional, Tuple

import numpy as np

# Anything with NumPy's legacy ``randint`` (np.random.RandomState or the np.random module).
RandomLike = Any


def _rng(rng: Optional[RandomLike]) -> RandomLike:
    return np.random if rng is None else rng


def _check(num_video_frames: int, num_frames: int) -> None:
    if num_video_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {num_video_frames}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")


def dense_indices(num_video_frames: int, num_frames: int, sampling_rate: int, start: int) -> np.ndarray:
    """Frames ``start + i * sampling_rate`` for i < num_frames, clamped to the last frame."""
    _check(num_video_frames, num_frames)
    idx = start + np.arange(num_frames, dtype=np.int64) * sampling_rate
    return np.minimum(idx, num_video_frames - 1)


def dense_train_indices(num_video_frames: int, num_frames: int, sampling_rate: int,
                        rng: Optional[RandomLike] = None) -> np.ndarray:
    """Random dense window for training.

    Args:
        num_video_frames: frames in the video (n).
        num_frames: frames in the clip (T).
        sampling_rate: distance between sampled frames.
        rng: random generator (``randint``); NumPy's global one by default.

    Returns:
        int64 array of T frame indices: ``s + i*sampling_rate`` with ``s`` uniform in
        ``[0, n - T*sampling_rate]``; when ``n <= T*sampling_rate``, ``s = 0`` and indices past the
        end repeat the last frame.
    """
    window = num_frames * sampling_rate
    max_start = num_video_frames - window
    start = int(_rng(rng).randint(0, max_start + 1)) if max_start > 0 else 0
    return dense_indices(num_video_frames, num_frames, sampling_rate, start)


def dense_val_indices(num_video_frames: int, num_frames: int, sampling_rate: int) -> np.ndarray:
    """Deterministic validation clip: the dense window centred in the video.

    Args:
        num_video_frames: frames in the video (n).
        num_frames: frames in the clip (T).
        sampling_rate: distance between sampled frames.

    Returns:
        T indices starting at ``max(n - T*sampling_rate, 0) // 2``.
    """
    start = max(num_video_frames - num_frames * sampling_rate, 0) // 2
    return dense_indices(num_video_frames, num_frames, sampling_rate, start)


def dense_test_indices(num_video_frames: int, num_frames: int, sampling_rate: int,
                       num_views: int) -> List[np.ndarray]:
    """Temporal test views as VideoMAE's ``kinetics.py`` builds them.

    The video is first subsampled to the grid ``0, r, 2r, ...`` (r = sampling_rate), padded with
    its last grid frame up to T entries (L entries in all); view i takes T consecutive grid
    entries from ``int(i * max(L - T, 0) / (num_views - 1))``, so the first view starts at the
    beginning and the last one ends at the end of the video. With a single view VideoMAE divides
    by zero; here a single view is the validation clip (:func:`dense_val_indices`).

    Args:
        num_video_frames: frames in the video (n).
        num_frames: frames per view (T).
        sampling_rate: distance between sampled frames.
        num_views: temporal views (``--test_num_segment``).

    Returns:
        ``num_views`` arrays of T frame indices.
    """
    _check(num_video_frames, num_frames)
    if num_views < 1:
        raise ValueError(f"test_num_segment must be >= 1, got {num_views}")
    if num_views == 1:
        return [dense_val_indices(num_video_frames, num_frames, sampling_rate)]
    grid = np.arange(0, num_video_frames, sampling_rate, dtype=np.int64)
    if len(grid) < num_frames:
        grid = np.concatenate([grid, np.full(num_frames - len(grid), grid[-1], dtype=np.int64)])
    step = max(len(grid) - num_frames, 0) / (num_views - 1)
    return [grid[int(i * step): int(i * step) + num_frames] for i in range(num_views)]


def _segment_bounds(num_video_frames: int, num_segments: int) -> np.ndarray:
    """Integer start of each of ``num_segments`` equal segments, plus the end (n)."""
    return np.floor(np.arange(num_segments + 1) * (num_video_frames / num_segments)).astype(np.int64)


def segment_train_indices(num_video_frames: int, num_frames: int,
                          rng: Optional[RandomLike] = None) -> np.ndarray:
    """SSV2 training: one uniformly random frame from each of ``num_frames`` equal segments.

    Segment j covers frames ``[floor(j*n/T), floor((j+1)*n/T))``; when the video has fewer frames
    than segments, an empty segment uses the frame at its start, so frames repeat in order.

    Args:
        num_video_frames: frames in the video (n).
        num_frames: frames in the clip (T).
        rng: random generator (``randint``); NumPy's global one by default.

    Returns:
        int64 array of T non-decreasing frame indices.
    """
    _check(num_video_frames, num_frames)
    b = _segment_bounds(num_video_frames, num_frames)
    lo = np.minimum(b[:-1], num_video_frames - 1)
    hi = np.maximum(b[1:], lo + 1)
    r = _rng(rng)
    return np.array([int(r.randint(int(a), int(z))) for a, z in zip(lo, hi)], dtype=np.int64)


def segment_val_indices(num_video_frames: int, num_frames: int) -> np.ndarray:
    """SSV2 validation: the middle frame of each segment, ``floor((j + 0.5) * n / T)``.

    Args:
        num_video_frames: frames in the video (n).
        num_frames: frames in the clip (T).
    """
    return segment_test_indices(num_video_frames, num_frames, 1)[0]


def segment_test_indices(num_video_frames: int, num_frames: int, num_views: int) -> List[np.ndarray]:
    """SSV2 test views as VideoMAE's ``ssv2.py``: view i takes, in segment j, the frame
    ``int(tick * j + tick * i / num_views)`` with ``tick = n / T`` (for 2 views: the segment
    starts, then the segment middles). A single view takes the segment middles (the validation
    clip).

    Args:
        num_video_frames: frames in the video (n).
        num_frames: frames per view (T).
        num_views: temporal views (``--test_num_segment``).

    Returns:
        ``num_views`` arrays of T frame indices.
    """
    _check(num_video_frames, num_frames)
    if num_views < 1:
        raise ValueError(f"test_num_segment must be >= 1, got {num_views}")
    tick = num_video_frames / float(num_frames)
    j = np.arange(num_frames)
    offsets = [0.5] if num_views == 1 else [i / num_views for i in range(num_views)]
    views = []
    for off in offsets:
        idx = np.array([int(tick * jj + tick * off) for jj in j], dtype=np.int64)
        views.append(np.minimum(idx, num_video_frames - 1))
    return views


def crop_offsets(long_side: int, crop: int, num_crops: int) -> List[int]:
    """Evenly spaced crop starts along one side (VideoMAE's uniform test crops).

    Args:
        long_side: length of the side the crops move along.
        crop: crop length.
        num_crops: number of crops; 1 gives the centre crop, 3 gives start/centre/end.

    Returns:
        ``num_crops`` integer offsets in ``[0, long_side - crop]``.
    """
    if crop > long_side:
        raise ValueError(f"crop {crop} is larger than the frame side {long_side}")
    if num_crops < 1:
        raise ValueError(f"test_num_crop must be >= 1, got {num_crops}")
    if num_crops == 1:
        return [(long_side - crop) // 2]
    step = (long_side - crop) / (num_crops - 1)
    return [int(k * step) for k in range(num_crops)]


def resized_short_side(height: int, width: int, short_side: int) -> Tuple[int, int]:
    """(new_height, new_width) with the short side equal to ``short_side``, aspect kept.

    Args:
        height: frame height.
        width: frame width.
        short_side: target length of the shorter side.
    """
    if height <= width:
        return short_side, max(short_side, int(math.floor(width * short_side / height + 0.5)))
    return max(short_side, int(math.floor(height * short_side / width + 0.5))), short_side
