"""Is the demo's synthetic task learnable by its model? Supervised training from scratch.

The demo can only show adaptation working if the task is learnable at all by the demo's backbone
(``vit_mini_patch8`` at 8x32x32). This trains that ViT from random initialisation on a large
labelled set of the synthetic motion classes (clips rendered in memory, as the loader would give
them) and reports held-out top-1 against optimizer steps. A second run shows every clip as one
frame repeated: what appearance alone tells (it must stay at chance, since the classes differ only
in motion).

    python benchmarks/bench_learnability.py             # ~8 minutes on 2 CPU cores
    python benchmarks/bench_learnability.py --quick     # smoke run
    python benchmarks/bench_learnability.py --relations_grid   # ~25 minutes
    python benchmarks/bench_learnability.py --worlds           # ~15 minutes

Writes ``benchmarks/results/learnability.md`` (BENCHMARKS.md includes it). ``--relations_grid``
asks instead whether the token grid is what keeps the relations world from being learned: the
same ViT from scratch on relations clips with finer patches, more temporal tokens, a learnable
position embedding and a longer schedule (``benchmarks/results/learnability_relations_grid.md``,
docs/WORLDS.md). ``--worlds`` measures the headroom of each demo world the way the issue defines
it, with a linear probe trained to convergence: the committed backbone's frozen features under
a logistic regression, against fine-tuning that backbone (``benchmarks/results/worlds.md``).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # entry point

from benchmarks import common  # noqa: E402
from datasets.transforms import normalize_video  # noqa: E402
from models import create_model, load_pretrained  # noqa: E402
from datasets.synthetic import render_clip_batch  # noqa: E402


def to_input(clips) -> torch.Tensor:
    """uint8 (B, T, H, W, 3) -> the loader's normalised float (B, 3, T, H, W)."""
    return normalize_video(torch.from_numpy(np.stack(clips)).permute(0, 4, 1, 2, 3))


