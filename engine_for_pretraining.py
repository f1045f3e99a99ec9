"""One epoch of VideoMAE pre-training: masked reconstruction of tubelet pixels.

The target of each masked token is its ``tubelet x 16 x 16`` cube of pixels, un-normalised back
to [0, 1] (the loader feeds ImageNet-normalised clips) and, with ``--normlize_target`` (default,
VideoMAE's spelling), normalised per patch and channel by the cube's own mean and unbiased std.
The loss is the mean squared error over the masked tokens only.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Dict, Iterable, Optional, Sequence

import torch
import torch.nn as nn

import utils
from datasets.transforms import IMAGENET_MEAN, IMAGENET_STD
# The fine-tuning engine's stop conditions, so one ``except`` handles both kinds of run.
from engine import stop_together

logger = logging.getLogger(__name__)


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


def _set_schedules(optimizer: torch.optim.Optimizer, it: int,
                   lr_schedule_values: Optional[Sequence[float]],
                   wd_schedule_values: Optional[Sequence[float]]) -> None:
    """Per-step learning rate (times a group's ``lr_scale``) and weight decay (groups without
    decay keep 0)."""
    for group in optimizer.param_groups:
        if lr_schedule_values is not None:
            group["lr"] = float(lr_schedule_values[it]) * group.get("lr_scale", 1.0)
        if wd_schedule_values is not None and group["weight_decay"] > 0:
            group["weight_decay"] = float(wd_schedule_values[it])


def global_bad_count(tracker: Any) -> int:
    """Distinct bad videos seen by all ranks."""
    paths = set()
    for rank_paths in utils.all_gather_object(list(tracker.paths)):
        paths.update(rank_paths)
    return len(paths)


def train_one_epoch(model: nn.Module, data_loader: Iterable, optimizer: torch.optim.Optimizer,
                    device: torch.device, epoch: int, loss_scaler: Any,
                    max_norm: Optional[float] = None, patch_size: int = 16,
                    tubelet_size: int = 2, normlize_target: bool = True, log_writer: Any = None,
                    lr_scheduler: Any = None, start_steps: int = 0,
                    lr_schedule_values: Optional[Sequence[float]] = None,
                    wd_schedule_values: Optional[Sequence[float]] = None,
                    num_training_steps_per_epoch: Optional[int] = None,
                    amp_dtype: Optional[torch.dtype] = None, bad_tracker: Any = None,
                    print_freq: int = 10) -> Dict[str, float]:
    """Pre-train for one epoch (VideoMAE's ``train_one_epoch`` with its argument names).

    Args:
        model: the pre-training model, plain or DDP-wrapped; ``model(videos, masks)`` returns
            the predicted pixels of the masked tokens.
        data_loader: yields ``(videos (B,3,T,H,W), masks (B,N) bool, bad_paths)``.
        optimizer: optimizer over the model's parameters.
        device: the run's device.
        epoch: epoch index (for logs and messages).
        loss_scaler: ``utils.NativeScalerWithGradNormCount``: backward, optional clipping,
            step; returns the gradient norm.
        max_norm: gradient clipping norm (``--clip_grad``; None/0: off).
        patch_size: spatial patch side.
        tubelet_size: frames per token (``--tubelet_size``).
        normlize_target: per-patch normalised targets (``--normlize_target``).
        log_writer: ``utils.TensorboardLogger`` (rank 0) or None.
        lr_scheduler: optional timm-style scheduler with ``step_update``.
        start_steps: optimizer steps done before this epoch (index into the schedules).
        lr_schedule_values: per-step learning rates.
        wd_schedule_values: per-step weight decays.
        num_training_steps_per_epoch: steps per epoch (default ``len(data_loader)``).
        amp_dtype: autocast dtype (bf16/fp16) or None for float32.
        bad_tracker: ``datasets.BadVideoTracker`` of the split; past ``--max_bad_fraction``
            it stops the run.
        print_freq: progress line every this many steps (rank 0).

    Returns:
        Epoch averages over all ranks: ``loss``, ``lr``, ``min_lr``, ``weight_decay``,
        ``grad_norm``, ``loss_scale``, and ``bad_videos`` (distinct bad videos so far).

    Raises:
        NonFiniteLossError: the loss is NaN/inf on some rank (names the epoch and step).
    """
    model.train(True)
    metric_logger = utils.MetricLogger(delimiter="  ")
    metric_logger.add_meter("lr", utils.SmoothedValue(window_size=1, fmt="{value:.6f}"))
    metric_logger.add_meter("min_lr", utils.SmoothedValue(window_size=1, fmt="{value:.6f}"))
    header = f"Epoch: [{epoch}]"
    steps = num_training_steps_per_epoch or len(data_loader)  # type: ignore[arg-type]
    loss_func = nn.MSELoss()
    params = [p for p in model.parameters() if p.requires_grad]
    for step, (videos, masks, bad_paths) in enumerate(
            metric_logger.log_every(data_loader, print_freq, header, total=steps)):
        if step >= steps:
            break
        it = start_steps + step  # global optimizer step
        _set_schedules(optimizer, it, lr_schedule_values, wd_schedule_values)
        stop_error: Optional[BaseException] = None
        if bad_tracker is not None and bad_paths:
            try:
                bad_tracker.update(bad_paths)
            except Exception as err:  # raised again below, once every rank agrees to stop
                stop_error = err
        videos = videos.to(device, non_blocking=True)
        masks = masks.to(device, non_blocking=True).flatten(1).to(torch.bool)
        labels = masked_targets(videos, masks, patch_size, tubelet_size, normlize_target)
        with utils.autocast(device, amp_dtype):
            outputs = model(videos, masks)  # (B, N_masked, t*p*p*3)
            loss = loss_func(outputs.float(), labels)
        loss_value = loss.item()
        stop_together(loss_value, stop_error, device, it, epoch, step)
        optimizer.zero_grad(set_to_none=True)
        grad_norm = loss_scaler(loss, optimizer, clip_grad=max_norm or None, parameters=params)
        lrs = [g["lr"] for g in optimizer.param_groups]
        wd = max((g["weight_decay"] for g in optimizer.param_groups), default=0.0)
        metric_logger.count_clips(videos.shape[0])
        metric_logger.update(loss=loss_value, loss_scale=loss_scaler.get_scale(), lr=max(lrs),
                             min_lr=min(lrs), weight_decay=wd,
                             grad_norm=None if grad_norm is None else float(grad_norm))
        if log_writer is not None:
            log_writer.update(loss=loss_value, head="loss", step=it)
            log_writer.update(lr=max(lrs), min_lr=min(lrs), weight_decay=wd,
                              grad_norm=None if grad_norm is None else float(grad_norm),
                              loss_scale=loss_scaler.get_scale(), head="opt", step=it)
        if lr_scheduler is not None:
            lr_scheduler.step_update(it)
    metric_logger.synchronize_between_processes()
    logger.info("Averaged stats: %s", metric_logger)
    stats = {k: meter.global_avg for k, meter in metric_logger.meters.items()}
    if bad_tracker is not None:
        stats["bad_videos"] = global_bad_count(bad_tracker)
    return stats
