"""(b) Inference latency per transfer type relative to the frozen backbone alone.

All models share the backbone weights and are timed interleaved in one process (warm-up first,
median of paired per-round ratios). Inference runs as deployed: eval mode, APT scales folded into
the prompts and LoRA merged into ``qkv`` (``TransferMethod.fold``), ``torch.inference_mode``. The
APT row without folding shows what folding saves. For each type the table gives the measured
latency overhead next to the counted FLOP overhead, and their quotient; the target is a quotient
of at most 1.5 for APT.

CPU: ViT-S at 16x112x112 (N = 392 tokens), P = 400, batch 2, fp32, 2 threads.
GPU (when one is available): ViT-B at 16x224x224 (N = 1568), P = 400, batch 8, bf16 autocast,
SDPA (flash / memory-efficient kernels).

    python benchmarks/bench_latency.py            # the BENCHMARKS.md configuration
    python benchmarks/bench_latency.py --quick    # seconds: a small model, few rounds
    python benchmarks/bench_latency.py --compile  # also torch.compile'd backbone, APT and VPT
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # entry point

from benchmarks import common  # noqa: E402  (first: sets OpenMP's wait policy before torch)

import torch  # noqa: E402
from benchmarks.setups import build, shared_backbone  # noqa: E402
from models import count_forward_flops  # noqa: E402

LOG = common.LOG
ROWS = ["prompt (APT)", "prompt (APT), scales not folded", "vpt deep", "vpt shallow", "adapter",
        "lora", "approx"]
APT_TARGET = 1.5  # latency overhead at most 1.5x the FLOP overhead


def autocast(device: torch.device, bf16: bool):
    if bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def build_models(args: argparse.Namespace, device: torch.device, rows: List[str],
                 compile_rows: List[str]) -> Dict[str, torch.nn.Module]:
    shared = shared_backbone(args.model, args.frames, args.size)
    models: Dict[str, torch.nn.Module] = {}
    models["backbone"] = build(args.model, "linear", args.tokens, args.frames, args.size,
                               shared=shared, device=device)
    for row in rows:
        base = row.split(",")[0]
        m = build(args.model, base, args.tokens, args.frames, args.size, shared=shared,
                  device=device)
        if "not folded" not in row:
            m.transfer.fold(m)  # APT: scales into prompts; LoRA: merge into qkv
        models[row] = m
    for m in models.values():
        m.eval().requires_grad_(False)
    for row in compile_rows:
        # dynamic=False: one fixed clip shape, so inductor specialises every kernel to it.
        models[f"{row} (compiled)"] = torch.compile(models[row], dynamic=False)
    return models


def run(args: argparse.Namespace, device: torch.device, bf16: bool, title: str) -> tuple:
    """Time one configuration; returns (markdown lines, summary dict for run_all)."""
    rows = ROWS if not args.rows else args.rows
    compile_rows = []
    if args.compile:
        compile_rows = [r for r in ["backbone", "prompt (APT)", "vpt deep"]
                        if r == "backbone" or r in rows]
    models = build_models(args, device, rows, compile_rows)
    x = torch.randn(args.batch, 3, args.frames, args.size, args.size, device=device)
    LOG.info("%s: counting FLOPs", title)
    flops = {}
    for name, m in models.items():
        base = name.replace(" (compiled)", "")
        flops[name] = flops[base] if base in flops else count_forward_flops(m, x[:1])

    def call(m):
        def f():
            with torch.inference_mode(), autocast(device, bf16):
                m(x)
        return f

    LOG.info("%s: compiling / warming up and timing %d models x %d rounds", title, len(models),
             args.rounds)
    timings = common.interleaved({n: call(m) for n, m in models.items()}, rounds=args.rounds,
                                 warmup=args.warmup, device=device)
    judge = timings.reliable_clock if device.type == "cpu" else "wall"
    lines = [f"### {title}", ""]
    lines += common.header_lines(common.machine_info(),
                                 timings.load if device.type == "cpu" else None)
    config = (f"{args.model}, clip {args.frames}x{args.size}x{args.size}, batch {args.batch}, "
              f"P = {args.tokens} prompts where a type has prompts, "
              f"{'bf16 autocast' if bf16 else 'fp32'}, {args.rounds} interleaved rounds after "
              f"{args.warmup} warm-up calls each")
    lines += [f"- model: {config}",
              f"- targets judged on the **{judge}**-clock ratios" + (
                  " (other processes held cores during the run, see common.py)"
                  if judge == "cpu" else ""), ""]
    table = []
    summary = {"judge": judge, "config": config, "rows": {},
               "load": timings.load.describe() if device.type == "cpu" else ""}
    for name in models:
        ref = "backbone (compiled)" if name.endswith("(compiled)") else "backbone"
        flop_over = flops[name] / flops[ref] - 1
        over = {c: common.ratio(timings.clock(c), name, ref) - 1 for c in ("wall", "cpu")}
        lo, hi = common.ratio_iqr(timings.clock(judge), name, ref)
        quotient = over[judge] / flop_over if flop_over > 1e-9 else float("nan")
        verdict = ""
        if name.startswith("prompt (APT)") and "not folded" not in name:
            verdict = "met" if quotient <= APT_TARGET else "MISSED"
        summary["rows"][name] = dict(flop_overhead=flop_over, overhead_wall=over["wall"],
                                     overhead_cpu=over["cpu"], quotient=quotient,
                                     ms_wall=1e3 * common.median(timings.wall[name]))
        table.append([name, flops[name] / 1e9, f"{100 * flop_over:+.1f}%",
                      1e3 * common.median(timings.wall[name]),
                      1e3 * common.median(timings.cpu[name]),
                      f"{100 * over['wall']:+.1f}%", f"{100 * over['cpu']:+.1f}%",
                      f"{100 * (lo - 1):+.1f}% .. {100 * (hi - 1):+.1f}%", quotient, verdict])
    lines += common.md_table(
        ["type", "GFLOPs/clip", "FLOP overhead", "wall ms/batch", "CPU ms/batch",
         "latency overhead (wall)", "latency overhead (CPU time)", f"IQR ({judge})",
         f"latency/FLOP overhead ({judge})", f"APT target <= {APT_TARGET}"], table)
    lines += ["", "FLOPs count 2 per multiply-add (torch.utils.flop_counter, attention included). "
              "Latency overhead = median over rounds of (type / backbone) - 1, paired per round; "
              "the compiled rows are relative to the compiled backbone. Times are medians per "
              "batch; CPU ms is process CPU time summed over threads.", ""]
    return lines, summary


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="vit_small_patch16_224")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--tokens", type=int, default=400)
    p.add_argument("--rounds", type=int, default=25)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=common.DEFAULT_THREADS)
    p.add_argument("--rows", nargs="*", default=None, help="subset of: " + ", ".join(ROWS))
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd models")
    p.add_argument("--no-gpu", dest="gpu", action="store_false",
                   help="skip the GPU section even when a GPU is available")
    p.add_argument("--gpu_model", default="vit_base_patch16_224")
    p.add_argument("--gpu_size", type=int, default=224)
    p.add_argument("--gpu_batch", type=int, default=8)
    p.add_argument("--quick", action="store_true", help="seconds-long smoke run")
    p.add_argument("--out", default="latency", help="results/<out>.md")
    args = p.parse_args(argv)
    if args.quick:
        args.model, args.frames, args.size, args.batch = "vit_mini_patch16", 8, 64, 1
        args.tokens, args.rounds, args.warmup = 50, 3, 1
        args.gpu_model, args.gpu_size, args.gpu_batch = "vit_mini_patch16", 64, 2
    return args


def main(argv=None) -> str:
    common.setup_logging()
    args = parse_args(argv)
    common.setup_threads(args.threads)
    torch.manual_seed(0)
    lines = ["## Inference latency relative to the frozen backbone", ""]
    cpu_lines, cpu_summary = run(args, torch.device("cpu"), bf16=False, title="CPU")
    lines += cpu_lines
    summary = {"cpu": cpu_summary, "gpu": None}
    if args.gpu and torch.cuda.is_available():
        gpu_args = argparse.Namespace(**vars(args))
        gpu_args.model, gpu_args.size = args.gpu_model, args.gpu_size
        gpu_args.batch = args.gpu_batch
        gpu_lines, summary["gpu"] = run(gpu_args, torch.device("cuda"), bf16=True,
                                        title="GPU (bf16)")
        lines += gpu_lines
    else:
        lines += ["### GPU", "", "Not measured: no GPU available on this machine.", ""]
    path = common.write_section(args.out, lines, quick=args.quick, summary=summary)
    LOG.info("wrote %s", path)
    return path


if __name__ == "__main__":
    main()
