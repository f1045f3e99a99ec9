"""Run every benchmark and write BENCHMARKS.md at the repository root (``make bench``).

Each benchmark runs in its own process (fresh allocator, thread pool and compile caches), writes
``benchmarks/results/<name>.md`` and a ``<name>.json`` of its key numbers; this script then
writes BENCHMARKS.md: how to read it, the targets with their verdicts, the closing notes
(``benchmarks/notes.md``), and every ``benchmarks/results/*.md`` section, including those other
benchmarks drop there (``data.md``).

    python benchmarks/run_all.py                 # ~13-18 minutes on a 2-core CPU
    python benchmarks/run_all.py --quick         # smoke run; writes to a temporary folder only
    python benchmarks/run_all.py --compile all   # compiled rows in the latency table too
    python benchmarks/run_all.py --only latency  # re-run one benchmark, then rebuild the file
"""
from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import subprocess
import sys
import time
from typing import List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # entry point

# benchmarks.common (torch at its top) is imported once the flags are parsed, so --help answers
# without torch (docs/CONVENTIONS.md, "Entry points"); the benchmarks themselves run in their
# own processes.
LOG = logging.getLogger("benchmarks")  # benchmarks.common's logger
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BENCHES = {"cost": "bench_cost.py", "latency": "bench_latency.py",
           "train_step": "bench_train_step.py", "multitask": "bench_multitask.py"}
ORDER = ["cost", "latency", "train_step"]  # then every other results/*.md, by name
COMPILED = ("latency", "train_step")  # the benchmarks that take --compile


def run_bench(name: str, quick: bool, compile_: str) -> float:
    cmd = [sys.executable, os.path.join(HERE, BENCHES[name]), "--out", name]
    if quick:
        cmd.append("--quick")
    if (compile_ == "all" and name in COMPILED) or (compile_ == "train" and name == "train_step"):
        cmd.append("--compile")
    LOG.info("running %s", " ".join(cmd[1:]))
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    return time.perf_counter() - start


