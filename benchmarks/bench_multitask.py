"""Many tasks on one backbone: one mixed-batch forward pass against K separate models.

A batch of B clips belongs to K tasks (B / K clips each). ``MultiTaskModel`` (models/multitask.py)
runs it in one forward pass of one frozen backbone; the baseline runs each task's own model
(backbone + its prompts and head, scales folded, eval mode) on its task's clips, one model after
another. Both get the same clips and give the same logits (the table shows the largest
difference). The K tasks are APT tasks with different prompt counts and block ranges and linear
probes (``TASKS``), so the mixed pass pads prompts to the largest count present and masks the
padding.

Measured, side by side in one process (interleaved rounds, median of paired ratios):

* time per batch and clips/s of both, and their ratio;
* FLOPs per batch of both (the mixed pass attends over the padded prompt count);
* memory of the models held: parameter and buffer bytes (one backbone + K tasks' prompts and
  heads, against K full models); peak tensor bytes of one batch (those plus the forward's
  allocator peak, replayed from the profiler as ``benchmarks/common.py`` does for training); and
  peak RSS increase of a fresh process that builds only that configuration and runs one batch
  (``VmHWM`` - ``VmRSS`` before building, from ``/proc/self/status``: what the operating system
  saw, allocator caching included).

CPU: ViT-S at 8x112x112 (N = 196 tokens), B = 8 clips, fp32, 2 threads.

    python benchmarks/bench_multitask.py            # the BENCHMARKS.md configuration (~3 min)
    python benchmarks/bench_multitask.py --quick    # seconds: a small model, few rounds
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from typing import List, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # entry point

from benchmarks import common  # noqa: E402  (first: sets OpenMP's wait policy before torch)

import torch  # noqa: E402
from models import (backbone_reference, create_model, flop_counter, load_pretrained,  # noqa: E402
                    save_method)
from models.multitask import MultiTaskModel  # noqa: E402

LOG = common.LOG
# (transfer type, classes, prompt count, first block, last block; None: all blocks), in the
# order the tasks are added; blocks are clipped to the model's depth.
TASKS: List[Tuple[str, int, int, int, object]] = [
    ("apt", 101, 32, 0, None),
    ("apt", 51, 16, 0, 5),
    ("linear", 174, 0, 0, None),
    ("apt", 400, 64, 4, None),
    ("apt", 10, 8, 0, None),
    ("apt", 20, 32, 6, None),
    ("linear", 30, 0, 0, None),
    ("apt", 60, 48, 0, None),
]


def write_checkpoints(args: argparse.Namespace, folder: str) -> Tuple[str, List[str]]:
    """A backbone file and one method file per task (``save_method`` with the run's flags),
    each task's trained tensors random (so nothing is zero) on that backbone."""
    torch.manual_seed(0)
    base = create_model(args.model, num_classes=0, all_frames=args.frames, img_size=args.size)
    backbone = os.path.join(folder, "backbone.pth")
    torch.save({"model": {k: v for k, v in base.state_dict().items()
                          if not k.startswith("fc_norm.")}}, backbone)
    depth, paths = base.depth, []
    for i, (kind, classes, tokens, start, end) in enumerate(TASKS):
        settings = {}
        if kind == "apt":
            end = depth - 1 if end is None else min(int(end), depth - 1)
            settings = dict(prompt_num_tokens=tokens, prompt_start=min(start, end),
                            prompt_end=end, prompt_reparam=True)
        model = create_model(args.model, transfer_type=kind, num_classes=classes,
                             all_frames=args.frames, img_size=args.size, **settings)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.normal_(0, 0.5 if p.dim() > 1 else 1.0)
        flags = dict(model=args.model, transfer_type=kind, num_frames=args.frames,
                     input_size=args.size, tubelet_size=2, use_mean_pooling=True,
                     use_learnable_pos_emb=False, nb_classes=classes, **settings)
        path = os.path.join(folder, f"task{i}.pth")
        save_method(path, model, backbone_reference(backbone), args=flags)
        paths.append(path)
    return backbone, paths


def separate_models(paths: List[str]) -> List[torch.nn.Module]:
    """Each task's own model: its backbone (loaded from the file its checkpoint names), its
    tensors, scales folded, eval mode."""
    models = []
    for path in paths:
        flags = torch.load(path, weights_only=True)["args"]
        settings = {k: v for k, v in flags.items() if k.startswith("prompt_")}
        m = create_model(flags["model"], transfer_type=flags["transfer_type"],
                         num_classes=flags["nb_classes"], all_frames=flags["num_frames"],
                         img_size=flags["input_size"], **settings)
        load_pretrained(m, path)  # the backbone it records, then its own tensors
        m.transfer.fold(m)
        models.append(m.eval().requires_grad_(False))
    return models


def mixed_batch(k: int, batch: int, args: argparse.Namespace
                ) -> Tuple[torch.Tensor, torch.Tensor]:
    """``batch`` random clips and their task ids, ``i % k`` for clip ``i``."""
    torch.manual_seed(1)
    clips = torch.randn(batch, 3, args.frames, args.size, args.size)
    return clips, torch.arange(batch) % k  # task i % k: B / K clips per task, interleaved


def run_separate(models: List[torch.nn.Module], clips: torch.Tensor, ids: torch.Tensor
                 ) -> List[torch.Tensor]:
    """The baseline: each task's model on its task's clips, one after another."""
    return [m(clips[ids == t]) for t, m in enumerate(models)]


def rss_child(args: argparse.Namespace) -> None:
    """In a fresh process: build one configuration, run one batch, print the peak RSS increase."""
    common.setup_threads(args.threads)
    with open(os.path.join(args.workdir, "paths.json")) as f:
        paths = json.load(f)[:args.k]
    clips, ids = mixed_batch(args.k, args.batch, args)
    before = _status_bytes("VmRSS")
    with torch.inference_mode():
        if args.rss_child == "multi":
            MultiTaskModel(paths)(clips, ids)
        else:
            run_separate(separate_models(paths), clips, ids)
    print(json.dumps({"rss_increase": _status_bytes("VmHWM") - before}))


def _status_bytes(field: str) -> int:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of this process, in bytes.

    Not ``resource.getrusage().ru_maxrss``: Linux carries the peak of the address space an
    ``execve`` replaces into it, so a child started by the benchmark would report the parent's
    resident size at fork time (all the models it holds) whenever that is larger.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # kB
    raise RuntimeError(f"/proc/self/status has no {field} line")


def peak_rss_increase(args: argparse.Namespace, kind: str, k: int) -> float:
    cmd = [sys.executable, os.path.abspath(__file__), "--rss-child", kind, "--k", str(k),
           "--workdir", args.workdir, "--model", args.model, "--frames", str(args.frames),
           "--size", str(args.size), "--batch", str(args.batch), "--threads", str(args.threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=common.ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])["rss_increase"]


def count_flops(fn) -> int:
    """FLOPs (2 per multiply-add) of one call of ``fn``."""
    with torch.inference_mode(), flop_counter() as counter:
        fn()
    return counter.get_total_flops()


def main(argv=None) -> str:
    common.setup_logging()
    args = parse_args(argv)
    if args.rss_child:
        rss_child(args)
        return ""
    common.setup_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        args.workdir = folder
        backbone, paths = write_checkpoints(args, folder)
        with open(os.path.join(folder, "paths.json"), "w") as f:
            json.dump(paths, f)
        return measure(args, paths)


def measure(args: argparse.Namespace, paths: List[str]) -> str:
    """Build, check, count and time every K of ``args.ks`` on the task files ``paths``;
    write results/<out>.md and .json and return the .md path."""
    fns, checks, memory, flops = {}, {}, {}, {}
    for k in args.ks:
        LOG.info("K = %d: building one multi-task model and %d separate models", k, k)
        multi = MultiTaskModel(paths[:k])
        separate = separate_models(paths[:k])
        clips, ids = mixed_batch(k, args.batch, args)
        with torch.inference_mode():
            mixed = multi.forward_grouped(clips, ids)
            own = run_separate(separate, clips, ids)
        checks[k] = max((mixed[t][1] - own[t]).abs().max().item() for t in range(k))
        flops[k] = (count_flops(lambda: multi(clips, ids)),
                    count_flops(lambda: run_separate(separate, clips, ids)))

        def call_multi(m=multi, c=clips, i=ids):
            with torch.inference_mode():
                m(c, i)

        def call_separate(ms=separate, c=clips, i=ids):
            with torch.inference_mode():
                run_separate(ms, c, i)

        held = (common.tensor_bytes(list(multi.parameters()) + list(multi.buffers())),
                sum(common.tensor_bytes(list(m.parameters()) + list(m.buffers()))
                    for m in separate))
        peak = (held[0] + common.cpu_step_peak_bytes(call_multi),
                held[1] + common.cpu_step_peak_bytes(call_separate))
        rss = (float("nan"), float("nan"))
        if args.rss:
            LOG.info("K = %d: peak RSS of each configuration in a fresh process", k)
            rss = (peak_rss_increase(args, "multi", k), peak_rss_increase(args, "separate", k))
        memory[k] = dict(held=held, peak=peak, rss=rss)
        fns[f"multi K={k}"], fns[f"separate K={k}"] = call_multi, call_separate

    LOG.info("timing %d configurations x %d rounds, interleaved", len(fns), args.rounds)
    timings = common.interleaved(fns, rounds=args.rounds, warmup=args.warmup)
    judge = timings.reliable_clock
    config = (f"{args.model}, clip {args.frames}x{args.size}x{args.size}, B = {args.batch} clips "
              f"per batch split evenly over K tasks, fp32, {args.threads} threads, "
              f"{args.rounds} interleaved rounds after {args.warmup} warm-up calls each")
    tasks = ", ".join(f"{kind} P={p}" if kind == "apt" else kind
                      for kind, _, p, _, _ in TASKS[:max(args.ks)])
    lines = ["## Many tasks on one backbone (multi-task inference)", ""]
    lines += common.header_lines(common.machine_info(), timings.load)
    lines += [f"- model: {config}",
              f"- tasks, in the order added (task ids): {tasks}; APT block ranges differ "
              f"(`TASKS` in `benchmarks/bench_multitask.py`); APT scales folded",
              f"- ratios judged on the **{judge}** clock" + (
                  " (other processes held cores during the run, see common.py)"
                  if judge == "cpu" else ""), ""]
    mib = 2 ** 20
    rows, summary = [], {"judge": judge, "config": config, "rows": {}}
    for k in args.ks:
        m, s = f"multi K={k}", f"separate K={k}"
        t_m, t_s = common.median(timings.wall[m]), common.median(timings.wall[s])
        speed = {c: common.ratio(timings.clock(c), s, m) for c in ("wall", "cpu")}
        lo, hi = common.ratio_iqr(timings.clock(judge), s, m)
        rows.append([k, args.batch // k, 1e3 * t_m, 1e3 * t_s, args.batch / t_m,
                     args.batch / t_s, f"{speed[judge]:.3f}x", f"{lo:.2f} .. {hi:.2f}",
                     f"{speed['wall' if judge == 'cpu' else 'cpu']:.3f}x",
                     flops[k][0] / 1e9, flops[k][1] / 1e9, f"{checks[k]:.1e}"])
        summary["rows"][str(k)] = dict(
            ms_multi=1e3 * t_m, ms_separate=1e3 * t_s, speedup_wall=speed["wall"],
            speedup_cpu=speed["cpu"], gflops_multi=flops[k][0] / 1e9,
            gflops_separate=flops[k][1] / 1e9, max_abs_diff=checks[k],
            held_mib=[b / mib for b in memory[k]["held"]],
            peak_mib=[b / mib for b in memory[k]["peak"]],
            rss_mib=[b / mib for b in memory[k]["rss"]])
    other = "wall" if judge == "cpu" else "cpu"
    lines += ["### Throughput", ""]
    lines += common.md_table(
        ["K tasks", "clips per task", "one pass: ms/batch (wall)", "K models: ms/batch (wall)",
         "one pass: clips/s", "K models: clips/s", f"speed-up, K models / one pass ({judge})",
         f"IQR ({judge})", f"speed-up ({other})", "one pass: GFLOPs/batch",
         "K models: GFLOPs/batch", "max abs logit difference"], rows)
    lines += ["", "Speed-up = median over rounds of (time of the K models one after another) / "
              "(time of the one mixed pass), paired per round; above 1 the mixed pass is faster. "
              "ms and clips/s are medians of the wall clock. GFLOPs count 2 per multiply-add; the "
              "mixed pass attends over the largest prompt count present in each block (padding "
              "masked), the separate models over their own.", ""]
    mem_rows = []
    for k in args.ks:
        held, peak, rss = memory[k]["held"], memory[k]["peak"], memory[k]["rss"]
        mem_rows.append([k, held[0] / mib, held[1] / mib, held[1] / held[0], peak[0] / mib,
                         peak[1] / mib, rss[0] / mib, rss[1] / mib])
    lines += ["### Memory", ""]
    lines += common.md_table(
        ["K tasks", "one backbone: params+buffers MiB", "K models: params+buffers MiB",
         "ratio", "one backbone: peak tensor MiB", "K models: peak tensor MiB",
         "one backbone: peak RSS increase MiB", "K models: peak RSS increase MiB"], mem_rows)
    lines += ["", "params+buffers: bytes of every parameter and buffer of the models held (the "
              "multi-task model: one backbone, the prompt tables, K pooling norms and heads; the "
              "baseline: K full models). Peak tensor: those plus the most tensor bytes alive at "
              "once during one batch, replayed from the allocator events of "
              "`torch.profiler(profile_memory=True)` (the CPU equivalent of "
              "`torch.cuda.max_memory_allocated`). Peak RSS increase: a fresh process builds only "
              "that configuration (from the same files) and runs one batch; its peak resident size "
              "(`VmHWM`) minus the resident size before building, so it includes what building "
              "costs (random initialisation before loading, the file read) and what the allocator keeps; "
              "n/a with `--no-rss`.", ""]
    path = common.write_section(args.out, lines, quick=args.quick, summary=summary)
    LOG.info("wrote %s", path)
    return path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="vit_small_patch16_224")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--batch", type=int, default=8, help="clips per mixed batch (divisible by K)")
    p.add_argument("--ks", type=int, nargs="*", default=[1, 2, 4, 8],
                   help=f"task counts K (at most {len(TASKS)})")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=common.DEFAULT_THREADS)
    p.add_argument("--no-rss", dest="rss", action="store_false",
                   help="skip the peak-RSS measurement (one fresh process per configuration)")
    p.add_argument("--quick", action="store_true", help="seconds-long smoke run")
    p.add_argument("--out", default="multitask", help="results/<out>.md")
    # Internal: one peak-RSS measurement in a fresh process.
    p.add_argument("--rss-child", choices=["multi", "separate"], default=None,
                   help=argparse.SUPPRESS)
    p.add_argument("--k", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--workdir", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.model, args.frames, args.size = "vit_mini_patch16", 4, 32
        args.rounds, args.warmup = 3, 1
    bad = [k for k in args.ks if not 1 <= k <= len(TASKS) or args.batch % k]
    if bad:
        p.error(f"--ks {bad}: each K must be in 1..{len(TASKS)} and divide --batch {args.batch}")
    return args


if __name__ == "__main__":
    main()
