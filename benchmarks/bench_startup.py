"""Fixed cost of the command lines (not a test; the table goes to BENCHMARKS.md, "Start-up").

Measured, each command in a fresh process (``subprocess``), medians over ``--repeats`` runs,
commands interleaved round by round so a busy machine slows all alike:

* ``--help`` of every command line (``command_lines``: the ``run_*.py`` scripts and each
  ``tools/*.py`` and ``benchmarks/*.py`` module with a ``__main__`` block): wall time and peak
  RSS (``os.wait4``'s ``ru_maxrss`` of that child), and which heavy libraries the process had
  imported once its parser was built;
* a short fine-tuning run on the demo world sizes (``vit_mini_patch8``, 32x32, 8 frames, the
  demo backbone, a tiny data set of ``tools/make_synthetic.py``): one epoch and two epochs, both
  from the command line. The second epoch's time is the per-epoch cost, so the fixed cost of a
  run (process start, imports, model build and checkpoint load, data set build, the first
  step's warm-up, the final test) is ``2 * T(1 epoch) - T(2 epochs)``; the time per training step
  is the per-epoch cost over the steps of an epoch;
* the imports a training run makes before its first step (``import finetuning``), alone, and
  where a run's start goes, step by step in one fresh process (``STAGES``): ``import torch``,
  the timm modules a run uses (``timm.layers``, ``timm.loss``, ``timm.utils``, ``timm.data``),
  the rest of ``import finetuning``, building the APT model, loading the demo backbone.

This process imports nothing heavy before its children have run: Linux hands a forked child its
parent's peak RSS as its own starting ``ru_maxrss``, so a parent holding torch would report
torch's memory for every command.

Usage::

    python benchmarks/bench_startup.py --out benchmarks/results/startup.md
    python benchmarks/bench_startup.py --root /path/to/other/checkout   # measure another commit
"""
from __future__ import annotations

import argparse
import ast
import glob
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # entry point

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = ("torch", "timm", "decord", "deepspeed", "matplotlib", "transformers")
logger = logging.getLogger("bench_startup")

# A parser is built and the heavy libraries it pulled in are listed (what --help costs).
PROBE = ("import runpy, sys; sys.argv = [{path!r}, '--help']\n"
         "try:\n    runpy.run_path({path!r}, run_name='__main__')\n"
         "except SystemExit:\n    pass\n"
         "print('HEAVY', ','.join(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)\n")

# The run: the demo world's sizes, a tiny data set, CPU, two transfer types.
RUN_FLAGS = ["--model", "vit_mini_patch8", "--data_set", "custom", "--nb_classes", "4",
             "--batch_size", "4", "--batch_size_val", "8", "--input_size", "32",
             "--short_side_size", "32", "--num_frames", "8", "--sampling_rate", "2",
             "--test_num_segment", "1", "--test_num_crop", "1", "--lr", "1e-3",
             "--warmup_epochs", "0", "--num_workers", "0", "--device", "cpu", "--seed", "0",
             "--no_auto_resume", "--log_every", "1000", "--disable_eval_during_finetuning"]
# A run's start, stage by stage, in one process; prints one JSON line of cumulative seconds.
# The timm modules are those a run imports: models/vit.py's layers, engine.py's losses and
# ModelEmaV3, the data pipeline's RandAugment and Mixup (timm.data).
STAGES = """import json, time
t = {{"start": time.perf_counter()}}
import torch
t["torch"] = time.perf_counter()
import timm.layers, timm.loss, timm.utils, timm.data
t["timm"] = time.perf_counter()
import finetuning
t["finetuning"] = time.perf_counter()
from models import create_model, load_pretrained
model = create_model("vit_mini_patch8", num_classes=4, all_frames=8, img_size=32,
                     transfer_type="apt")
t["build"] = time.perf_counter()
load_pretrained(model, {backbone!r})
t["load"] = time.perf_counter()
print(json.dumps({{k: v - t["start"] for k, v in t.items()}}))
"""
BACKBONE = os.path.join("assets", "demo_backbone", "pretrain_videomae_mini_patch8.pth")


