"""Prompt analysis of a trained APT or VPT run on a few videos (``tools/analyze_prompts.py``).

Each video is decoded into the engine's test views (``datasets.VideoClsDataset`` in ``test``
mode: ``test_num_segment x test_num_crop`` clips) and run through the model in eval mode,
float32, with the prompts folded as at inference (``folded_for_inference``). On the model's own
forward (:mod:`models.attention_analysis`) it measures:

* the share of attention each block and head gives to the prompts against the patch tokens:
  per clip, the weight the patch queries put on the prompt keys, averaged over the queries;
  then averaged over the clips (every video has the same number of views, so this is the mean
  over views and videos);
* the prompt norms per block (as the forward uses them), beside the mean norms of the patch
  tokens' keys and values (APT) or of the patch tokens entering the block (VPT);
* an ablation: the video scores (softmax averaged over the views, as the engine's test) with
  the prompts of one block removed, block by block, and of all blocks; top-1, agreement with
  the unablated top-1 and the mean change of the true-class probability;
* the attention rollout of one view per video over its patch tokens, read out through the
  mean pooling (``models.attention_analysis.rollout_readout``).

:func:`analyze` computes; :func:`write_outputs` writes the CSV, JSON, PNG and GIF files.
This module sits in the engine layer (it uses ``engine_eval.multi_view_scores``).

Long on purpose: one analysis, its tables and its two figures, read together.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch

import utils
from datasets import VideoClsDataset, VideoRecord, collate_eval, seed_worker
from datasets.transforms import normalize_video
from engine_eval import multi_view_scores
from models.attention_analysis import (AttentionRecorder, PromptLayout, attention_rollout,
                                       prompt_layout, prompt_tensors, prompts_removed,
                                       rollout_readout)
from models.transfer import folded_for_inference
from utils.config import DataConfig
from utils.outputs import atomic_file, make_dirs

logger = logging.getLogger(__name__)

ROLLOUT_DEFINITION = (
    "Abnar & Zuidema attention rollout over the patch tokens: per block, A = the head-mean "
    "attention of the patch queries over the patch keys, each row divided by its sum (the "
    "prompts' share is reported apart); A_hat = (A + I) / 2 for the residual; R = A_hat_L ... "
    "A_hat_1. Readout of the mean-pooled feature (VideoMAE classifies fc_norm(mean of the "
    "output tokens)): relevance r_j = mean_i R[i, j], one value per input token (tubelet), "
    "summing to 1; shown per frame of the tubelet, one colour scale per clip.")


@dataclass
class VideoRollout:
    """The rollout of one view of one video.

    Args:
        video: its path.
        view: the view index (segment-major: segment ``view // test_num_crop``).
        relevance: (t, h, w) readout over the token grid.
        frames: (T, H, W, 3) uint8 pixels of the view.
    """

    video: str
    view: int
    relevance: np.ndarray
    frames: np.ndarray


@dataclass
class Analysis:
    """What :func:`analyze` measured (see the module docstring).

    Args:
        layout: where the prompts are.
        videos: the videos analysed (readable ones), in order.
        labelled: whether the videos came with labels.
        bad_videos: paths that could not be read (left out, counted).
        views: views per video.
        prompt_share: (L, H) mean share of attention on the prompts.
        token_share: (L, H) mean share on the patch tokens.
        tokens: patch tokens per clip (N), for the share a uniform attention would give.
        patch_norms: per block ``{"token", "key", "value"}`` mean norms of the patch tokens.
        prompt_norms: per block and kind (``key``/``value``/``token``), norm statistics.
        conditions: per ablation condition, ``{"name", "removed", "scores" (videos, C)}``.
        labels: (videos,) labels (-1 where unlabelled).
        rollouts: one per video asked for.
        max_error: largest |explicit - model| attention output seen (the self-check).
    """

    layout: PromptLayout
    videos: List[str]
    labelled: bool
    bad_videos: List[str]
    views: int
    prompt_share: np.ndarray
    token_share: np.ndarray
    tokens: int
    patch_norms: List[Dict[str, float]]
    prompt_norms: List[Dict[str, Any]]
    conditions: List[Dict[str, Any]]
    labels: np.ndarray
    rollouts: List[VideoRollout] = field(default_factory=list)
    max_error: float = 0.0


def test_loader(records: Sequence[VideoRecord], data: DataConfig, list_name: str,
                clips_per_batch: int, num_workers: int) -> torch.utils.data.DataLoader:
    """The engine's test items (all views of a video in one item) of ``records``, in order.

    Args:
        records: the videos (label 0 where unknown).
        data: the run's data settings (clip shape and test views).
        list_name: what to call the list in messages (a list file, or the command line).
        clips_per_batch: clips per forward pass; a batch holds that many clips' videos (>= 1).
        num_workers: decoding processes.
    """
    dataset = VideoClsDataset(records, "test", data, list_name)
    videos_per_batch = max(1, clips_per_batch // dataset.num_views)
    num_workers = min(num_workers, math.ceil(len(dataset) / videos_per_batch))
    return torch.utils.data.DataLoader(
        dataset, batch_size=videos_per_batch, shuffle=False, num_workers=num_workers,
        collate_fn=collate_eval, worker_init_fn=seed_worker if num_workers else None)


def ablation_conditions(layout: PromptLayout) -> List[Tuple[str, Tuple[int, ...]]]:
    """``(name, removed blocks)``: none, each prompted block alone, all of them."""
    return ([("none", ())] + [(f"block {b}", (b,)) for b in layout.blocks]
            + [("all", tuple(layout.blocks))])


def prompt_norm_rows(model: torch.nn.Module) -> List[Dict[str, Any]]:
    """Per block and kind: the prompts' count and L2 norms (each prompt's: mean, min, max;
    the whole block's: Frobenius), of the tensors the forward uses (``prompt_tensors``)."""
    rows = []
    for block, kinds in sorted(prompt_tensors(model).items()):
        for kind, t in kinds.items():
            per_prompt = torch.linalg.vector_norm(t.float(), dim=-1).flatten()
            rows.append({"block": block, "kind": kind, "prompts": int(per_prompt.numel()),
                         "mean_norm": float(per_prompt.mean()), "min_norm": float(per_prompt.min()),
                         "max_norm": float(per_prompt.max()),
                         "frobenius": float(torch.linalg.norm(t.float()))})
    return rows


@torch.no_grad()
def analyze(model: torch.nn.Module, loader: torch.utils.data.DataLoader, device: torch.device,
            labelled: bool, rollout_videos: int = 1, rollout_view: int = 0,
            log_every: int = 10) -> Analysis:
    """Run the analysis of the module docstring over ``loader``'s videos.

    Args:
        model: an APT or VPT model on ``device``.
        loader: from :func:`test_loader`.
        device: where the model runs.
        labelled: the loader's labels are real (a list file), not placeholders.
        rollout_videos: the first this many readable videos get a rollout.
        rollout_view: which of their views (segment-major).
        log_every: batches between progress lines (clips/s, ETA).

    Raises:
        ValueError: not an APT/VPT model, or ``rollout_view`` outside the views.
    """
    layout = prompt_layout(model)
    dataset = loader.dataset
    views = dataset.num_views
    if not 0 <= rollout_view < views:
        raise ValueError(f"--rollout_view {rollout_view}: the run's test has {views} views "
                         f"(0 to {views - 1})")
    conditions = ablation_conditions(layout)
    depth, heads = len(model.blocks), model.blocks[0].attn.num_heads
    share_sum, token_sum = np.zeros((depth, heads)), np.zeros((depth, heads))
    norm_sum = np.zeros((depth, 3))
    scores: List[List[torch.Tensor]] = [[] for _ in conditions]
    labels: List[int] = []
    videos: List[str] = []
    bad: List[str] = []
    rollouts: List[VideoRollout] = []
    clips_seen, max_error, tokens = 0, 0.0, 0
    mean_pooling = model.fc_norm is not None
    metric_logger = utils.MetricLogger(delimiter="  ")
    with folded_for_inference(model):
        for batch, batch_labels, indices, bad_paths in metric_logger.log_every(
                loader, log_every, "Prompts:"):
            bad += bad_paths
            good = [j for j, label in enumerate(batch_labels.tolist()) if label >= 0]
            if not good:
                continue
            batch = batch[good]
            B = len(good)
            clips = normalize_video(batch.flatten(0, 1).to(device))  # (B*V, 3, T, H, W)
            grid = model.patch_embed.grid_size(*clips.shape[2:])
            want = max(0, min(B, rollout_videos - len(rollouts)))
            rows = [j * views + rollout_view for j in range(want)]
            with AttentionRecorder(model, layout, rows or None) as recorder:
                logits = model(clips).float()
            scores[0].append(multi_view_scores(logits, B, views).cpu())
            for b, rec in enumerate(recorder.records):
                share_sum[b] += rec.prompt_share.sum(0).cpu().numpy()
                token_sum[b] += rec.token_share.sum(0).cpu().numpy()
                norm_sum[b] += [float(rec.patch_token_norm.sum()), float(rec.patch_key_norm.sum()),
                                float(rec.patch_value_norm.sum())]
                max_error = max(max_error, rec.max_error)
            if rows:
                readout = rollout_readout(attention_rollout(
                    [rec.patch_attention for rec in recorder.records]), mean_pooling).cpu()
                for j in range(want):
                    rollouts.append(VideoRollout(
                        dataset.records[int(indices[good[j]])].path, rollout_view,
                        readout[j].reshape(grid).numpy(),
                        batch[j, rollout_view].permute(1, 2, 3, 0).numpy()))
            for c, (_, removed) in enumerate(conditions[1:], start=1):
                with prompts_removed(model, removed):
                    scores[c].append(multi_view_scores(model(clips).float(), B, views).cpu())
            labels += [int(batch_labels[j]) for j in good]
            videos += [dataset.records[int(indices[j])].path for j in good]
            clips_seen += B * views
            tokens = grid[0] * grid[1] * grid[2]
            metric_logger.count_clips(B * views * len(conditions))
    if not videos:
        raise ValueError(f"none of the {len(dataset)} videos could be read: {', '.join(bad)}")
    patch_norms = [{"token": float(t / clips_seen), "key": float(k / clips_seen),
                    "value": float(v / clips_seen)}
                   for t, k, v in norm_sum]
    return Analysis(
        layout=layout, videos=videos, labelled=labelled, bad_videos=bad, views=views,
        prompt_share=share_sum / clips_seen, token_share=token_sum / clips_seen,
        tokens=tokens, patch_norms=patch_norms, prompt_norms=prompt_norm_rows(model),
        conditions=[{"name": name, "removed": list(removed), "scores": torch.cat(s)}
                    for (name, removed), s in zip(conditions, scores)],
        labels=np.array(labels if labelled else [-1] * len(labels)), rollouts=rollouts,
        max_error=max_error)


# ------------------------------------------------------------------------------------ tables
def share_rows(analysis: Analysis) -> List[Dict[str, Any]]:
    """One row per (block, head): prompts, share on prompts and on tokens, and the share a
    uniform attention over the N tokens and P prompts would give the prompts (P / (N + P))."""
    layout, rows = analysis.layout, []
    for b, (share, token) in enumerate(zip(analysis.prompt_share, analysis.token_share)):
        p = layout.num_prompts if b in layout.blocks else 0
        for h in range(share.shape[0]):
            rows.append({"block": b, "head": h, "prompts": p,
                         "prompt_share": float(share[h]), "token_share": float(token[h]),
                         "uniform_share": p / (analysis.tokens + p)})
    return rows


def norm_rows(analysis: Analysis) -> List[Dict[str, Any]]:
    """The prompt norms, each beside the mean norm of what it stands among: the patch tokens'
    keys (key prompts), values (value prompts) or the patch tokens entering the block (VPT)."""
    return [{**row, "patch_mean_norm": analysis.patch_norms[row["block"]][row["kind"]]}
            for row in analysis.prompt_norms]


def ablation_rows(analysis: Analysis) -> List[Dict[str, Any]]:
    """Per condition: videos, top-1 (%), agreement with the unablated top-1 (%), mean
    true-class probability and its mean change against no removal, and the mean change of the
    probability of the class the unablated model predicts. Label-based columns are None for
    unlabelled videos."""
    base = analysis.conditions[0]["scores"].double()
    n = base.shape[0]
    base_top = base.argmax(dim=1)
    rows_ = torch.arange(n)
    labels = torch.from_numpy(analysis.labels).long()
    rows = []
    for cond in analysis.conditions:
        s = cond["scores"].double()
        top = s.argmax(dim=1)
        row = {"condition": cond["name"], "removed_blocks": " ".join(map(str, cond["removed"])),
               "videos": n, "top1": None, "true_prob": None, "true_prob_change": None,
               "agreement": 100.0 * float((top == base_top).double().mean()),
               "predicted_prob_change": float((s[rows_, base_top] - base[rows_, base_top]).mean())}
        if analysis.labelled:
            row.update(top1=100.0 * float((top == labels).double().mean()),
                       true_prob=float(s[rows_, labels].mean()),
                       true_prob_change=float((s[rows_, labels] - base[rows_, labels]).mean()))
        rows.append(row)
    return rows


def block_summary(analysis: Analysis) -> List[Dict[str, Any]]:
    """Per block: prompts, the share on prompts averaged over heads, its lowest and highest
    head, and the uniform share."""
    layout = analysis.layout
    out = []
    for b, share in enumerate(analysis.prompt_share):
        p = layout.num_prompts if b in layout.blocks else 0
        out.append({"block": b, "prompts": p, "prompt_share": float(share.mean()),
                    "min_head": float(share.min()), "max_head": float(share.max()),
                    "uniform_share": p / (analysis.tokens + p)})
    return out


# ----------------------------------------------------------------------------------- outputs
def _write_csv(path: str, rows: Sequence[Dict[str, Any]]) -> None:
    with atomic_file(path, newline="") as f:
        out = csv.DictWriter(f, fieldnames=list(rows[0]))
        out.writeheader()
        for row in rows:
            out.writerow({k: "" if v is None else (repr(v) if isinstance(v, float) else v)
                          for k, v in row.items()})


def write_outputs(analysis: Analysis, out_dir: str, meta: Dict[str, Any]) -> List[str]:
    """Write every output into ``out_dir``; returns the paths written.

    ``attention_share.csv`` / ``.png`` (block x head), ``prompt_norms.csv``, ``ablation.csv``,
    ``summary.json`` (``meta``, the tables, the rollout's definition, the unreadable videos),
    and per rollout video ``rollout/<n>_<name>/frame_<f>.png``, ``rollout/<n>_<name>.gif`` and
    ``rollout/<n>_<name>.npy`` (the (t, h, w) relevance).
    """
    make_dirs(out_dir)
    paths = {name: os.path.join(out_dir, name) for name in (
        "attention_share.csv", "attention_share.png", "prompt_norms.csv", "ablation.csv",
        "summary.json")}
    shares, norms, ablation = share_rows(analysis), norm_rows(analysis), ablation_rows(analysis)
    _write_csv(paths["attention_share.csv"], shares)
    _write_csv(paths["prompt_norms.csv"], norms)
    _write_csv(paths["ablation.csv"], ablation)
    share_heatmap(analysis, paths["attention_share.png"])
    written = list(paths.values())
    rollout_files = []
    for i, roll in enumerate(analysis.rollouts):
        stem = os.path.join(out_dir, "rollout",
                            f"{i:03d}_{os.path.splitext(os.path.basename(roll.video))[0]}")
        files = rollout_images(roll, stem)
        rollout_files.append({"video": roll.video, "view": roll.view, "files": files})
        written += files
    summary = {**meta, "transfer_type": analysis.layout.kind,
               "prompts_per_block": analysis.layout.num_prompts,
               "prompted_blocks": list(analysis.layout.blocks),
               "videos": len(analysis.videos), "views_per_video": analysis.views,
               "tokens_per_clip": analysis.tokens, "labelled": analysis.labelled,
               "unreadable_videos": analysis.bad_videos,
               "attention_share_per_block": block_summary(analysis),
               "ablation": ablation, "prompt_norms": norms,
               "rollout": {"definition": ROLLOUT_DEFINITION, "videos": rollout_files},
               "self_check_max_abs_error": analysis.max_error}
    with atomic_file(paths["summary.json"]) as f:
        json.dump(summary, f, indent=1)
        f.write("\n")
    return written


def share_heatmap(analysis: Analysis, path: str) -> None:
    """Block x head heatmap of the share of attention on the prompts (blocks without prompts
    left blank), the value in each cell."""
    import matplotlib  # lazily: slow to import, and only the figures need it
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after the backend is chosen

    share = analysis.prompt_share.copy()
    unprompted = [b for b in range(share.shape[0]) if b not in analysis.layout.blocks]
    share[unprompted] = np.nan
    L, H = share.shape
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * H, 1.0 + 0.45 * L))
    image = ax.imshow(share, cmap="viridis", vmin=0.0, vmax=max(float(np.nanmax(share)), 1e-6),
                      aspect="auto")
    if L * H <= 400:
        for b in range(L):
            for h in range(H):
                if not np.isnan(share[b, h]):
                    ax.text(h, b, f"{share[b, h]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if share[b, h] < 0.6 * np.nanmax(share) else "black")
    ax.set_xticks(range(H))
    ax.set_yticks(range(L))
    ax.set_xlabel("head")
    ax.set_ylabel("block")
    p = analysis.layout.num_prompts
    ax.set_title(f"share of attention on the {p} prompts ({analysis.layout.kind.upper()}; "
                 f"uniform: {p / (analysis.tokens + p):.2f})", fontsize=8)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


def rollout_images(roll: VideoRollout, stem: str, frame_ms: int = 250) -> List[str]:
    """Each frame of the view beside the relevance over it (its tubelet's map, one patch per
    token, blended over the frame), as ``stem/frame_<f>.png``, ``stem.gif`` and ``stem.npy``."""
    import matplotlib  # lazily: slow to import, and only the figures need it
    from PIL import Image  # with matplotlib: only the figures need it

    frames, rel = roll.frames, roll.relevance  # (T, H, W, 3) uint8, (t, h, w)
    T, H, W, _ = frames.shape
    t, h, w = rel.shape
    span = float(rel.max() - rel.min())
    heat = matplotlib.colormaps["inferno"]((rel - rel.min()) / (span or 1.0))[..., :3]
    heat = heat.repeat(H // h, axis=1).repeat(W // w, axis=2)  # (t, H, W, 3) in [0, 1]
    scale = max(1, 192 // max(H, W))  # small demo clips are blown up to be seen
    make_dirs(stem)
    images, paths = [], []
    for f in range(T):
        mixed = 0.45 * frames[f] / 255.0 + 0.55 * heat[min(f * t // T, t - 1)]
        pair = np.concatenate((frames[f], (mixed * 255).round().astype(np.uint8)), axis=1)
        image = Image.fromarray(pair).resize((2 * W * scale, H * scale), Image.NEAREST)
        path = os.path.join(stem, f"frame_{f:02d}.png")
        with atomic_file(path, "wb") as out:
            image.save(out, format="PNG")
        images.append(image)
        paths.append(path)
    with atomic_file(stem + ".gif", "wb") as out:
        images[0].save(out, format="GIF", save_all=True, append_images=images[1:],
                       duration=frame_ms, loop=0)
    with atomic_file(stem + ".npy", "wb") as out:
        np.save(out, rel)
    return paths + [stem + ".gif", stem + ".npy"]
