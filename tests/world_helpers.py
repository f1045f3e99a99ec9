"""Probes shared by the world tests (``test_worlds.py``, ``test_world_pairs.py``): a world's
clips rendered in memory at its demo sizes, the committed backbone's frozen features, and a
linear probe of them."""
from __future__ import annotations

import os
from typing import Tuple

import torch
import torch.nn.functional as F

from datasets.synthetic import render_clip_batch
from datasets.transforms import normalize_video
from models import create_model, load_pretrained
from tools.worlds import BACKBONE_DIR, BACKBONE_FILE, DemoConfig

BACKBONE = os.path.join(BACKBONE_DIR, BACKBONE_FILE)


def world_clips(cfg: DemoConfig, per_class: int, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """ImageNet-normalised clips (B, 3, T, S, S) of ``cfg.world`` at its demo sizes, and labels."""
    x, y = render_clip_batch(per_class, seed, cfg.num_classes, cfg.num_frames, cfg.video_size,
                             cfg.input_size, world=cfg.world, distractors=cfg.distractors)
    return normalize_video(torch.from_numpy(x).permute(0, 4, 1, 2, 3)), torch.from_numpy(y)


def demo_model(cfg: DemoConfig, pretrained: bool = True) -> torch.nn.Module:
    """The demo's ViT for ``cfg`` in eval mode: the committed backbone, or a random one."""
    torch.manual_seed(0)
    model = create_model(cfg.model, num_classes=cfg.num_classes, all_frames=cfg.num_frames,
                         img_size=cfg.input_size)
    if pretrained:
        load_pretrained(model, BACKBONE)
    return model.eval()


@torch.no_grad()
def features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([model.forward_features(x[i:i + 128]) for i in range(0, len(x), 128)])


def one_frame(x: torch.Tensor, t: int) -> torch.Tensor:
    """Every frame of each clip replaced by frame ``t``: appearance and placement only."""
    return x[:, :, t:t + 1].expand_as(x).contiguous()


def linear_probe(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor,
                 test_y: torch.Tensor, num_classes: int, steps: int = 300) -> float:
    """Held-out top-1 (%) of a softmax classifier trained full-batch (AdamW) on standardised
    frozen features; with enough ``steps`` it converges."""
    mu, sd = train_f.mean(0), train_f.std(0) + 1e-6
    train_f, test_f = (train_f - mu) / sd, (test_f - mu) / sd
    torch.manual_seed(0)
    head = torch.nn.Linear(train_f.shape[1], num_classes)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(steps):
        loss = F.cross_entropy(head(train_f), train_y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return 100.0 * (head(test_f).argmax(-1) == test_y).float().mean().item()


def fine_tune(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int,
              lr: float, weight_decay: float = 0.05, batch: int = 32) -> torch.nn.Module:
    """Train the whole model: AdamW, one-cycle schedule, random batches (seeded); eval mode on
    return."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


@torch.no_grad()
def top1(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return 100.0 * (model(x).argmax(-1) == y).float().mean().item()