def timed(cmd: Sequence[str], cwd: str) -> Tuple[float, float, str]:
    """(wall seconds, peak RSS in MB, stderr) of one command in a fresh process."""
    start = time.perf_counter()
    proc = subprocess.Popen(list(cmd), cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    return wall, usage.ru_maxrss / 1024.0, err  # ru_maxrss is in KiB on Linux


def command_lines(root: str) -> List[str]:
    """Every command line of checkout ``root`` (paths relative to it): the ``run_*.py`` scripts
    and each ``tools/*.py`` / ``benchmarks/*.py`` module with an ``if __name__ == "__main__":``
    block (library modules such as ``tools/worlds.py`` have none)."""
    found = sorted(os.path.basename(p) for p in glob.glob(os.path.join(root, "run_*.py")))
    for folder in ("tools", "benchmarks"):
        for path in sorted(glob.glob(os.path.join(root, folder, "*.py"))):
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read(), filename=path)
            if any(isinstance(stmt, ast.If) and "__main__" in ast.unparse(stmt.test)
                   for stmt in tree.body):
                found.append(f"{folder}/{os.path.basename(path)}")
    return found


def measure_help(root: str, repeats: int) -> Dict[str, Dict[str, object]]:
    """Median wall time and peak RSS of ``--help`` per command, and its heavy imports."""
    commands = command_lines(root)
    walls: Dict[str, List[float]] = {c: [] for c in commands}
    rss: Dict[str, List[float]] = {c: [] for c in commands}
    heavy: Dict[str, str] = {}
    for _ in range(repeats):
        for c in commands:
            wall, mb, _ = timed([sys.executable, c, "--help"], root)
            walls[c].append(wall)
            rss[c].append(mb)
    for c in commands:
        _, _, err = timed([sys.executable, "-c", PROBE.format(path=c, heavy=HEAVY)], root)
        heavy[c] = next((line.split(" ", 1)[1] if " " in line else "" for line in
                         err.splitlines() if line.startswith("HEAVY")), "?") or "none"
    return {c: {"wall": statistics.median(walls[c]), "rss": statistics.median(rss[c]),
                "heavy": heavy[c]} for c in commands}


def measure_run(root: str, repeats: int, work: str) -> Dict[str, float]:
    """Fixed cost and per-step time of a short fine-tuning run (seconds, medians)."""
    data = os.path.join(work, "data")
    subprocess.run([sys.executable, os.path.join("tools", "make_synthetic.py"), "--out", data,
                    "--num_classes", "4", "--videos_per_class", "10", "--num_frames", "24",
                    "--size", "40", "--seed", "0"], cwd=root, check=True, capture_output=True)
    with open(os.path.join(data, "train.csv")) as f:
        steps = sum(1 for line in f if line.strip()) // 4  # --batch_size 4, drop_last
    t1: List[float] = []
    t2: List[float] = []
    imports: List[float] = []
    starts: List[float] = []
    stages: Dict[str, List[float]] = {}
    for i in range(repeats):
        for epochs, out in ((1, t1), (2, t2)):
            run_dir = os.path.join(work, f"run{epochs}_{i}")
            cmd = [sys.executable, "run_class_apt.py", *RUN_FLAGS, "--transfer_type", "apt",
                   "--epochs", str(epochs), "--data_path", data, "--finetune",
                   os.path.join(root, BACKBONE), "--output_dir", run_dir]
            out.append(timed(cmd, root)[0])
        module = "finetuning" if os.path.exists(os.path.join(root, "finetuning.py")) \
            else "run_class_apt"
        imports.append(timed([sys.executable, "-c", f"import {module}"], root)[0])
        starts.append(timed([sys.executable, "-c", "pass"], root)[0])
        probe = subprocess.run([sys.executable, "-c", STAGES.format(
            backbone=os.path.join(root, BACKBONE))], cwd=root, check=True, capture_output=True,
            text=True)
        marks = json.loads(probe.stdout.strip().splitlines()[-1])
        order = ["start", "torch", "timm", "finetuning", "build", "load"]
        for before, after in zip(order, order[1:]):
            stages.setdefault(after, []).append(marks[after] - marks[before])
    one, two = statistics.median(t1), statistics.median(t2)
    epoch = max(two - one, 0.0)
    return {"one_epoch": one, "two_epochs": two, "per_epoch": epoch,
            "per_step": epoch / max(steps, 1), "steps": float(steps), "fixed": one - epoch,
            "imports": statistics.median(imports), "python": statistics.median(starts),
            **{f"stage_{k}": statistics.median(v) for k, v in stages.items()}}


