"""Token masks for VideoMAE pre-training (docs/PRETRAINING.md, 'Masking').

A mask is a NumPy bool vector over the ``t * h * w`` tokens of a clip, flattened in the encoder's
``(t, h, w)`` order, True where the token is hidden from the encoder. Tube masking hides the same
spatial positions in every temporal slot, so a masked patch cannot be copied from the
neighbouring frame (VideoMAE's argument for tubes: video is temporally redundant).

Randomness comes from ``rng`` (default: NumPy's global generator, seeded per DataLoader worker by
``datasets.seed_worker``), so a fixed seed reproduces the masks.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import numpy as np

MASK_TYPES = ("tube", "random")


def _grid(input_size: Sequence[int]) -> Tuple[int, int, int]:
    if len(input_size) != 3 or any(int(s) < 1 for s in input_size):
        raise ValueError(f"mask input_size must be the token grid (t, h, w) of positive sizes, "
                         f"got {tuple(input_size)}")
    t, h, w = (int(s) for s in input_size)
    return t, h, w


def _check_ratio(mask_ratio: float) -> float:
    if not 0.0 <= float(mask_ratio) < 1.0:
        raise ValueError(f"--mask_ratio must be in [0, 1) (some tokens must stay visible), "
                         f"got {mask_ratio}")
    return float(mask_ratio)


class TubeMaskingGenerator:
    """Mask ``int(mask_ratio * h * w)`` spatial positions, the same ones in all ``t`` slots.

    As VideoMAE, the count per frame is rounded down, so the realised ratio is
    ``int(mask_ratio * h * w) / (h * w)`` (exactly ``mask_ratio`` when it divides evenly), and
    every clip masks the same number of tokens (the encoder batches the visible tokens densely).

    Args:
        input_size: token grid ``(t, h, w)`` = ``(num_frames // tubelet, H // 16, W // 16)``.
        mask_ratio: fraction of tokens to hide (``--mask_ratio``, VideoMAE default 0.9).
    """

    def __init__(self, input_size: Sequence[int], mask_ratio: float) -> None:
        self.frames, self.height, self.width = _grid(input_size)
        self.mask_ratio = _check_ratio(mask_ratio)
        self.num_patches_per_frame = self.height * self.width
        self.total_patches = self.frames * self.num_patches_per_frame
        self.num_masks_per_frame = int(self.mask_ratio * self.num_patches_per_frame)
        self.total_masks = self.frames * self.num_masks_per_frame

    def __repr__(self) -> str:
        return (f"TubeMaskingGenerator(grid=({self.frames}, {self.height}, {self.width}), "
                f"masked {self.total_masks}/{self.total_patches} tokens)")

    def __call__(self, rng: Optional[Any] = None) -> np.ndarray:
        """Draw one mask.

        Args:
            rng: generator with ``permutation`` (``np.random.RandomState``/``Generator`` or
                the ``np.random`` module, the default).

        Returns:
            bool array ``(t * h * w,)``, token ``(i, y, x)`` at index ``i*h*w + y*w + x``.
        """
        r = np.random if rng is None else rng
        per_frame = np.zeros(self.num_patches_per_frame, dtype=bool)
        per_frame[r.permutation(self.num_patches_per_frame)[:self.num_masks_per_frame]] = True
        return np.tile(per_frame, self.frames)  # (t*h*w,): the same spatial mask in every slot


class RandomMaskingGenerator:
    """Mask ``int(mask_ratio * N)`` tokens chosen uniformly over the whole clip (no tubes).

    Args:
        input_size: token grid ``(t, h, w)``.
        mask_ratio: fraction of tokens to hide.
    """

    def __init__(self, input_size: Sequence[int], mask_ratio: float) -> None:
        t, h, w = _grid(input_size)
        self.mask_ratio = _check_ratio(mask_ratio)
        self.total_patches = t * h * w
        self.total_masks = int(self.mask_ratio * self.total_patches)

    def __repr__(self) -> str:
        return (f"RandomMaskingGenerator(masked {self.total_masks}/{self.total_patches} tokens)")

    def __call__(self, rng: Optional[Any] = None) -> np.ndarray:
        """Draw one mask: bool ``(t * h * w,)``."""
        r = np.random if rng is None else rng
        mask = np.zeros(self.total_patches, dtype=bool)
        mask[r.permutation(self.total_patches)[:self.total_masks]] = True
        return mask


def build_masking_generator(mask_type: str, input_size: Sequence[int], mask_ratio: float):
    """The generator for ``--mask_type`` ('tube' or 'random').

    Args:
        mask_type: ``--mask_type``.
        input_size: token grid ``(t, h, w)`` (VideoMAE's ``window_size``).
        mask_ratio: ``--mask_ratio``.
    """
    if mask_type == "tube":
        return TubeMaskingGenerator(input_size, mask_ratio)
    if mask_type == "random":
        return RandomMaskingGenerator(input_size, mask_ratio)
    raise ValueError(f"--mask_type {mask_type!r} is unknown; choose one of {', '.join(MASK_TYPES)}")


__all__ = ["TubeMaskingGenerator", "RandomMaskingGenerator", "build_masking_generator",
           "MASK_TYPES"]
