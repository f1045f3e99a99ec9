"""Training and evaluation loops: one training epoch, validation, the final multi-view test and
the merge of every rank's test predictions.

Distributed evaluation shards the videos with ``DistributedSampler``, which pads the last shard
with repeated videos; results are therefore gathered and de-duplicated by video index, so every
video counts exactly once and N processes give the same numbers as one.
"""
from __future__ import annotations

import glob
import json
import logging
import math
import os
from contextlib import nullcontext
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import utils
from models.transfer import folded_for_inference

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message names the global step."""


class RunStopped(RuntimeError):
    """Another rank stopped the run (its own error is in its log)."""


def stop_together(loss_value: float, stop_error: Optional[BaseException], device: torch.device,
                  it: int, epoch: int, step: int) -> None:
    """Raise on every rank if the loss is not finite, or any rank hit an error, on any rank.

    Every rank must stop together, or the others would wait forever in the next all-reduce.
    ``it`` is the global step, ``step`` the iteration within ``epoch``.
    """
    finite = math.isfinite(loss_value)
    if utils.all_ranks_ok(finite and stop_error is None, device):
        return
    if stop_error is not None:
        raise stop_error
    if not finite:
        raise NonFiniteLossError(
            f"loss is {loss_value} at global step {it} (epoch {epoch}, iteration {step} of the "
            f"epoch): stopping. Lower --lr, set --clip_grad, or check the data")
    raise RunStopped(f"another rank stopped the run at global step {it}; see its log")


# ------------------------------------------------------------------------------------ training
def _set_schedules(optimizer: Any, it: int, lr_schedule_values: Optional[Sequence[float]],
                   wd_schedule_values: Optional[Sequence[float]]) -> None:
    """Per-step learning rate (times each group's layer-decay scale) and weight decay (groups
    without decay keep 0)."""
    for group in optimizer.param_groups:
        if lr_schedule_values is not None:
            group["lr"] = float(lr_schedule_values[it]) * group.get("lr_scale", 1.0)
        if wd_schedule_values is not None and group["weight_decay"] > 0:
            group["weight_decay"] = float(wd_schedule_values[it])


def _accuracy(output: torch.Tensor, target: torch.Tensor, topk: Sequence[int]) -> List[float]:
    """Top-k accuracies in percent (k capped at the class count)."""
    maxk = min(max(topk), output.shape[-1])
    pred = output.topk(maxk, dim=-1).indices  # (B, maxk)
    correct = pred.eq(target.view(-1, 1))
    n = max(target.shape[0], 1)
    return [float(correct[:, :min(k, maxk)].any(dim=1).float().sum()) * 100.0 / n for k in topk]


def train_one_epoch(model: Any, criterion: Callable, data_loader: Iterable, optimizer: Any,
                    device: torch.device, epoch: int, loss_scaler: Any,
                    max_norm: Optional[float] = None, model_ema: Any = None,
                    mixup_fn: Optional[Callable] = None, log_writer: Any = None,
                    start_steps: int = 0, lr_schedule_values: Optional[Sequence[float]] = None,
                    wd_schedule_values: Optional[Sequence[float]] = None,
                    num_training_steps_per_epoch: Optional[int] = None, update_freq: int = 1,
                    amp_dtype: Optional[torch.dtype] = None, bad_tracker: Any = None,
                    print_freq: int = 10, deepspeed_engine: bool = False,
                    ds_input_dtype: Optional[torch.dtype] = None,
                    model_without_ddp: Optional[nn.Module] = None) -> Dict[str, float]:
    """Train for one epoch.

    Args:
        model: the model (DDP-wrapped, a DeepSpeed engine, or plain).
        criterion: loss function ``(logits, targets) -> loss``.
        data_loader: yields ``(clips (B*S,3,T,H,W), labels (B*S,), bad_paths)``.
        optimizer: optimizer (or the DeepSpeed engine's) over the trainable tensors.
        device: the run's device.
        epoch: epoch index.
        loss_scaler: ``utils.NativeScalerWithGradNormCount`` (None with DeepSpeed).
        max_norm: gradient clipping norm (``--clip_grad``; DeepSpeed clips by its config).
        model_ema: ``timm.utils.ModelEmaV3`` or None.
        mixup_fn: ``datasets.Mixup`` or None.
        log_writer: ``utils.TensorboardLogger`` (rank 0) or None.
        start_steps: optimizer steps done before this epoch (index into the schedules).
        lr_schedule_values / wd_schedule_values: per-step values.
        num_training_steps_per_epoch: optimizer steps per epoch.
        update_freq: micro-batches per optimizer step (``--update_freq``); gradients are not
            all-reduced on the accumulation steps (DDP ``no_sync``; DeepSpeed does the same).
        amp_dtype: autocast dtype or None (plain engine).
        bad_tracker: ``datasets.BadVideoTracker`` of the training split.
        print_freq: progress line every this many micro-batches.
        deepspeed_engine: ``model`` is a DeepSpeed engine.
        ds_input_dtype: dtype the DeepSpeed module runs in (fp16/bf16) or None.
        model_without_ddp: the unwrapped, uncompiled model (EMA source); default ``model``.

    Returns:
        Epoch averages over all ranks (``loss``, ``lr``, ``min_lr``, ``weight_decay``,
        ``grad_norm``, ``class_acc``, ``loss_scale``) and ``bad_videos``.

    Raises:
        NonFiniteLossError: the loss is NaN/inf on some rank; names the global step.
    """
    model.train(True)
    metric_logger = utils.MetricLogger(delimiter="  ")
    metric_logger.add_meter("lr", utils.SmoothedValue(window_size=1, fmt="{value:.6f}"))
    metric_logger.add_meter("min_lr", utils.SmoothedValue(window_size=1, fmt="{value:.6f}"))
    header = f"Epoch: [{epoch}]"
    steps = num_training_steps_per_epoch or (len(data_loader) // update_freq)  # type: ignore[arg-type]
    total_micro = steps * update_freq
    distributed = utils.is_dist_avail_and_initialized()
    raw = model_without_ddp if model_without_ddp is not None else \
        (model.module if deepspeed_engine else model)
    trainable = [p for p in raw.parameters() if p.requires_grad]
    if not deepspeed_engine:
        optimizer.zero_grad(set_to_none=True)

    for data_iter_step, batch in enumerate(metric_logger.log_every(data_loader, print_freq,
                                                                   header, total=total_micro)):
        step = data_iter_step // update_freq
        if step >= steps:
            break
        it = start_steps + step  # global optimizer step
        if data_iter_step % update_freq == 0:
            _set_schedules(optimizer, it, lr_schedule_values, wd_schedule_values)
        samples, targets, bad_paths = batch
        stop_error: Optional[BaseException] = None
        if bad_tracker is not None and bad_paths:
            try:
                bad_tracker.update(bad_paths)
            except Exception as err:  # raised again below, after all ranks agree to stop
                stop_error = err
        samples = samples.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        hard_targets = targets
        if mixup_fn is not None:
            samples, targets = mixup_fn(samples, targets)
        last_micro = (data_iter_step + 1) % update_freq == 0

        if deepspeed_engine:
            if ds_input_dtype is not None:
                samples = samples.to(ds_input_dtype)
            output = model(samples)
            loss = criterion(output.float(), targets)
        else:
            with utils.autocast(device, amp_dtype):
                output = model(samples)
                loss = criterion(output.float(), targets)
        loss_value = loss.item()
        stop_together(loss_value, stop_error, device, it, epoch, data_iter_step)

        grad_norm = None
        if deepspeed_engine:
            model.backward(loss)  # DeepSpeed all-reduces only at the accumulation boundary
            if last_micro and ds_input_dtype != torch.float16:
                grad_norm = float(utils.get_grad_norm_(trainable))  # before step() clears them
            model.step()
            if last_micro and ds_input_dtype == torch.float16:
                norm = model.get_global_grad_norm()  # grads are loss-scaled: ask DeepSpeed
                grad_norm = float(norm) if norm is not None else None
            loss_scale_value = float(getattr(model.optimizer, "cur_scale", 1.0) or 1.0)
        else:
            loss = loss / update_freq
            sync = nullcontext() if (last_micro or not distributed or not hasattr(model, "no_sync")) \
                else model.no_sync()
            with sync:
                loss_scaler(loss, optimizer, parameters=trainable, update_grad=False)
            if last_micro:
                norm = loss_scaler.step(optimizer, clip_grad=max_norm, parameters=trainable)
                grad_norm = float(norm)
                optimizer.zero_grad(set_to_none=True)
            loss_scale_value = loss_scaler.get_scale()
        if last_micro and model_ema is not None:
            model_ema.update(raw, step=it)

        class_acc = None
        if mixup_fn is None:
            class_acc = float((output.detach().argmax(-1) == hard_targets).float().mean())
        lrs = [g["lr"] for g in optimizer.param_groups]
        wd = max((g["weight_decay"] for g in optimizer.param_groups), default=0.0)
        metric_logger.count_clips(samples.shape[0])
        metric_logger.update(loss=loss_value, class_acc=class_acc, loss_scale=loss_scale_value,
                             lr=max(lrs), min_lr=min(lrs), weight_decay=wd, grad_norm=grad_norm)
        if log_writer is not None and last_micro:
            log_writer.update(loss=loss_value, class_acc=class_acc, head="loss", step=it)
            log_writer.update(lr=max(lrs), min_lr=min(lrs), weight_decay=wd,
                              grad_norm=grad_norm, loss_scale=loss_scale_value, head="opt",
                              step=it)

    metric_logger.synchronize_between_processes()
    logger.info("Averaged stats: %s", metric_logger)
    stats = {k: meter.global_avg for k, meter in metric_logger.meters.items()}
    if bad_tracker is not None:
        stats["bad_videos"] = _global_bad_count(bad_tracker)
    return stats


def _global_bad_count(tracker: Any) -> int:
    """Distinct bad videos seen by all ranks."""
    paths = set()
    for rank_paths in utils.all_gather_object(list(tracker.paths)):
        paths.update(rank_paths)
    return len(paths)


# ---------------------------------------------------------------------------------- evaluation
def _forward_eval(model: nn.Module, videos: torch.Tensor, device: torch.device,
                  amp_dtype: Optional[torch.dtype], input_dtype: Optional[torch.dtype]) -> torch.Tensor:
    videos = videos.to(device, non_blocking=True)
    if input_dtype is not None:
        videos = videos.to(input_dtype)
    with utils.autocast(device, amp_dtype if input_dtype is None else None):
        return model(videos).float()


def _gather_dedup(records: Dict[int, Any], sharded: bool) -> Dict[int, Any]:
    """Union of every rank's ``{video index: result}`` (padding repeats collapse)."""
    if not sharded:
        return records
    merged: Dict[int, Any] = {}
    for part in utils.all_gather_object(records):
        for k, v in part.items():
            merged.setdefault(int(k), v)
    return merged


def _validate_loop(data_loader: Iterable, model: nn.Module, device: torch.device,
                   amp_dtype: Optional[torch.dtype], input_dtype: Optional[torch.dtype],
                   print_freq: int, metric_logger: Any, records: Dict[int, Tuple[float, float, float]],
                   bad: Dict[int, str]) -> None:
    for videos, labels, indices, bad_paths in metric_logger.log_every(data_loader, print_freq, "Val:"):
        output = _forward_eval(model, videos, device, amp_dtype, input_dtype).cpu()
        metric_logger.count_clips(videos.shape[0])
        bad_iter = iter(bad_paths)  # one path per unreadable item, in batch order
        for j, (label, index) in enumerate(zip(labels.tolist(), indices.tolist())):
            if label < 0:
                bad[index] = next(bad_iter, f"<video {index}>")
                continue
            logits = output[j:j + 1]
            target = torch.tensor([label])
            loss = float(F.cross_entropy(logits, target))
            acc1, acc5 = _accuracy(logits, target, (1, 5))
            records[index] = (loss, acc1, acc5)


@torch.no_grad()
def validation_one_epoch(data_loader: Iterable, model: nn.Module, device: torch.device,
                         amp_dtype: Optional[torch.dtype] = None,
                         input_dtype: Optional[torch.dtype] = None, sharded: bool = False,
                         bad_tracker: Any = None, print_freq: int = 10) -> Dict[str, float]:
    """One centre clip per video: loss, top-1 and top-5 (percent).

    Args:
        data_loader: yields ``(clips (B,3,T,H,W), labels, indices, bad_paths)``; label -1 marks
            an unreadable video, left out of the metrics and counted.
        model: the unwrapped model.
        sharded: the loader's sampler splits the videos over the ranks (``--dist_eval``):
            gather and de-duplicate by index.
        bad_tracker: ``BadVideoTracker`` of the split.
    """
    metric_logger = utils.MetricLogger(delimiter="  ")
    records: Dict[int, Tuple[float, float, float]] = {}
    bad: Dict[int, str] = {}
    with folded_for_inference(model):  # eval mode, APT scales / LoRA folded; restored after
        _validate_loop(data_loader, model, device, amp_dtype, input_dtype, print_freq,
                       metric_logger, records, bad)
    records = _gather_dedup(records, sharded)
    bad = _gather_dedup(bad, sharded)
    if bad_tracker is not None and bad:
        bad_tracker.update(sorted(bad.values()))  # the same on every rank: all stop together
    n = len(records)
    values = np.array(list(records.values()), dtype=np.float64).reshape(-1, 3)
    stats = {"loss": float(values[:, 0].mean()) if n else float("nan"),
             "acc1": float(values[:, 1].mean()) if n else 0.0,
             "acc5": float(values[:, 2].mean()) if n else 0.0,
             "videos": n, "bad_videos": len(bad)}
    logger.info("* Acc@1 %.3f Acc@5 %.3f loss %.3f on %d videos (%d unreadable)", stats["acc1"],
                stats["acc5"], stats["loss"], n, len(bad))
    return stats


@torch.no_grad()
def final_test(data_loader: Iterable, model: nn.Module, device: torch.device, file: Optional[str],
               amp_dtype: Optional[torch.dtype] = None, input_dtype: Optional[torch.dtype] = None,
               print_freq: int = 10, chunk_size: Optional[int] = None) -> List[Dict[str, Any]]:
    """Multi-view test of this rank's share of the videos.

    Each item holds all ``V = test_num_segment * test_num_crop`` views of one video; the views'
    softmax scores are averaged into the video's score (docs/DATA.md, 'Test views').

    Args:
        data_loader: yields ``(views (B,V,3,T,H,W), labels, indices, bad_paths)``.
        model: the unwrapped model.
        file: where this rank's predictions are written (JSON lines:
            ``{"index", "label", "scores"}``; unreadable videos have label -1 and no scores).
        chunk_size: clips per forward pass (default: one batch of videos at a time).

    Returns:
        This rank's predictions (the same records as the file).
    """
    with folded_for_inference(model):  # eval mode, APT scales / LoRA folded; restored after
        preds = _test_loop(data_loader, model, device, amp_dtype, input_dtype, print_freq,
                           chunk_size)
    if file:
        tmp = f"{file}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            for p in preds:
                f.write(json.dumps(p) + "\n")
        os.replace(tmp, file)
    return preds


def _test_loop(data_loader: Iterable, model: nn.Module, device: torch.device,
               amp_dtype: Optional[torch.dtype], input_dtype: Optional[torch.dtype],
               print_freq: int, chunk_size: Optional[int]) -> List[Dict[str, Any]]:
    metric_logger = utils.MetricLogger(delimiter="  ")
    preds: List[Dict[str, Any]] = []
    for views, labels, indices, bad_paths in metric_logger.log_every(data_loader, print_freq, "Test:"):
        B, V = views.shape[:2]
        clips = views.flatten(0, 1)  # (B*V, 3, T, H, W), video-major
        step = chunk_size or clips.shape[0]
        logits = torch.cat([_forward_eval(model, clips[i:i + step], device, amp_dtype, input_dtype)
                            for i in range(0, clips.shape[0], step)])
        scores = logits.softmax(dim=-1).view(B, V, -1).mean(dim=1).cpu()  # softmax, then mean
        metric_logger.count_clips(clips.shape[0])
        bad_iter = iter(bad_paths)
        for j, (label, index) in enumerate(zip(labels.tolist(), indices.tolist())):
            if label < 0:
                preds.append({"index": int(index), "label": -1, "scores": None,
                              "path": next(bad_iter, "")})
            else:
                preds.append({"index": int(index), "label": int(label),
                              "scores": scores[j].tolist()})
    return preds


def merge_predictions(parts: Iterable[Iterable[Dict[str, Any]]]) -> Dict[str, Any]:
    """Top-1/top-5 (percent) of the union of per-rank predictions, each video counted once.

    Returns:
        ``{"top1", "top5", "videos", "bad_videos", "bad_paths"}``.
    """
    seen: Dict[int, Dict[str, Any]] = {}
    for part in parts:
        for p in part:
            seen.setdefault(int(p["index"]), p)
    good = [p for p in seen.values() if p["label"] >= 0 and p["scores"] is not None]
    bad = [p for p in seen.values() if p["label"] < 0 or p["scores"] is None]
    if good:
        scores = torch.tensor([p["scores"] for p in good], dtype=torch.float64)
        labels = torch.tensor([p["label"] for p in good])
        top1, top5 = _accuracy(scores, labels, (1, 5))
    else:
        top1 = top5 = 0.0
    return {"top1": top1, "top5": top5, "videos": len(good), "bad_videos": len(bad),
            "bad_paths": [p.get("path", "") for p in bad]}


def prediction_file(output_dir: str, rank: int) -> str:
    return os.path.join(output_dir, f"predictions_rank{rank}.json")


def read_predictions(path: str) -> List[Dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def merge(eval_path: str, num_tasks: int) -> Tuple[float, float]:
    """VideoMAE's ``merge``: read ``predictions_rank{0..num_tasks-1}.json`` from ``eval_path``
    and return (top-1, top-5) in percent, each video counted once."""
    files = [prediction_file(eval_path, r) for r in range(num_tasks)]
    missing = [f for f in files if not os.path.exists(f)]
    if missing:
        raise FileNotFoundError(f"missing prediction files: {', '.join(missing)}")
    result = merge_predictions(read_predictions(f) for f in files)
    return result["top1"], result["top5"]


def remove_stale_predictions(output_dir: str, world_size: int) -> None:
    """Delete prediction files of ranks this run does not have (an earlier, larger run)."""
    for path in glob.glob(os.path.join(output_dir, "predictions_rank*.json")):
        rank = os.path.basename(path)[len("predictions_rank"):-len(".json")]
        if rank.isdigit() and int(rank) >= world_size:
            os.remove(path)