def report(root: str, helps: Dict[str, Dict[str, object]], run: Dict[str, float],
           repeats: int, machine: List[str]) -> str:
    """The Markdown table of both measurements, under the machine's description."""
    lines = [f"Start-up cost (benchmarks/bench_startup.py, medians of {repeats} runs each, "
             f"checkout {root})", "", *machine, ""]
    if helps:
        lines += ["| command | `--help` wall (s) | peak RSS (MB) | heavy modules imported |",
                  "|---|---:|---:|---|"]
    for c, r in helps.items():
        lines.append(f"| `{c}` | {r['wall']:.2f} | {r['rss']:.0f} | {r['heavy']} |")
    if not run:
        return "\n".join(lines) + "\n"
    lines += ["", "Short fine-tuning run (APT, vit_mini_patch8, 32x32, 8 frames, CPU, "
              f"{int(run['steps'])} steps per epoch, final test on the test split):", "",
              "| quantity | seconds |", "|---|---:|",
              f"| 1 epoch, whole command | {run['one_epoch']:.2f} |",
              f"| 2 epochs, whole command | {run['two_epochs']:.2f} |",
              f"| fixed cost of a run (2 x 1 epoch - 2 epochs) | {run['fixed']:.2f} |",
              f"| of which: process start + imports of the run's modules | {run['imports']:.2f} |",
              f"| time per training step | {run['per_step']:.3f} |", "",
              "Where a run's start goes (one process, stage by stage):", "",
              "| stage | seconds |", "|---|---:|",
              f"| python start (`python -c pass`) | {run['python']:.2f} |",
              f"| `import torch` | {run['stage_torch']:.2f} |",
              f"| the timm modules a run uses (`timm.layers`, `.loss`, `.utils`, `.data`) | "
              f"{run['stage_timm']:.2f} |",
              f"| the rest of `import finetuning` (the project, PyAV, ...) | "
              f"{run['stage_finetuning']:.2f} |",
              f"| build the APT model (`vit_mini_patch8`) | {run['stage_build']:.3f} |",
              f"| load the demo backbone | {run['stage_load']:.3f} |"]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] = ()) -> str:
    """Measure and write the table; returns it."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default=ROOT, help="checkout to measure (default: this one)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--run_repeats", type=int, default=3)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--help_only", action="store_true", help="measure --help only, not the run")
    which.add_argument("--run_only", action="store_true", help="measure the run only, not --help")
    p.add_argument("--out", default="", help="write the Markdown table here")
    args = p.parse_args(list(argv) or None)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = os.path.abspath(args.root)
    helps = {} if args.run_only else measure_help(root, args.repeats)
    run: Dict[str, float] = {}
    if not args.help_only:
        with tempfile.TemporaryDirectory() as work:
            run = measure_run(root, args.run_repeats, work)
    # The project's helpers import torch: only now, once every child has been measured.
    from utils.machine import info_lines, machine_info
    from utils.outputs import atomic_file
    table = report(root, helps, run, args.run_repeats if args.run_only else args.repeats,
                   info_lines(machine_info()))
    if args.out:
        with atomic_file(args.out, "w") as f:
            f.write(table)
    logger.info("%s", table)
    return table


if __name__ == "__main__":
    main(sys.argv[1:])
