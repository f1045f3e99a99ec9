"""Evaluation: validation (one centre clip per video), the multi-view test, and the merge of every
rank's test predictions.

Distributed evaluation shards the videos with ``DistributedSampler``, which pads the last shard
with repeated videos; results are therefore gathered and de-duplicated by video index, so every
video counts exactly once and N processes give the same numbers as one.
"""
from __future__ import annotations

import glob
import json
import logging
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import utils
from datasets.transforms import normalize_video
from models.transfer import folded_for_inference
from utils.class_results import ClassResults
from utils.outputs import atomic_file

logger = logging.getLogger(__name__)


def _accuracy(output: torch.Tensor, target: torch.Tensor, topk: Sequence[int]) -> List[float]:
    """Top-k accuracies in percent (k capped at the class count)."""
    return _ranked_accuracy(_ranked(output, topk), target, topk)


def _ranked(output: torch.Tensor, topk: Sequence[int]) -> torch.Tensor:
    """(B, maxk) class indices, best first, for the largest k of ``topk`` (capped at C)."""
    return output.topk(min(max(topk), output.shape[-1]), dim=-1).indices


def _ranked_accuracy(pred: torch.Tensor, target: torch.Tensor, topk: Sequence[int]) -> List[float]:
    """Top-k accuracies in percent of the ranking ``pred`` (``_ranked``)."""
    maxk = pred.shape[-1]
    correct = pred.eq(target.view(-1, 1))
    n = max(target.shape[0], 1)
    return [float(correct[:, :min(k, maxk)].any(dim=1).float().sum()) * 100.0 / n for k in topk]




# ---------------------------------------------------------------------------------- evaluation
def _forward_eval(model: nn.Module, videos: torch.Tensor, device: torch.device,
                  amp_dtype: Optional[torch.dtype], input_dtype: Optional[torch.dtype]) -> torch.Tensor:
    videos = normalize_video(videos.to(device, non_blocking=True))
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
        with atomic_file(file) as f:
            for p in preds:
                f.write(json.dumps(p) + "\n")
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
        scores = multi_view_scores(logits, B, V).cpu()
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


def multi_view_scores(logits: torch.Tensor, videos: int, views: int) -> torch.Tensor:
    """(videos * views, C) logits, video-major -> (videos, C) scores: the softmax of each view,
    averaged over the views of its video (averaging logits instead would weight confident views
    differently)."""
    return logits.softmax(dim=-1).view(videos, views, -1).mean(dim=1)


def merge_predictions(parts: Iterable[Iterable[Dict[str, Any]]],
                      num_classes: Optional[int] = None) -> Dict[str, Any]:
    """Top-1/top-5 (percent) of the union of per-rank predictions, each video counted once, and
    its per-class results.

    Args:
        parts: each rank's prediction records (``final_test``).
        num_classes: the class count (default: the length of the scores; needed only when no
            video could be read).

    Returns:
        ``{"top1", "top5", "mean_class", "videos", "bad_videos", "bad_paths", "classes"}``:
        ``classes`` is the ``utils.class_results.ClassResults`` of the readable videos (class
        indices as names), None when the class count is unknown; its diagonal holds exactly the
        top-1 hits (the same ranking); ``mean_class`` is its mean-class top-1 (NaN without it).
    """
    seen: Dict[int, Dict[str, Any]] = {}
    for part in parts:
        for p in part:
            seen.setdefault(int(p["index"]), p)
    good = [p for p in seen.values() if p["label"] >= 0 and p["scores"] is not None]
    bad = [p for p in seen.values() if p["label"] < 0 or p["scores"] is None]
    classes: Optional[ClassResults] = None
    if good:
        scores = torch.tensor([p["scores"] for p in good], dtype=torch.float64)
        labels = torch.tensor([p["label"] for p in good])
        ranked = _ranked(scores, (1, 5))
        top1, top5 = _ranked_accuracy(ranked, labels, (1, 5))
        classes = ClassResults.from_labels(labels.numpy(), ranked[:, 0].numpy(),
                                           num_classes or scores.shape[1])
    else:
        top1 = top5 = 0.0
        if num_classes:
            classes = ClassResults.from_labels([], [], num_classes)
    return {"top1": top1, "top5": top5,
            "mean_class": classes.mean_class_top1() if classes else float("nan"),
            "videos": len(good), "bad_videos": len(bad),
            "bad_paths": [p.get("path", "") for p in bad], "classes": classes}


def prediction_file(output_dir: str, rank: int, tag: str = "") -> str:
    """``predictions_rank{rank}.json`` (``predictions_{tag}_rank{rank}.json`` with a tag)."""
    return os.path.join(output_dir, f"predictions_{tag + '_' if tag else ''}rank{rank}.json")


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


def remove_stale_predictions(output_dir: str, world_size: int, tag: str = "") -> None:
    """Delete prediction files of ranks this run does not have (an earlier, larger run)."""
    prefix = os.path.basename(prediction_file(output_dir, 0, tag))[:-len("0.json")]
    for path in glob.glob(os.path.join(output_dir, f"{prefix}*.json")):
        rank = os.path.basename(path)[len(prefix):-len(".json")]
        if rank.isdigit() and int(rank) >= world_size:
            os.remove(path)