@torch.no_grad()
def top1(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    pred = torch.cat([model(x[i:i + 256]).argmax(-1) for i in range(0, len(x), 256)])
    model.train()
    return 100.0 * (pred == y).float().mean().item()


def curve(x, y, xt, yt, steps: int, every: int, lr: float = 1e-3, batch: int = 64,
          model: Optional[torch.nn.Module] = None, **architecture) -> List[Dict[str, float]]:
    """AdamW with a one-cycle schedule; held-out top-1 every ``every`` steps. Trains ``model``
    whole, or a ``vit_mini_patch8`` from random initialisation whose keywords ``architecture``
    overrides (``patch_size``, ``tubelet_size``, ...)."""
    if model is None:
        torch.manual_seed(0)
        model = create_model("vit_mini_patch8", num_classes=8, all_frames=x.shape[2],
                             img_size=x.shape[-1], **architecture)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(0)
    rows, start = [], time.time()
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(x), (batch,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % every == 0:
            rows.append({"step": step, "loss": loss.item(), "train": top1(model, x[:800], y[:800]),
                         "held_out": top1(model, xt, yt), "seconds": time.time() - start})
            common.LOG.info("step %d: loss %.3f, train %.1f%%, held-out %.1f%%", step,
                            rows[-1]["loss"], rows[-1]["train"], rows[-1]["held_out"])
    return rows


# name -> (steps, architecture keywords of vit_mini_patch8); every variant sees the same clips.
GRID_VARIANTS = {
    "8x8 patches, tubelet 2 (the demo's grid: 4x4x4 = 64 tokens)": (800, {}),
    "4x4 patches, tubelet 2 (4x8x8 = 256 tokens)": (800, dict(patch_size=4)),
    "8x8 patches, tubelet 1 (8x4x4 = 128 tokens)": (800, dict(tubelet_size=1)),
    "the demo's grid, learnable position embedding": (800, dict(use_learnable_pos_emb=True)),
    "the demo's grid, 4x the steps": (3200, {}),
}


def relations_grid(quick: bool) -> None:
    """The relations world from scratch under several token grids (docs/WORLDS.md): 300
    training and 60 held-out clips per class of 8 frames of 32x32 (drawn at 64), AdamW 2e-3,
    one-cycle, batch 32."""
    per_class, held_out = (10, 5) if quick else (300, 60)
    lines = ["## Learnability of the relations world under other token grids (from scratch)", "",
             *common.header_lines(common.machine_info()),
             f"- `vit_mini_patch8` (4 blocks, width 128) from random initialisation with the "
             f"architecture changes below, relations world, 8 classes (chance 12.5%), "
             f"{8 * per_class} training and {8 * held_out} held-out clips of 8 frames (32x32, "
             f"drawn at 64), AdamW 2e-3, one-cycle schedule, batch 32, no augmentation; "
             f"train top-1 on the first 800 training clips. `python "
             f"benchmarks/bench_learnability.py --relations_grid`", "",
             "| variant | steps | train top-1 (%) | held-out top-1 (%) | seconds |",
             "|---|---:|---:|---:|---:|"]
    x, y = render_clip_batch(per_class, seed=1, world="relations")
    xt, yt = render_clip_batch(held_out, seed=2, world="relations")
    x, xt, y, yt = to_input(x), to_input(xt), torch.from_numpy(y), torch.from_numpy(yt)
    for name, (steps, arch) in GRID_VARIANTS.items():
        steps = 8 if quick else steps
        common.LOG.info("%s", name)
        rows = curve(x, y, xt, yt, steps, every=steps // 4, lr=2e-3, batch=32, **arch)
        for r in rows:
            lines.append(f"| {name} | {r['step']} | {r['train']:.1f} | {r['held_out']:.1f} | "
                         f"{r['seconds']:.0f} |")
    out = os.path.join(common.RESULTS if not quick else "/tmp", "learnability_relations_grid.md")
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    common.LOG.info("wrote %s", out)


def logistic_probe(f: np.ndarray, y: np.ndarray, fv: np.ndarray, yv: np.ndarray,
                   ft: np.ndarray, yt: np.ndarray) -> float:
    """Held-out top-1 (%) of a logistic regression on standardised features, trained to
    convergence (L-BFGS); its inverse regularisation C is chosen on the val features."""
    # Lazy: scikit-learn loads in a second and only this mode needs it.
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    scaler = StandardScaler().fit(f)
    f, fv, ft = scaler.transform(f), scaler.transform(fv), scaler.transform(ft)
    fits = [LogisticRegression(C=c, max_iter=3000).fit(f, y) for c in (0.01, 0.1, 1.0)]
    best = max(fits, key=lambda clf: (clf.predict(fv) == yv).mean())
    return 100.0 * float((best.predict(ft) == yt).mean())


def frozen_features(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return torch.cat([model.forward_features(x[i:i + 256])
                          for i in range(0, len(x), 256)]).numpy()


# The demo worlds as tools/worlds.py sets them up (benchmarks may not import tools): 8 classes,
# 8 frames of 32x32 drawn at 64, the relations world with one distractor, the committed backbone.
WORLD_DISTRACTORS = {"motion": 0, "relations": 1, "pairs": 0}
DEMO_BACKBONE = os.path.join(common.ROOT, "assets", "demo_backbone",
                             "pretrain_videomae_mini_patch8.pth")


def world_headroom(quick: bool) -> None:
    """Each demo world at one size (300 training, 30 val, 60 held-out clips per class): a
    converged linear probe of the committed backbone, of a random one and of one frame
    repeated, against fine-tuning the committed backbone (AdamW 1e-3, one-cycle, batch 32)."""
    per_class, val, held_out, steps = (12, 4, 4, 8) if quick else (300, 30, 60, 900)
    lines = ["## Headroom of the demo worlds, with a linear probe trained to convergence", "",
             *common.header_lines(common.machine_info()),
             f"- Clips rendered in memory at the demo's sizes (8 frames of 32x32, drawn at 64): "
             f"{per_class} training, {val} val and {held_out} held-out clips per class. Linear "
             f"probes: logistic regression (L-BFGS, C in 0.01/0.1/1 chosen on val) on the "
             f"standardised frozen features of `vit_mini_patch8`; 'one frame' repeats the "
             f"middle frame. Fine-tuning: the committed backbone trained whole, AdamW 1e-3, "
             f"one-cycle, batch 32, {steps} steps, no augmentation. `python "
             f"benchmarks/bench_learnability.py --worlds`", "",
             "| world | chance | linear, pre-trained | linear, random backbone | linear, one frame "
             "| fine-tuned | fine-tuned − linear | seconds |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for world, distractors in WORLD_DISTRACTORS.items():
        start = time.time()
        sets = []
        for seed, n in ((1, per_class), (2, val), (3, held_out)):
            x, y = render_clip_batch(n, seed=seed, world=world, distractors=distractors)
            sets.append((to_input(x), torch.from_numpy(y)))
        (x, y), (xv, yv), (xt, yt) = sets

        def build(pretrained: bool) -> torch.nn.Module:
            torch.manual_seed(0)
            model = create_model("vit_mini_patch8", num_classes=8, all_frames=x.shape[2],
                                 img_size=x.shape[-1])
            if pretrained:
                load_pretrained(model, DEMO_BACKBONE)
            return model

        def probe(model: torch.nn.Module, frame: Optional[int] = None) -> float:
            def feats(clips: torch.Tensor) -> np.ndarray:
                if frame is not None:
                    clips = clips[:, :, frame:frame + 1].expand_as(clips).contiguous()
                return frozen_features(model, clips)
            return logistic_probe(feats(x), y.numpy(), feats(xv), yv.numpy(), feats(xt),
                                  yt.numpy())

        pre = build(True)
        linear, one_frame = probe(pre), probe(pre, x.shape[2] // 2)
        linear_random = probe(build(False))
        finetuned = curve(x, y, xt, yt, steps, every=steps, lr=1e-3, batch=32,
                          model=build(True))[-1]["held_out"]
        common.LOG.info("%s: linear %.1f, random %.1f, one frame %.1f, fine-tuned %.1f", world,
                        linear, linear_random, one_frame, finetuned)
        lines.append(f"| {world} | {100 / 8:.1f} | {linear:.1f} | "
                     f"{linear_random:.1f} | {one_frame:.1f} | {finetuned:.1f} | "
                     f"{finetuned - linear:+.1f} | {time.time() - start:.0f} |")
    out = os.path.join(common.RESULTS if not quick else "/tmp", "worlds.md")
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    common.LOG.info("wrote %s", out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--relations_grid", action="store_true",
                   help="the relations world under other token grids instead (~25 minutes)")
    p.add_argument("--worlds", action="store_true",
                   help="each demo world's headroom with a converged linear probe instead "
                        "(~15 minutes)")
    a = p.parse_args()
    common.setup_threads(a.threads)
    if a.relations_grid:
        relations_grid(a.quick)
        return
    if a.worlds:
        world_headroom(a.quick)
        return
    per_class, steps, every = (20, 20, 10) if a.quick else (400, 600, 100)
    x, y = render_clip_batch(per_class, seed=1)
    xt, yt = render_clip_batch(50 if not a.quick else 5, seed=2)
    x, xt = to_input(x), to_input(xt)
    y, yt = torch.from_numpy(y), torch.from_numpy(yt)
    motion = curve(x, y, xt, yt, steps, every)
    # One frame repeated: same appearance, no motion.
    single = curve(x[:, :, 3:4].expand_as(x).contiguous(), y,
                   xt[:, :, 3:4].expand_as(xt).contiguous(), yt, steps, every)
    lines = ["## Learnability of the demo task (supervised, from scratch)", "",
             *common.header_lines(common.machine_info()),
             f"- `vit_mini_patch8` from random initialisation, 8 classes (chance 12.5%), "
             f"{len(x)} labelled training clips and {len(xt)} held-out clips of 8x32x32 "
             f"(rendered in memory as `datasets.synthetic.render_clip_batch`), AdamW 1e-3, "
             f"one-cycle schedule, batch 64, no augmentation. `python "
             f"benchmarks/bench_learnability.py`", "",
             "| step | loss | train top-1 (%) | held-out top-1 (%) | held-out, one frame repeated (%) |",
             "|---:|---:|---:|---:|---:|"]
    for m, s in zip(motion, single):
        lines.append(f"| {m['step']} | {m['loss']:.3f} | {m['train']:.1f} | {m['held_out']:.1f} "
                     f"| {s['held_out']:.1f} |")
    out = os.path.join(common.RESULTS if not a.quick else "/tmp", "learnability.md")
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    common.LOG.info("wrote %s", out)


if __name__ == "__main__":
    main()
