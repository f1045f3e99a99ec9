"""VideoMAE pre-training's step: masked reconstruction of tubelet pixels (docs/PRETRAINING.md).
The epoch loop is fine-tuning's (``engine.train_one_epoch``).

The target of each masked token is its ``tubelet x 16 x 16`` cube of pixels, un-normalised back
to [0, 1] (the step normalises the loader's uint8 clips with the ImageNet mean and std) and, with ``--normlize_target`` (default,
VideoMAE's spelling), normalised per patch and channel by the cube's own mean and unbiased std.
The loss is the mean squared error over the masked tokens only.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from datasets.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize_video


def _tubelet_view(videos: torch.Tensor, patch_size: int, tubelet_size: int) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, t, h, w, C, tubelet, p, p) view (no copy) of the token cubes."""
    B, C, T, H, W = videos.shape
    if T % tubelet_size or H % patch_size or W % patch_size:
        raise ValueError(f"clips of {T}x{H}x{W} do not divide into {tubelet_size}x{patch_size}x"
                         f"{patch_size} tubelets (--num_frames, --input_size, --tubelet_size)")
    t, h, w = T // tubelet_size, H // patch_size, W // patch_size
    return videos.reshape(B, C, t, tubelet_size, h, patch_size, w, patch_size).permute(
        0, 2, 4, 6, 1, 3, 5, 7)


def _cube_targets(cubes: torch.Tensor, normalize_target: bool, mean: Sequence[float],
                  std: Sequence[float], eps: float) -> torch.Tensor:
    """(M, C, tubelet, p, p) normalised-input cubes -> (M, tubelet*p*p*C) targets."""
    M, C = cubes.shape[:2]
    flat = cubes.reshape(M, C, -1)  # (M, C, P): each channel's pixels contiguous, fast to reduce
    s = torch.as_tensor(std, dtype=flat.dtype, device=flat.device).view(1, C, 1)
    if normalize_target:
        # Local contrast normalisation of the [0, 1] pixels v = x * s + m (x: loader output):
        # (v - mean v) / (std v + eps) = (x - mean x) / (std x + eps / s), so the pixels need
        # not be un-normalised first. The std is a norm of the centred values (unbiased, as
        # VideoMAE's var(unbiased=True)): ~3x faster on CPU than torch.var.
        centred = flat - flat.mean(dim=-1, keepdim=True)
        n = flat.shape[-1]
        sd = torch.linalg.vector_norm(centred, dim=-1, keepdim=True) / math.sqrt(max(n - 1, 1))
        out = centred.div_(sd + eps / s)
    else:
        m = torch.as_tensor(mean, dtype=flat.dtype, device=flat.device).view(1, C, 1)
        out = flat * s + m  # back to [0, 1]: the targets are pixels, not the normalised input
    return out.transpose(1, 2).reshape(M, -1)  # (M, P*C): VideoMAE's (p0 p1 p2 c) layout


def patch_targets(videos: torch.Tensor, patch_size: int, tubelet_size: int,
                  normalize_target: bool = True, mean: Sequence[float] = IMAGENET_MEAN,
                  std: Sequence[float] = IMAGENET_STD, eps: float = 1e-6) -> torch.Tensor:
    """Per-token reconstruction targets of a batch, as VideoMAE's engine builds them.

    Args:
        videos: ImageNet-normalised clips (B, 3, T, H, W).
        patch_size: spatial patch side (16).
        tubelet_size: frames per token (``--tubelet_size``).
        normalize_target: normalise each patch and channel by its own mean and unbiased std
            (``--normlize_target``); False gives the raw [0, 1] pixels.
        mean: the normalisation mean the loader used (per channel, [0, 1] units).
        std: the normalisation std the loader used.
        eps: added to the std (VideoMAE: 1e-6).

    Returns:
        (B, N, tubelet * patch * patch * 3) with N = T/t * H/p * W/p in the encoder's token
        order and each token's pixels laid out (t, p, p, channel).
    """
    with torch.no_grad():
        cubes = _tubelet_view(videos, patch_size, tubelet_size)  # (B, t, h, w, C, tub, p, p)
        B = cubes.shape[0]
        cubes = cubes.reshape(B * cubes.shape[1] * cubes.shape[2] * cubes.shape[3],
                              *cubes.shape[4:])
        targets = _cube_targets(cubes, normalize_target, mean, std, eps)
        return targets.view(B, -1, targets.shape[-1])


def masked_targets(videos: torch.Tensor, mask: torch.Tensor, patch_size: int, tubelet_size: int,
                   normalize_target: bool = True, mean: Sequence[float] = IMAGENET_MEAN,
                   std: Sequence[float] = IMAGENET_STD, eps: float = 1e-6) -> torch.Tensor:
    """Targets of the masked tokens only, ``patch_targets(...)[mask]`` without the work for the
    visible ones: (B, N_masked, tubelet * patch * patch * 3).

    Args:
        videos: normalised clips (B, 3, T, H, W).
        mask: (B, N) bool, True = masked, the same count per sample.
        patch_size: spatial patch side.
        tubelet_size: frames per token.
        normalize_target: ``--normlize_target``.
        mean: the loader's normalisation mean.
        std: the loader's normalisation std.
        eps: added to the std.
    """
    with torch.no_grad():
        cubes = _tubelet_view(videos, patch_size, tubelet_size)  # (B, t, h, w, C, tub, p, p)
        B = cubes.shape[0]
        selected = cubes[mask.view(*cubes.shape[:4])]  # (B*N_masked, C, tub, p, p), grid order
        targets = _cube_targets(selected, normalize_target, mean, std, eps)
        return targets.view(B, -1, targets.shape[-1])


def reconstruction_step(patch_size: int, tubelet_size: int, normlize_target: bool = True
                        ) -> Callable[[Any, Sequence[Any], Any],
                                      Tuple[torch.Tensor, int, Dict[str, Optional[float]]]]:
    """The pre-training step for ``engine.train_one_epoch``: the mean squared error between the
    predicted pixels of the masked tokens and their targets (``masked_targets``).

    Args:
        patch_size: spatial patch side.
        tubelet_size: frames per token (``--tubelet_size``).
        normlize_target: per-patch normalised targets (``--normlize_target``).
    """
    loss_func = nn.MSELoss()

    def step(model: Any, batch: Sequence[Any], backend: Any
             ) -> Tuple[torch.Tensor, int, Dict[str, Optional[float]]]:
        videos, masks = batch  # (B, 3, T, H, W) uint8, (B, N) bool
        videos = normalize_video(videos.to(backend.device, non_blocking=True))
        masks = masks.to(backend.device, non_blocking=True).flatten(1).to(torch.bool)
        labels = masked_targets(videos, masks, patch_size, tubelet_size, normlize_target)
        with backend.autocast():
            outputs = model(videos, masks)  # (B, N_masked, t*p*p*3)
            loss = loss_func(outputs.float(), labels)
        return loss, videos.shape[0], {}
    return step
