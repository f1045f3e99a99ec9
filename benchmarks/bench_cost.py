"""(a) Parameters and GFLOPs per transfer type, counted and analytic.

ViT-S and ViT-B at 16x224x224 (N = 1568 tokens), 101 classes, P in {2, 50, 100, 200, 400}.
Counted: ``models.cost_report`` (``torch.utils.flop_counter`` with CPU SDPA counted, inference
folding applied), on the meta device so no arithmetic runs. Analytic, per clip, in multiply-adds:

* backbone: ``Ne*D*3*t*16*16`` (tubelet embedding) + ``L*(12*N*D^2 + 2*N^2*D)`` + ``D*C`` (head)
* APT adds ``2*N*P*D`` per prompted block (queries attend to P more keys and values);
* VPT (deep or shallow) is the backbone at ``N + P`` tokens in every block;
* adapter adds ``2*N*D*r`` per block (r = 64), LoRA nothing after merging;
* approx adds ``2*N*M*D + 2*M*D*4`` per block (one diffusion step, the rank-4 prompt update).

FLOPs = 2 x multiply-adds (``torch.utils.flop_counter``'s convention); GMACs is the number most
video papers call "GFLOPs".

    python benchmarks/bench_cost.py
    python benchmarks/bench_cost.py --quick   # ViT-S only, two prompt counts
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # entry point

from benchmarks import common  # noqa: E402

import torch  # noqa: E402

from benchmarks.setups import type_configs  # noqa: E402
from models import cost_report, create_model  # noqa: E402

LOG = common.LOG
PROMPT_ROWS = ["prompt (APT)", "vpt deep", "vpt shallow", "approx"]
FIXED_ROWS = ["end2end", "linear", "adapter", "lora"]


def analytic_macs(row: str, N: int, D: int, L: int, C: int, P: int, tubelet: int = 2,
                  patch: int = 16) -> Optional[float]:
    embed = N * D * 3 * tubelet * patch * patch

    def backbone(n: int) -> float:
        return embed + L * (12 * n * D * D + 2 * n * n * D) + D * C

    if row in ("end2end", "linear", "lora"):
        return backbone(N)
    if row == "prompt (APT)":
        return backbone(N) + L * 2 * N * P * D
    if row in ("vpt deep", "vpt shallow"):
        return backbone(N + P)
    if row == "adapter":
        return backbone(N) + L * 2 * N * D * 64
    if row == "approx":
        return backbone(N) + L * (2 * N * P * D + 2 * P * D * 4)
    return None


def rows_for_model(model_name: str, frames: int, size: int, tokens: List[int], C: int) -> List:
    out = []
    base_macs = None
    plan = [(r, None) for r in FIXED_ROWS] + [(r, p) for r in PROMPT_ROWS for p in tokens]
    for row, P in plan:
        transfer_type, kwargs = type_configs(P or 1)[row]
        with torch.device("meta"):  # counting needs shapes only
            model = create_model(model_name, transfer_type=transfer_type, num_classes=C,
                                 all_frames=frames, img_size=size, **kwargs)
        rep = cost_report(model, frames, size)
        grid = model.patch_embed.grid_size(frames, size, size)
        N = grid[0] * grid[1] * grid[2]
        analytic = analytic_macs(row, N, model.embed_dim, len(model.blocks), C, P or 0,
                                 model.tubelet_size)
        counted_macs = rep["gflops"] * 1e9 / 2
        if row == "end2end":
            base_macs = counted_macs
        out.append([row, P if P is not None else "", rep["params"] / 1e6,
                    rep["trainable_params"] / 1e6,
                    100 * rep["trainable_params"] / rep["params"], rep["gflops"],
                    2 * analytic / 1e9, f"{counted_macs / analytic:.5f}",
                    f"{100 * (counted_macs / base_macs - 1):+.2f}%"])
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="*", default=["vit_small_patch16_224", "vit_base_patch16_224"])
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--tokens", type=int, nargs="*", default=[2, 50, 100, 200, 400])
    p.add_argument("--classes", type=int, default=101)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default="cost")
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.tokens = ["vit_small_patch16_224"], [2, 400]
    return args


def main(argv=None) -> str:
    common.setup_logging()
    args = parse_args(argv)
    lines = ["## Parameters and FLOPs per transfer type", ""]
    lines += common.header_lines(common.machine_info())
    lines += [f"- clip {args.frames}x{args.size}x{args.size}, {args.classes} classes, batch 1; "
              "counted on the meta device (shapes only), inference folding applied", ""]
    for name in args.models:
        LOG.info("counting %s", name)
        lines += [f"### {name}", ""]
        lines += common.md_table(
            ["type", "P", "params (M)", "trainable (M)", "trainable %", "GFLOPs counted",
             "GFLOPs analytic", "counted/analytic", "FLOP overhead vs backbone"],
            rows_for_model(name, args.frames, args.size, args.tokens, args.classes))
        lines.append("")
    lines += ["GFLOPs = 2 x multiply-adds (GMACs = GFLOPs / 2). Counted FLOPs include only "
              "matrix products and convolutions (torch.utils.flop_counter), as the analytic "
              "formulas do; norms, softmax and activations are not counted by either. APT at "
              "P = 400 on ViT-B: 2*N*P*D*L = 11.56 GMACs over the backbone's 180.3.", ""]
    path = common.write_section(args.out, lines, quick=args.quick)
    LOG.info("wrote %s", path)
    return path


if __name__ == "__main__":
    main()
