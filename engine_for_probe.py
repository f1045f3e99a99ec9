"""k-NN probe of a backbone's clip features (what pre-training has learned, measured with labels).

During VideoMAE pre-training (``run_mae_pretraining.py --probe_data_path``) the encoder's features
of labelled videos are classified by their nearest neighbours among the features of other
labelled videos. Nothing is trained for the probe, so it is cheap enough to run every few epochs
and shows whether the features carry what the downstream task needs (on the synthetic set:
motion). The rule is DINO's weighted k-NN: cosine similarity of L2-normalised features, the k
nearest training clips vote for their class with weight ``exp(similarity / T)``.

The features are the mean over all tokens of the encoder's output (no masking), the quantity a
mean-pooling head sees after fine-tuning.
"""
from __future__ import annotations

import logging
import os
from typing import Dict, Iterable, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from datasets.listfile import parse_list_file
from datasets.transforms import normalize_video
from datasets.video_dataset import VideoClsDataset
from utils.config import DataConfig

logger = logging.getLogger(__name__)


@torch.no_grad()
def extract_features(encoder: nn.Module, loader: Iterable, device: torch.device
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean-pooled encoder features of every clip of a validation-mode loader.

    Args:
        encoder: a pre-training encoder (``encoder(videos, mask)`` -> (B, N_vis, D) tokens).
        loader: yields ``(videos (B,3,T,H,W), labels (B,), index, bad_paths)``; items with
            label -1 (unreadable videos) are dropped.
        device: where to run the encoder.

    Returns:
        ``(features (M, D) float32 on the CPU, labels (M,) int64)``.
    """
    was_training = encoder.training
    encoder.eval()
    feats, labels = [], []
    for videos, target, _, _ in loader:
        keep = target >= 0
        if not bool(keep.any()):
            continue
        videos = normalize_video(videos[keep].to(device, non_blocking=True))
        grid = encoder.patch_embed.grid_size(*videos.shape[2:])
        no_mask = torch.zeros(videos.shape[0], grid[0] * grid[1] * grid[2], dtype=torch.bool,
                              device=device)
        tokens = encoder(videos, no_mask)  # (B, N, D)
        feats.append(tokens.float().mean(1).cpu())
        labels.append(target[keep])
    encoder.train(was_training)
    if not feats:
        raise ValueError("the probe loader gave no readable video")
    return torch.cat(feats), torch.cat(labels).long()


def knn_classify(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                 num_classes: int, k: int = 20, temperature: float = 0.07) -> torch.Tensor:
    """Weighted k-NN class scores (DINO's rule).

    Args:
        train_feats: (M, D) features of the labelled reference clips.
        train_labels: (M,) their labels.
        test_feats: (Q, D) features to classify.
        num_classes: number of classes.
        k: neighbours that vote (capped at M).
        temperature: vote weight ``exp(cos / temperature)``.

    Returns:
        (Q, num_classes) vote totals; ``argmax(-1)`` is the prediction.
    """
    ref = F.normalize(train_feats.float(), dim=1)
    query = F.normalize(test_feats.float(), dim=1)
    sim = query @ ref.T  # (Q, M) cosine similarities
    k = min(k, ref.shape[0])
    top_sim, top_idx = sim.topk(k, dim=1)  # (Q, k)
    votes = torch.zeros(query.shape[0], num_classes)
    votes.scatter_add_(1, train_labels[top_idx], (top_sim / temperature).exp())
    return votes


def knn_probe(encoder: nn.Module, train_loader: Iterable, test_loader: Iterable,
              device: torch.device, num_classes: int, k: int = 20) -> Dict[str, float]:
    """k-NN top-1 (%) of ``test_loader``'s clips against ``train_loader``'s.

    Returns:
        ``{"knn_top1": ..., "knn_train_clips": ..., "knn_test_clips": ...}``.
    """
    train_feats, train_labels = extract_features(encoder, train_loader, device)
    test_feats, test_labels = extract_features(encoder, test_loader, device)
    pred = knn_classify(train_feats, train_labels, test_feats, num_classes, k).argmax(1)
    top1 = 100.0 * (pred == test_labels).float().mean().item()
    return {"knn_top1": top1, "knn_train_clips": float(len(train_labels)),
            "knn_test_clips": float(len(test_labels))}


def build_probe_loaders(data_path: str, data: DataConfig, batch_size: int
                        ) -> Tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader, int]:
    """Loaders over ``DATA/train.csv`` (references) and ``DATA/val.csv`` (queries), both with the
    validation transform (one centre clip per video), for :func:`knn_probe`.

    Args:
        data_path: folder with ``train.csv``, ``val.csv`` and ``classes.txt`` (labelled).
        data: the run's data settings (its ``num_frames``, ``sampling_rate``, ``input_size``,
            ``video_backend``, ``allow_duplicates`` and ``num_workers`` are used).
        batch_size: clips per forward pass.

    Returns:
        ``(train_loader, val_loader, num_classes)``.
    """
    classes = os.path.join(data_path, "classes.txt")
    if not os.path.isfile(classes):
        raise ValueError(f"--probe_data_path {data_path}: no classes.txt (one '<label> <name>' "
                         f"line per class) to count the classes")
    with open(classes, encoding="utf-8") as f:
        num_classes = sum(1 for line in f if line.strip())
    # Dense windows of the run's clip shape ('custom': no segment sampling), centre crops.
    config = DataConfig(data_set="custom", nb_classes=num_classes, num_frames=data.num_frames,
                        sampling_rate=data.sampling_rate, input_size=data.input_size,
                        short_side_size=data.input_size, video_backend=data.video_backend,
                        allow_duplicates=data.allow_duplicates)
    loaders = []
    for split in ("train", "val"):
        path = os.path.join(data_path, f"{split}.csv")
        records = parse_list_file(path, num_classes, "", require_all_classes=False,
                                  allow_duplicates=config.allow_duplicates)
        dataset = VideoClsDataset(records, "val", config, path)
        loaders.append(torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                                   num_workers=data.num_workers))
    logger.info("k-NN probe: %d reference and %d query videos of %d classes from %s",
                len(loaders[0].dataset), len(loaders[1].dataset), num_classes, data_path)
    return loaders[0], loaders[1], num_classes