def _load(folder: str, name: str) -> Optional[dict]:
    path = os.path.join(folder, f"{name}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _pct(v: float) -> str:
    return f"{100 * v:+.1f}%"


def targets_table(folder: str) -> List[str]:
    """One row per target (BENCHMARKS.md, 'Targets'), with the measured numbers and a verdict."""
    from benchmarks.common import md_table  # after the flags (entry point): see the top
    lat, train = _load(folder, "latency"), _load(folder, "train_step")
    rows = []
    if lat and lat.get("cpu"):
        cpu, judge = lat["cpu"]["rows"], lat["cpu"]["judge"]
        key = "overhead_" + judge
        for name, label in (("prompt (APT)", "APT"), ("vpt deep", "VPT-deep")):
            if name in cpu:
                r = cpu[name]
                verdict = ("met" if r["quotient"] <= 1.5 else "MISSED") if label == "APT" \
                    else "reported"
                rows.append([f"{label} latency overhead <= 1.5x FLOP overhead (CPU, "
                             f"{judge} clock)", f"latency {_pct(r[key])} vs FLOPs "
                             f"{_pct(r['flop_overhead'])}: {r['quotient']:.2f}x", verdict])
    if lat and lat.get("gpu"):
        r = lat["gpu"]["rows"].get("prompt (APT)")
        if r:
            rows.append(["APT latency overhead <= 1.5x FLOP overhead (GPU, bf16)",
                         f"latency {_pct(r['overhead_wall'])} vs FLOPs "
                         f"{_pct(r['flop_overhead'])}: {r['quotient']:.2f}x",
                         "met" if r["quotient"] <= 1.5 else "MISSED"])
    else:
        rows.append(["GPU latency (ViT-B 16x224, bf16)", "not measured: no GPU available", "-"])
    if train and train.get("cpu"):
        cpu = train["cpu"]
        judge = cpu["judge"]
        for name, r in cpu["rows"].items():
            if name == "end2end" or name.endswith("(compiled)"):
                continue
            measured = r["measured_" + judge]
            rows.append([f"step time / end2end within 10% of FLOP ratio: {name} (CPU, {judge} "
                         "clock)", f"{measured:.3f} vs expected {r['expected']:.3f} "
                         f"(limit {1.1 * r['expected']:.3f})",
                         "met" if r["quotient"] <= 1.10 else "MISSED"])
        apt = cpu["rows"].get("prompt (APT)")
        if apt and apt.get("peak_ratio") is not None:
            rows.append(["APT peak memory <= end2end's (CPU)",
                         f"{apt['peak_mib']:.0f} MiB = {apt['peak_ratio']:.2f}x end2end",
                         "met" if apt["peak_ratio"] <= 1.0 else "MISSED"])
        for name, r in cpu.get("naive", {}).items():
            if "gradients" in name:
                rows.append(["APT step <= 0.7x a straightforward implementation (CPU, "
                             f"{judge} clock)", f"{r[judge]:.3f}x (FLOPs: {r['flop_ratio']:.3f}x)",
                             "met" if r[judge] <= 0.7 else "MISSED"])
                compiled = r.get("compiled_" + judge)
                if compiled is not None and compiled == compiled:
                    rows.append(["same, our model through torch.compile", f"{compiled:.3f}x",
                                 "met" if compiled <= 0.7 else "MISSED"])
    if train and train.get("gpu"):
        tp = train["gpu"].get("throughput", {}).get("prompt (APT)")
        if tp:
            mfu = f", MFU {100 * tp['mfu']:.1f}%" if tp.get("mfu") is not None else ""
            rows.append(["APT training throughput (GPU, ViT-B 16x224, bf16)",
                         f"{tp['clips_per_s']:.1f} clips/s{mfu}", "reported"])
    else:
        rows.append(["GPU training throughput, MFU, SDPA vs math", "not measured: no GPU "
                     "available", "-"])
    return md_table(["target", "measured", "verdict"], rows)


def write_benchmarks_md(folder: str, path: str, durations: dict) -> None:
    sections = [os.path.join(folder, f"{n}.md") for n in ORDER]
    others = sorted(p for p in glob.glob(os.path.join(folder, "*.md")) if p not in sections)
    from benchmarks.common import machine_info  # after the flags (entry point): see the top
    info = machine_info()
    lines = ["# Benchmarks", "",
             "Written by `python benchmarks/run_all.py` (`make bench`); every table below comes "
             "from that run and names its machine, versions and date. Scripts: "
             "`benchmarks/bench_cost.py` (parameters, FLOPs), `bench_latency.py` (inference "
             "latency), `bench_train_step.py` (training step, memory, naive baseline), "
             "`bench_multitask.py` (many tasks on one backbone); each runs "
             "standalone, and with `--quick` in seconds.", "",
             "How the numbers are taken (details in `benchmarks/common.py`): every comparison is "
             "measured in one process, interleaved (A, B, C, A, B, C, ...) after warm-up; a ratio "
             "is the median over rounds of the per-round paired ratio; `torch.set_num_threads(2)`"
             " on CPU. Each call is timed on the wall clock and on the process's CPU clock. On a "
             "shared machine where other processes hold cores, the wall clock of a 2-thread run "
             "measures the scheduler (each OpenMP region waits for a core); the tables then judge "
             "targets on the CPU-time ratios, say so, and show both. Timings are never asserted "
             "in tests.", "",
             f"Assembled on: {info['cpu']}; GPU: {info['gpu']}; {info['versions']}; "
             f"{info['date']}. Each section below names the machine, versions, date and code "
             "revision of its own measurement.", ""]
    if durations:
        lines += ["Benchmark durations: " + ", ".join(f"{k} {v:.0f} s"
                                                       for k, v in durations.items()), ""]
    lines += ["## Targets", ""] + targets_table(folder) + [""]
    notes = os.path.join(HERE, "notes.md")
    if os.path.exists(notes):
        with open(notes) as f:
            lines += [f.read().rstrip(), ""]
    for section in sections + others:
        if os.path.exists(section):
            with open(section) as f:
                lines += [f.read().rstrip(), ""]
    with open(path, "w") as f:
        f.write("\n".join(lines).rstrip() + "\n")


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="smoke run: small models; results go to a temporary folder")
    p.add_argument("--compile", choices=["none", "train", "all"], default="train",
                   help="which benchmarks add torch.compile'd rows (default: the training step, "
                        "about a minute of compiling; 'all' adds the latency rows, ~2 more)")
    p.add_argument("--only", nargs="*", choices=list(BENCHES), default=None,
                   help="run only these benchmarks (the others' last results are kept)")
    p.add_argument("--no-run", action="store_true",
                   help="only rebuild BENCHMARKS.md from the existing results")
    args = p.parse_args(argv)
    from benchmarks import common  # after the flags (entry point): torch, the machine's description
    common.setup_logging()
    durations = {}
    if not args.no_run:
        for name in args.only or list(BENCHES):
            durations[name] = run_bench(name, args.quick, args.compile)
    folder = common.results_dir(args.quick)
    durations_file = os.path.join(folder, "durations.json")
    if os.path.exists(durations_file):  # keep the durations of benchmarks not re-run now
        with open(durations_file) as f:
            durations = {**json.load(f), **durations}
    with open(durations_file, "w") as f:
        json.dump(durations, f, indent=1)
    out = os.path.join(folder, "BENCHMARKS.md") if args.quick else \
        os.path.join(ROOT, "BENCHMARKS.md")
    write_benchmarks_md(folder, out, durations)
    LOG.info("wrote %s", out)
    return out


if __name__ == "__main__":
    main()
