"""The pairs world (the demo's headroom world): what its classes are made of, that one frame
does not tell them, and that a small version of it is learnable with headroom over a linear
probe of the frozen backbone.

Clips are rendered in memory at the demo's sizes (``tools/worlds.py``) and fed to the demo's
committed backbone, so the tests measure the world ``make demo`` and ``make compare`` use.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from datasets.synthetic import (PAIR_CLASSES, _pair_motions, make_synthetic_dataset,
                                render_clip_batch, render_pair_clip)
from datasets.transforms import normalize_video
from models import create_model, load_pretrained
from tools.worlds import BACKBONE_DIR, BACKBONE_FILE, DemoConfig

CFG = DemoConfig.pairs()
BACKBONE = os.path.join(BACKBONE_DIR, BACKBONE_FILE)
CHANCE = 100.0 / CFG.num_classes
TAU = np.arange(9) / 8 - 0.5
# Points by which fine-tuning must beat the frozen features' linear probe on the small version.
HEADROOM = 10


def directions(relation: str, seed: int):
    """Unit direction of each actor's whole move, and the clip times at which each moves."""
    out = []
    for shift, scale in _pair_motions(relation, TAU, 64.0, np.random.default_rng(seed)):
        assert np.all(scale == 1.0)
        total = shift[-1] - shift[0]
        steps = np.linalg.norm(np.diff(shift, axis=0), axis=1)
        out.append((total / np.linalg.norm(total), steps > 1e-9))
    return out


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("relation,cosine", [("move_same_way", 1.0),
                                             ("move_opposite_ways", -1.0),
                                             ("move_at_right_angles", 0.0)])
def test_the_class_is_the_angle_between_two_moves(relation, cosine, seed):
    for suffix in ("", "_in_turn"):
        (da, moving_a), (db, moving_b) = directions(relation + suffix, seed)
        assert float(da @ db) == pytest.approx(cosine, abs=1e-9)
        # Each actor alone moves along one of the four axes, whichever the class.
        assert sorted(np.abs(da).round(9)) == [0.0, 1.0]
        if suffix:  # in turn: one moves during the first half, the other during the second
            assert moving_a[:4].all() and not moving_a[4:].any()
            assert not moving_b[:4].any() and moving_b[4:].all()
        else:       # together: both move all the time
            assert moving_a.all() and moving_b.all()


@pytest.mark.parametrize("seed", range(6))
def test_scaling_classes_grow_or_shrink_the_same_or_opposite_ways(seed):
    for relation, same in (("scale_same_way", True), ("scale_opposite_ways", False)):
        (shift_a, a), (shift_b, b) = _pair_motions(relation, TAU, 64.0,
                                                   np.random.default_rng(seed))
        assert not shift_a.any() and not shift_b.any()
        grows = [bool(s[-1] > s[0]) for s in (a, b)]
        assert (grows[0] == grows[1]) == same
        assert all(s.max() / s.min() >= 2.0 for s in (a, b))


def test_pairs_clips_and_data_set_files(tmp_path):
    clip = render_pair_clip("move_same_way", 8, 64, 64, np.random.default_rng(0))
    assert clip.shape == (8, 64, 64, 3) and clip.dtype == np.uint8
    assert not np.array_equal(clip[0], clip[-1])
    with pytest.raises(ValueError, match="unknown pairs class 'approach'"):
        render_pair_clip("approach", 8, 64, 64, np.random.default_rng(0))
    info = make_synthetic_dataset(str(tmp_path), num_classes=8, videos_per_class=4, num_frames=8,
                                  size=40, world="pairs")
    assert info.class_names == list(PAIR_CLASSES)
    lines = (tmp_path / "train.csv").read_text().splitlines()
    assert lines[0].startswith("videos/move_same_way/train_0000.mp4 0")


def clips(per_class: int, seed: int):
    """ImageNet-normalised pairs clips (B, 3, T, S, S) at the demo's sizes, and labels."""
    x, y = render_clip_batch(per_class, seed, CFG.num_classes, CFG.num_frames, CFG.video_size,
                             CFG.input_size, world="pairs", distractors=CFG.distractors)
    return normalize_video(torch.from_numpy(x).permute(0, 4, 1, 2, 3)), torch.from_numpy(y)


@torch.no_grad()
def features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([model.forward_features(x[i:i + 128]) for i in range(0, len(x), 128)])


def linear_probe(train_f, train_y, test_f, test_y, steps: int = 500) -> float:
    """Held-out top-1 (%) of a softmax classifier trained to convergence (full batch) on
    standardised frozen features: a stronger probe than the demo's few epochs of SGD."""
    mu, sd = train_f.mean(0), train_f.std(0) + 1e-6
    train_f, test_f = (train_f - mu) / sd, (test_f - mu) / sd
    torch.manual_seed(0)
    head = torch.nn.Linear(train_f.shape[1], CFG.num_classes)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(steps):
        loss = F.cross_entropy(head(train_f), train_y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return 100.0 * (head(test_f).argmax(-1) == test_y).float().mean().item()


@pytest.fixture(scope="module")
def world():
    return clips(150, seed=11), clips(40, seed=12)


def backbone() -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model(CFG.model, num_classes=CFG.num_classes, all_frames=CFG.num_frames,
                         img_size=CFG.input_size)
    load_pretrained(model, BACKBONE)
    return model.eval()


def test_one_frame_does_not_tell_the_class(world):
    (x, y), (xt, yt) = world
    model = backbone()
    # Every frame of a clip replaced by one frame (the middle one, then the first): appearance
    # and placement only, no change over time.
    for t in (CFG.num_frames // 2, 0):
        still = features(model, x[:, :, t:t + 1].expand_as(x).contiguous())
        still_t = features(model, xt[:, :, t:t + 1].expand_as(xt).contiguous())
        acc = linear_probe(still, y, still_t, yt)
        assert acc <= CHANCE + 10, f"frame {t} alone: {acc:.1f}% (chance {CHANCE:.1f}%)"


def test_small_world_is_learnable_with_headroom_over_linear_probing(world):
    """Fine-tuning the backbone learns what a linear probe of its frozen features cannot read
    off, and the frozen features still carry more than a random backbone's. Measured on this
    small version (1,200 training clips, 400 steps; 2-core CPU): fine-tuned 70.6%, linear probe
    51.9%, random backbone's 13.8% (300 steps gave 62.8% fine-tuned: the margin needs the
    steps). At the demo's size the numbers are in README."""
    (x, y), (xt, yt) = world
    frozen = backbone()
    linear = linear_probe(features(frozen, x), y, features(frozen, xt), yt)
    torch.manual_seed(0)
    random_model = create_model(CFG.model, num_classes=CFG.num_classes,
                                all_frames=CFG.num_frames, img_size=CFG.input_size).eval()
    linear_random = linear_probe(features(random_model, x), y, features(random_model, xt), yt)

    model = backbone().train()
    steps, lr = 400, 1e-3
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (32,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        finetuned = 100.0 * (model(xt).argmax(-1) == yt).float().mean().item()
    numbers = f"fine-tuned {finetuned:.1f}%, linear {linear:.1f}%, random {linear_random:.1f}%"
    assert finetuned >= linear + HEADROOM, f"no headroom: {numbers}"
    assert linear >= linear_random + 10, f"pre-training is worth little: {numbers}"

