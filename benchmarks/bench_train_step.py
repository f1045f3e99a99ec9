"""(c) Training-step time and peak memory per transfer type, relative to ``end2end``.

A step is what the engine does per batch: ``zero_grad(set_to_none=True)``, forward, cross-entropy,
backward, ``AdamW.step()`` over the trainable parameters. All types share the backbone weights and
are timed interleaved in one process (warm-up steps first; median of per-round paired ratios).

Expected ratio = (FLOPs of the type's forward + backward) / (FLOPs of end2end's), counted by
``models.count_train_step_flops`` on what autograd actually runs: a frozen linear layer's backward
is its input gradient only (one forward's FLOPs), a trained one's is two, attention's backward is
counted as FlashAttention computes it (2.5 forwards, the scores are recomputed). An independent
analytic count of the same rule is shown beside it for the types it covers. Target: measured
ratio at most 1.10 x expected, and APT's peak memory at most end2end's.

The second table compares APT with a straightforward implementation (``benchmarks/naive_apt.py``:
explicit ``softmax(q k^T) v`` with prompts concatenated; frozen weights left out of the optimizer
but still given gradients by autograd), target: ours at most 0.7x its step time. A second naive
variant that also sets ``requires_grad=False`` isolates the attention implementation.

CPU: ViT-S 16x112x112 (N = 392), P = 400, batch 2, fp32, 2 threads.
GPU (when available): ViT-B 16x224x224, P = 400, batch 8, bf16 autocast; APT throughput in
clips/s and model FLOPs utilisation, SDPA against the explicit-math attention.

    python benchmarks/bench_train_step.py          # the BENCHMARKS.md configuration
    python benchmarks/bench_train_step.py --quick  # seconds: a small model, few rounds
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Callable, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # entry point

from benchmarks import common  # noqa: E402  (first: sets OpenMP's wait policy before torch)

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.naive_apt import naive_from  # noqa: E402
from benchmarks.setups import build, shared_backbone  # noqa: E402
from models import count_train_step_flops  # noqa: E402

LOG = common.LOG
ROWS = ["end2end", "linear", "prompt (APT)", "vpt deep", "vpt shallow", "adapter", "lora",
        "approx"]
NAIVE_A = "naive APT (frozen weights get gradients)"
NAIVE_B = "naive APT (requires_grad=False)"
RATIO_TOLERANCE = 1.10  # measured / expected at most this
NAIVE_TARGET = 0.70  # ours / naive step time at most this

# Dense bf16 tensor-core peak (TFLOP/s, no sparsity) for model FLOPs utilisation.
GPU_BF16_PEAK_TFLOPS = {"H100 SXM": 989.4, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 989.4,
                        "H200": 989.4, "GH200": 989.4, "A100": 312.0, "L40S": 362.1,
                        "L4": 121.0, "A10": 125.0, "B200": 2250.0}


def gpu_peak_tflops(name: str, override: Optional[float]) -> Optional[float]:
    if override:
        return override
    for key in sorted(GPU_BF16_PEAK_TFLOPS, key=len, reverse=True):
        if key.lower() in name.lower():
            return GPU_BF16_PEAK_TFLOPS[key]
    return None


def analytic_train_macs(row: str, N: int, P: int, D: int, L: int, C: int, tubelet: int = 2,
                        patch: int = 16) -> Optional[float]:
    """Multiply-adds of forward + backward by the counting rule below, written out independently.

    Linear layers: forward 1, backward 1 if frozen (input gradient) or 2 if trained; skipped
    when nothing upstream needs a gradient. Attention matmuls: forward 1, backward 2.5
    (FlashAttention recomputes the scores). The patch embedding's input is data: its backward
    is the weight gradient only, and only when it trains.
    """
    embed = N * D * 3 * tubelet * patch * patch
    head = D * C

    def block(n: int, m: int, lin_bwd: float, qkv_bwd: Optional[float] = None) -> float:
        lin, qkv, att = 12 * n * D * D, 3 * n * D * D, 2 * n * m * D
        qkv_bwd = lin_bwd if qkv_bwd is None else qkv_bwd
        return lin + att + att * 2.5 + (lin - qkv) * lin_bwd + qkv * qkv_bwd

    if row == "end2end":
        return 2 * embed + L * block(N, N, 2) + 3 * head
    if row == "linear":
        return embed + L * (12 * N * D * D + 2 * N * N * D) + 2 * head + head
    if row == "prompt (APT)":
        # block 0's input needs no gradient: its qkv projection gets no backward at all
        return embed + block(N, N + P, 1, qkv_bwd=0) + (L - 1) * block(N, N + P, 1) + 3 * head
    if row in ("vpt deep", "vpt shallow"):
        return embed + L * block(N + P, N + P, 1) + 3 * head
    return None


def autocast(device: torch.device, bf16: bool):
    if bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_step(model: nn.Module, params: List[nn.Parameter], x: torch.Tensor, y: torch.Tensor,
              device: torch.device, bf16: bool) -> Callable[[], None]:
    # weight_decay as the published APT runs; AdamW's defaults otherwise (as the engine builds it)
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-5)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast(device, bf16):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    step.optimizer = opt  # type: ignore[attr-defined]
    return step


def build_all(args: argparse.Namespace, device: torch.device, rows: List[str], naive: bool
              ) -> Dict[str, tuple]:
    """Row -> (model to count/measure, trainable parameters)."""
    shared = shared_backbone(args.model, args.frames, args.size)
    out = {}
    for row in rows:
        m = build(args.model, row, args.tokens, args.frames, args.size, shared=shared,
                  device=device).train()
        out[row] = (m, [p for p in m.parameters() if p.requires_grad])
    if naive and "prompt (APT)" in out:
        apt = out["prompt (APT)"][0]
        for name, grads in ((NAIVE_A, True), (NAIVE_B, False)):
            m = naive_from(apt, frozen_requires_grad=grads).to(device).train()
            out[name] = (m, m.trainable())
    return out


def run(args: argparse.Namespace, device: torch.device, bf16: bool, title: str) -> tuple:
    """Time one configuration; returns (markdown lines, summary dict for run_all)."""
    rows = args.rows or ROWS
    if "end2end" not in rows:
        rows = ["end2end"] + rows
    models = build_all(args, device, rows, naive=args.naive)
    if args.math_attention and device.type == "cuda":  # GPU: SDPA against the math path
        m = build(args.model, "prompt (APT)", args.tokens, args.frames, args.size,
                  shared=shared_backbone(args.model, args.frames, args.size), device=device)
        m.set_fused_attn(False)
        models["prompt (APT), math attention"] = (m.train(), [p for p in m.parameters()
                                                               if p.requires_grad])
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.frames, args.size, args.size, device=device)
    y = torch.randint(0, 101, (args.batch,), device=device)

    LOG.info("%s: counting training FLOPs", title)
    flops = {}
    for name, (m, _) in models.items():
        # Counted on one clip and scaled (every op is per sample): counting runs an fp32 step,
        # which on a GPU at the benchmark batch could need more memory than the bf16 run.
        flops[name] = count_train_step_flops(m, x[:1]) * args.batch  # forward + backward
    steps = {name: make_step(m, params, x, y, device, bf16)
             for name, (m, params) in models.items()}
    if args.compile:
        for name in [r for r in ("end2end", "prompt (APT)") if r in models]:
            m, params = models[name]
            cm = torch.compile(m, dynamic=False)
            steps[f"{name} (compiled)"] = make_step(cm, params, x, y, device, bf16)
            flops[f"{name} (compiled)"] = flops[name]

    LOG.info("%s: timing %d step kinds x %d rounds", title, len(steps), args.rounds)
    timings = common.interleaved(steps, rounds=args.rounds, warmup=args.warmup, device=device)
    judge = timings.reliable_clock if device.type == "cpu" else "wall"
    LOG.info("%s: peak memory", title)
    peak = {}
    for name, step in steps.items():
        if name.endswith("(compiled)"):
            continue
        peak[name] = common.step_peak_bytes(models[name][0], step.optimizer, step, device)

    lines = [f"### {title}", ""]
    lines += common.header_lines(common.machine_info(),
                                 timings.load if device.type == "cpu" else None)
    config = (f"{args.model}, clip {args.frames}x{args.size}x{args.size}, batch {args.batch}, "
              f"P = {args.tokens} where a type has prompts, "
              f"{'bf16 autocast' if bf16 else 'fp32'}, AdamW; {args.rounds} interleaved rounds "
              f"after {args.warmup} warm-up steps each")
    summary = {"judge": judge, "config": config, "rows": {}, "naive": {}, "throughput": {},
               "load": timings.load.describe() if device.type == "cpu" else ""}
    lines += [f"- model: {config}",
              f"- targets judged on the **{judge}**-clock ratios" + (
                  " (other processes held cores during the run, see common.py)"
                  if judge == "cpu" else ""), ""]
    m0 = models["end2end"][0]
    grid = m0.patch_embed.grid_size(args.frames, args.size, args.size)
    dims = dict(N=grid[0] * grid[1] * grid[2], P=args.tokens, D=m0.embed_dim, L=len(m0.blocks),
                C=101, tubelet=m0.tubelet_size)
    ref_analytic = analytic_train_macs("end2end", **dims)
    table = []
    for name in steps:
        if name in (NAIVE_A, NAIVE_B):
            continue
        ref = "end2end (compiled)" if name.endswith("(compiled)") else "end2end"
        expected = flops[name] / flops[ref]
        analytic = analytic_train_macs(name, **dims)
        analytic_ratio = analytic / ref_analytic if analytic else float("nan")
        measured = {c: common.ratio(timings.clock(c), name, ref) for c in ("wall", "cpu")}
        quotient = measured[judge] / expected
        verdict = "met" if quotient <= RATIO_TOLERANCE else "MISSED"
        base_name = name.replace(" (compiled)", "")
        mem = peak.get(base_name)
        mem_ratio = mem / peak["end2end"] if mem else float("nan")
        params = sum(p.numel() for p in models[base_name][1])
        summary["rows"][name] = dict(expected=expected, measured_wall=measured["wall"],
                                     measured_cpu=measured["cpu"], quotient=quotient,
                                     peak_mib=mem / 2 ** 20 if mem else None,
                                     peak_ratio=mem_ratio if mem else None,
                                     ms_wall=1e3 * common.median(timings.wall[name]))
        table.append([name, f"{params / 1e6:.3f} M", flops[name] / 1e9, expected, analytic_ratio,
                      1e3 * common.median(timings.wall[name]),
                      1e3 * common.median(timings.cpu[name]), measured["wall"], measured["cpu"],
                      quotient, verdict, mem / 2 ** 20 if mem else float("nan"), mem_ratio])
    lines += common.md_table(
        ["type", "trainable", "GFLOPs fwd+bwd", "expected ratio (FLOPs)", "analytic ratio",
         "wall ms/step", "CPU ms/step", "measured ratio (wall)", "measured ratio (CPU time)",
         f"measured/expected ({judge})", f"target <= {RATIO_TOLERANCE:.2f}", "peak MiB",
         "peak / end2end"], table)
    lines += ["", "Ratios are to end2end (compiled rows: to compiled end2end), medians of "
              "per-round paired ratios. Peak memory: the most tensor bytes alive during one step, "
              "parameters, gradients and optimizer state included (CUDA: "
              "max_memory_allocated; CPU: allocator events of torch.profiler, see common.py). "
              "'analytic ratio' recounts the same rule by formula (n/a where not written out).",
              ""]

    if NAIVE_A in steps:
        ours, ours_c = "prompt (APT)", "prompt (APT) (compiled)"
        lines += [f"#### APT against a straightforward implementation ({title})", ""]
        naive_rows = []
        for name in (NAIVE_A, NAIVE_B):
            r = {c: common.ratio(timings.clock(c), ours, name) for c in ("wall", "cpu")}
            rc = {c: common.ratio(timings.clock(c), ours_c, name) if ours_c in steps
                  else float("nan") for c in ("wall", "cpu")}
            target = ""
            if name == NAIVE_A:
                target = "met" if r[judge] <= NAIVE_TARGET else "MISSED"
                if ours_c in steps:
                    target += " / compiled: " + ("met" if rc[judge] <= NAIVE_TARGET else "MISSED")
            summary["naive"][name] = dict(flop_ratio=flops[ours] / flops[name], wall=r["wall"],
                                          cpu=r["cpu"], compiled_wall=rc["wall"],
                                          compiled_cpu=rc["cpu"],
                                          peak_ratio=peak[ours] / peak[name])
            naive_rows.append([name, 1e3 * common.median(timings.wall[name]),
                               1e3 * common.median(timings.cpu[name]), flops[ours] / flops[name],
                               r["wall"], r["cpu"], rc["wall"], rc["cpu"], target,
                               peak[name] / 2 ** 20, peak[ours] / peak[name]])
        lines += common.md_table(
            ["baseline", "wall ms/step", "CPU ms/step", "ours/naive FLOPs", "ours/naive (wall)",
             "ours/naive (CPU time)", "compiled ours/naive (wall)",
             "compiled ours/naive (CPU time)", f"target <= {NAIVE_TARGET} ({judge})",
             "naive peak MiB", "ours/naive peak"], naive_rows)
        lines += ["", f"Ours (eager): {1e3 * common.median(timings.wall[ours]):.1f} ms/step wall, "
                  f"{1e3 * common.median(timings.cpu[ours]):.1f} ms CPU, peak "
                  f"{peak[ours] / 2 ** 20:.1f} MiB. 'compiled ours' is the same model through "
                  "torch.compile (inductor), n/a when run without --compile.", ""]

    if device.type == "cuda":
        peak_tf = gpu_peak_tflops(torch.cuda.get_device_name(device), args.gpu_peak_tflops)
        lines += [f"#### Throughput and model FLOPs utilisation ({title})", ""]
        tp_rows = []
        for name in steps:
            if name in (NAIVE_A, NAIVE_B):
                continue
            t = common.median(timings.wall[name])
            achieved = flops[name] / t / 1e12
            mfu = achieved / peak_tf if peak_tf else float("nan")
            tp_rows.append([name, args.batch / t, achieved, mfu])
            summary["throughput"][name] = dict(clips_per_s=args.batch / t, tflops=achieved,
                                               mfu=mfu if peak_tf else None)
        lines += common.md_table(["type", "clips/s", "achieved TFLOP/s", "MFU (bf16 peak "
                                  f"{peak_tf or 'unknown'} TFLOP/s)"], tp_rows)
        lines += ["", "MFU = counted model FLOPs of forward + backward per second / dense bf16 "
                  "peak of the GPU.", ""]
    return lines, summary


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="vit_small_patch16_224")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--tokens", type=int, default=400)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=common.DEFAULT_THREADS)
    p.add_argument("--rows", nargs="*", default=None, help="subset of: " + ", ".join(ROWS))
    p.add_argument("--no-naive", dest="naive", action="store_false",
                   help="skip the straightforward-implementation comparison")
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd steps")
    p.add_argument("--no-gpu", dest="gpu", action="store_false")
    p.add_argument("--gpu_model", default="vit_base_patch16_224")
    p.add_argument("--gpu_size", type=int, default=224)
    p.add_argument("--gpu_batch", type=int, default=8)
    p.add_argument("--gpu_peak_tflops", type=float, default=None,
                   help="dense bf16 peak of the GPU when it is not in the built-in table")
    p.add_argument("--quick", action="store_true", help="seconds-long smoke run")
    p.add_argument("--out", default="train_step", help="results/<out>.md")
    args = p.parse_args(argv)
    args.math_attention = False
    if args.quick:
        args.model, args.frames, args.size, args.batch = "vit_mini_patch16", 8, 64, 2
        args.tokens, args.rounds, args.warmup = 50, 3, 1
        args.gpu_model, args.gpu_size, args.gpu_batch = "vit_mini_patch16", 64, 2
    return args


def main(argv=None) -> str:
    common.setup_logging()
    args = parse_args(argv)
    common.setup_threads(args.threads)
    lines = ["## Training step relative to end2end", ""]
    cpu_lines, cpu_summary = run(args, torch.device("cpu"), bf16=False, title="CPU")
    lines += cpu_lines
    summary = {"cpu": cpu_summary, "gpu": None}
    if args.gpu and torch.cuda.is_available():
        g = argparse.Namespace(**vars(args))
        g.model, g.size, g.batch = args.gpu_model, args.gpu_size, args.gpu_batch
        g.naive, g.math_attention = False, True
        gpu_lines, summary["gpu"] = run(g, torch.device("cuda"), bf16=True, title="GPU (bf16)")
        lines += gpu_lines
    else:
        lines += ["### GPU", "", "Not measured: no GPU available on this machine (throughput, "
                  "model FLOPs utilisation and SDPA against the math path need one).", ""]
    path = common.write_section(args.out, lines, quick=args.quick, summary=summary)
    LOG.info("wrote %s", path)
    return path


if __name__ == "__main__":
    main()
