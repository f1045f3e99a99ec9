"""The stages of the end-to-end demo (``make demo``, ``tools/demo.py``, which imports this module
once its flags are parsed): adapt a frozen pre-trained video ViT with few parameters.

Stages, all on the built-in synthetic data set (classes told apart only by motion):

1. generate a small labelled data set (``tools/make_synthetic.py``);
2. take the committed demo backbone (``assets/demo_backbone``: VideoMAE pre-training of
   ``vit_mini_patch8`` on unlabelled synthetic videos, made by ``make demo-backbone``), or with
   ``--pretrain`` redo that pre-training first;
3. adapt it (``run_class_apt.py``): linear probing, VPT-deep, APT, adapters, LoRA and full
   fine-tuning, plus linear probing of a randomly initialised backbone (what pre-training is
   worth), each with the multi-view test on held-out videos;
4. one table: method, trainable parameters, GFLOPs per clip, top-1, top-5, wall time — printed,
   written as Markdown (``results.md``) and JSON, and plotted (``accuracy_vs_params.png``), with
   the targets of the comparison checked. TensorBoard logs of every stage are in ``tensorboard/``.

Every stage is a subprocess running the command a user would type; the commands are logged.
Hyperparameters were chosen on the ``val`` split (``--select`` reruns that search); the test
split is only read by the final multi-view test of each run.

Long on purpose: the demo is one script with its stages in order (data, pre-training,
adaptation, the table and its targets, plots), so a reader follows it top to bottom.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, replace
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from datasets.synthetic import split_counts
from models import cost_report, create_model, file_sha256
from models.transfer import setting_fields
from tools.plots import PlotPoint, accuracy_vs_params
from tools.worlds import (BACKBONE_DIR, BACKBONE_FILE, HEADROOM_WORLDS, DemoConfig, Method,
                          committed_backbone, common_flags, make_data, methods, world_config)
from utils.logs import read_json_lines
from utils.machine import info_lines, machine_info

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
logger = logging.getLogger("demo")


class DemoFlagError(ValueError):
    """A flag of ``tools/demo.py`` names a world or a row that does not exist."""


def run(cmd: Sequence[str], log_path: str) -> float:
    """Run one stage, its output teed to ``log_path``; returns wall seconds; raises on failure."""
    logger.info("$ %s", " ".join(cmd))
    start = time.time()
    with open(log_path, "w") as log:
        # One compute thread: on a 2-core machine the DataLoader workers need the other core
        # (measured: pre-training 194 s with the default threads, 53 s with one).
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(list(cmd), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        with open(log_path) as f:
            tail = "".join(f.readlines()[-30:])
        raise RuntimeError(f"stage failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                           f"last lines of {log_path}:\n{tail}")
    return time.time() - start


def read_log(log_txt: str) -> List[Dict]:
    """The records of a run's ``log.txt`` (a bad line is skipped with a warning naming it)."""
    return read_json_lines(log_txt)


def final_metrics(log_txt: str, rows: Optional[List[Dict]] = None) -> Dict[str, float]:
    """The last JSON line of a run's log.txt (or of its already read ``rows``) that carries
    "Final top-1"."""
    found = [row for row in (read_log(log_txt) if rows is None else rows) if "Final top-1" in row]
    if not found:
        raise RuntimeError(f"{log_txt} has no line with 'Final top-1'")
    return found[-1]


# ------------------------------------------------------------------------------ pre-training
def pretrain(cfg: DemoConfig, out: str, labelled: str, seed: int) -> Tuple[str, float]:
    """VideoMAE pre-training on unlabelled synthetic videos, with a k-NN probe on ``labelled``
    (its train videos as references, its val videos as queries; its test videos never).

    Returns:
        ``(path of the model-only checkpoint, seconds)``.
    """
    unlabelled = os.path.join(out, "pretrain_data")
    make_data(cfg, unlabelled, cfg.pretrain_videos_per_class, cfg.pretrain_seed, {"train": 1.0})
    run_dir = os.path.join(out, "pretrain")
    # A fresh run every time: an earlier run's checkpoint-last.pth in the folder would otherwise
    # be resumed (run_mae_pretraining.py auto-resumes by default).
    shutil.rmtree(run_dir, ignore_errors=True)
    seconds = run([sys.executable, "run_mae_pretraining.py", "--model", cfg.pretrain_model,
                   "--data_path", unlabelled, "--mask_type", cfg.mask_type,
                   "--mask_ratio", str(cfg.mask_ratio), "--epochs", str(cfg.pretrain_epochs),
                   "--warmup_epochs", str(min(cfg.pretrain_warmup_epochs, cfg.pretrain_epochs)),
                   "--batch_size", str(cfg.pretrain_batch), "--lr", str(cfg.pretrain_lr),
                   "--opt_betas", "0.9", "0.95", "--cache_videos",
                   # Raw-pixel targets: per-patch normalisation would ask the decoder to
                   # reproduce the noise of the flat background patches, amplified.
                   "--normlize_target", "False",
                   "--probe_data_path", labelled,
                   "--probe_freq", str(max(1, cfg.pretrain_epochs // 20)), "--probe_k", "20",
                   "--save_ckpt_freq", str(max(cfg.pretrain_epochs, 1)),
                   "--output_dir", run_dir,
                   "--log_dir", os.path.join(out, "tensorboard", "pretrain"),
                   *common_flags(cfg, seed)], os.path.join(out, "logs", "pretrain.log"))
    last = torch.load(os.path.join(run_dir, "checkpoint-last.pth"), map_location="cpu",
                      weights_only=True)
    # Model weights only (VideoMAE's pre-training layout): no optimizer state, a few MB.
    path = os.path.join(run_dir, "backbone.pth")
    torch.save({"model": last["model"]}, path)
    plot_knn(read_log(os.path.join(run_dir, "log.txt")), os.path.join(out, "knn_probe.png"),
             100.0 / cfg.num_classes)
    return path, seconds


def plot_knn(log_rows: List[Dict], path: str, chance: float) -> None:
    """k-NN top-1 on held-out labelled videos, and the reconstruction loss, against epochs."""
    import matplotlib  # slow to import, and only --pretrain/--build_backbone plot this
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after the backend is chosen

    probe = [(r["epoch"] + 1, r["knn_top1"]) for r in log_rows if "knn_top1" in r]
    loss = [(r["epoch"] + 1, r["train_loss"]) for r in log_rows if "train_loss" in r]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    if probe:
        ax.plot(*zip(*probe), marker="o", color="tab:blue", label="k-NN top-1 (val)")
    ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label="chance")
    ax.set_ylim(0, 100)
    ax.set_xlabel("pre-training epoch")
    ax.set_ylabel("k-NN top-1 (%)")
    if loss:
        ax2 = ax.twinx()
        ax2.plot(*zip(*loss), color="tab:red", alpha=0.6, label="reconstruction loss")
        ax2.set_ylabel("reconstruction loss (MSE)")
        ax2.set_yscale("log")
        ax2.legend(loc="center right", fontsize=8)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("VideoMAE pre-training: what the features carry (motion classes)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_backbone(cfg: DemoConfig, work: str, seed: int) -> str:
    """``make demo-backbone``: pre-train and store the result in ``assets/demo_backbone``."""
    labelled = os.path.join(work, "data")
    make_data(cfg, labelled, cfg.videos_per_class, cfg.data_seed, dict(cfg.splits))
    path, seconds = pretrain(cfg, work, labelled, seed)
    os.makedirs(BACKBONE_DIR, exist_ok=True)
    dest = os.path.join(BACKBONE_DIR, BACKBONE_FILE)
    shutil.copyfile(path, dest)
    shutil.copyfile(os.path.join(work, "knn_probe.png"), os.path.join(BACKBONE_DIR, "knn_probe.png"))
    shutil.copyfile(os.path.join(work, "pretrain", "log.txt"),
                    os.path.join(BACKBONE_DIR, "pretrain_log.txt"))
    digest = file_sha256(dest)
    write_backbone_readme(cfg, digest, seconds, read_log(os.path.join(work, "pretrain", "log.txt")))
    logger.info("backbone %s (sha256 %s) after %.0f s of pre-training", dest, digest, seconds)
    return digest


def write_backbone_readme(cfg: DemoConfig, digest: str, seconds: float, log_rows: List[Dict]
                          ) -> None:
    """``assets/demo_backbone/README.md``: what the file is, how it was made, what it learned."""
    probe = [(r["epoch"] + 1, r["knn_top1"]) for r in log_rows if "knn_top1" in r]
    loss = {r["epoch"] + 1: r["train_loss"] for r in log_rows if "train_loss" in r}
    shown = probe[::2] + ([probe[-1]] if len(probe) % 2 == 0 else [])
    size_mb = os.path.getsize(os.path.join(BACKBONE_DIR, BACKBONE_FILE)) / 1e6
    lines = [
        "# The demo backbone", "",
        f"`{BACKBONE_FILE}` ({size_mb:.1f} MB, model weights only, VideoMAE's pre-training layout: "
        "`encoder.*`, `decoder.*`, `encoder_to_decoder.weight`, `mask_token`) is "
        f"`{cfg.model}` pre-trained as a VideoMAE masked autoencoder on "
        f"{cfg.num_classes * cfg.pretrain_videos_per_class:,} **unlabelled** synthetic videos. "
        f"`make demo` adapts it; `run_class_apt.py --model {cfg.model} --finetune "
        f"assets/demo_backbone/{BACKBONE_FILE}` loads it.", "",
        f"- sha256: `{digest}` (checked by `make demo`; `BACKBONE_SHA256` in `tools/worlds.py`)",
        f"- made by: `make demo-backbone` (= `python tools/demo.py --build_backbone --output_dir "
        f"demo_output/backbone`), seed 0, in {seconds / 60:.1f} minutes on 2 CPU cores (one compute "
        f"thread, {cfg.workers} loader workers), torch {torch.__version__}.",
        f"- data: `tools/make_synthetic.py`, {cfg.num_classes} classes x "
        f"{cfg.pretrain_videos_per_class} videos, seed {cfg.pretrain_seed} (the demo's labelled set "
        f"uses seed {cfg.data_seed}), {cfg.video_size}x{cfg.video_size}, {cfg.video_frames} frames; "
        "labels never read.",
        f"- pre-training: `run_mae_pretraining.py --model {cfg.pretrain_model} --mask_type "
        f"{cfg.mask_type} --mask_ratio {cfg.mask_ratio} --epochs {cfg.pretrain_epochs} "
        f"--warmup_epochs {cfg.pretrain_warmup_epochs} --batch_size {cfg.pretrain_batch} --lr "
        f"{cfg.pretrain_lr:g} --opt_betas 0.9 0.95 --normlize_target False --num_frames "
        f"{cfg.num_frames} --sampling_rate {cfg.sampling_rate} --input_size {cfg.input_size} "
        "--cache_videos` (the lr is scaled by batch/256).",
        "- what it learned: a k-NN probe (`--probe_data_path`: the labelled set's train videos as "
        "references, its val videos as queries, mean-pooled encoder features, k=20) measured "
        "during pre-training (`knn_probe.png`, `pretrain_log.txt`; TensorBoard `probe/knn_top1`); "
        f"chance is {100 / cfg.num_classes:.1f}%:", "",
        "  | epoch | " + " | ".join(str(e) for e, _ in shown) + " |",
        "  |---|" + "---:|" * len(shown),
        "  | k-NN top-1 (%) | " + " | ".join(f"{v:.1f}" for _, v in shown) + " |",
        "  | reconstruction loss | " + " | ".join(f"{loss[e]:.4f}" if e in loss else ""
                                                  for e, _ in shown) + " |", "",
        "The probe stays near chance while the reconstruction loss sits at about the cost of "
        "drawing the background alone, and climbs once the model starts placing the shapes in "
        "the masked columns, which it can only do by following their motion.", "",
        "Regenerating on another machine gives a backbone of the same quality; the bytes, and so "
        "the sha256, can differ with the CPU's floating-point kernels and thread count.", "",
        "![k-NN probe during pre-training](knn_probe.png)", ""]
    with open(os.path.join(BACKBONE_DIR, "README.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines))


# -------------------------------------------------------------------------------- adaptation
def flops_report(cfg: DemoConfig, method: Method) -> Dict:
    """What ``run_class_apt.py --flops`` prints, computed in-process (same function, no start-up)."""
    flags = method.flags
    kwargs = dict(prompt_num_tokens=cfg.num_prompts, prompt_reparam="--prompt_reparam" in flags)
    if "--vpt_mode" in flags:
        kwargs["vpt_mode"] = flags[flags.index("--vpt_mode") + 1]
    own = setting_fields(method.transfer_type)  # only the settings this type declares
    model = create_model(cfg.model, num_classes=cfg.num_classes, all_frames=cfg.num_frames,
                         img_size=cfg.input_size, transfer_type=method.transfer_type,
                         **{k: v for k, v in kwargs.items() if k in own})
    return cost_report(model, cfg.num_frames, cfg.input_size, cfg.model)


def adapt(cfg: DemoConfig, method: Method, data: str, backbone: str, out: str, seed: int,
          lr: Optional[float] = None, tag: str = "") -> Dict:
    """One ``run_class_apt.py`` run; returns its row (final multi-view test and best val)."""
    slug = method.slug + tag
    run_dir = os.path.join(out, slug)
    cmd = [sys.executable, "run_class_apt.py", "--model", cfg.model,
           "--transfer_type", method.transfer_type, "--data_set", "custom",
           "--nb_classes", str(cfg.num_classes), "--data_path", data,
           "--batch_size", str(cfg.batch_size), "--batch_size_val", str(4 * cfg.batch_size),
           "--num_sample", "1", "--short_side_size", str(cfg.input_size),
           "--opt", "adamw", "--lr", str(method.lr if lr is None else lr),
           "--weight_decay", "1e-4", "--epochs", str(cfg.finetune_epochs),
           "--warmup_epochs", "1", "--smoothing", "0.0", "--init_scale", "0.001",
           "--test_num_segment", str(cfg.test_num_segment),
           "--test_num_crop", str(cfg.test_num_crop), "--save_ckpt_freq", "1000",
           "--output_dir", run_dir, "--log_dir", os.path.join(out, "tensorboard", slug),
           # The classes include left/right motions and clockwise/anticlockwise turns: a
           # horizontal flip would swap labels. Mild crops keep the shapes in view.
           "--no_flip", "--train_crop_scale", "0.6", "1.0",
           # Decoded once per data set, on disk, for every row (results do not change).
           "--cache_videos", "--cache_dir", os.path.join(data, "frame_cache"),
           "--no_auto_resume", *common_flags(cfg, seed), *method.flags]
    if method.pretrained:
        cmd += ["--finetune", backbone]
    seconds = run(cmd, os.path.join(out, "logs", f"{slug}.log"))
    log_txt = os.path.join(run_dir, "log.txt")
    rows = read_log(log_txt)
    val = [r["val_acc1"] for r in rows if "val_acc1" in r]
    metrics = final_metrics(log_txt, rows)
    return {"method": method.name, "transfer_type": method.transfer_type,
            "lr": method.lr if lr is None else lr, "top1": float(metrics["Final top-1"]),
            "top5": float(metrics["Final top-5"]), "best_val_top1": max(val) if val else None,
            "last_val_top1": val[-1] if val else None, "seconds": seconds}


# -------------------------------------------------------------------------------- reporting
WORLD_TITLES = {"motion": "Synthetic motion classes",
                "pairs": "Synthetic pairs of motions (Something-Something-like)",
                "relations": "Synthetic relation classes (Something-Something-like)"}


def markdown_table(rows: List[Dict], cfg: DemoConfig, notes: List[str]) -> str:
    per_split = " / ".join(f"{n} {name}" for name, n in
                           split_counts(cfg.videos_per_class, dict(cfg.splits)).items())
    lines = [f"{WORLD_TITLES[cfg.world]}: {cfg.num_classes} classes (chance "
             f"{100 / cfg.num_classes:.1f}%), {per_split} videos per class; "
             f"`{cfg.model}` at {cfg.num_frames}x{cfg.input_size}x"
             f"{cfg.input_size}, {cfg.test_num_segment}x{cfg.test_num_crop} test views, "
             f"P={cfg.num_prompts} prompts, {cfg.finetune_epochs} epochs.",
             "",
             "| method | trainable params | GFLOPs / clip | top-1 (%) | top-5 (%) | wall time (s) |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['trainable_params']:,} | {r['gflops']:.4g} | "
                     f"{r['top1']:.1f} | {r['top5']:.1f} | {r['seconds']:.0f} |")
    if notes:
        lines += ["", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


def plot(rows: List[Dict], path: str, chance: float, world: str) -> None:
    """Top-1 against trainable parameters (log axis), marker area proportional to GFLOPs; one
    colour per method, named in a legend outside the axes (no labels to overlap)."""
    points = [PlotPoint(r["trainable_params"], r["top1"], r["gflops"], group=r["method"],
                        legend=f"{r['method']}: {r['top1']:.1f}%, {r['gflops']:.3g} GFLOPs")
              for r in rows]
    accuracy_vs_params(points, path, f"{WORLD_TITLES[world]}: accuracy against trainable "
                       "parameters\n(marker area proportional to GFLOPs per clip)", chance=chance)


def check_targets(rows: Dict[str, Dict], world: str = "motion") -> List[str]:
    """The comparisons the demo exists to show (its targets); a miss is reported.

    motion: pre-training worth >= 10 points to a linear head, APT >= linear probing + 15, APT
    within 10 points of end2end with < 5% of its parameters. pairs and relations (the headroom
    worlds, :data:`tools.worlds.HEADROOM_WORLDS`):
    end2end >= 70%, linear probing >= 25 points under end2end, pre-training worth >= 10 points,
    and APT recovering at least half of the linear-to-end2end gap.
    """
    apt, lin, rnd, e2e = (rows.get(n) for n in ("APT (ours)", "linear probing",
                                                "linear (random backbone)", "end2end"))
    checks = []
    if lin and rnd:
        checks.append((lin["top1"] >= rnd["top1"] + 10,
                       f"linear probing of the pre-trained backbone {lin['top1']:.1f}% >= "
                       f"linear probing of a random backbone {rnd['top1']:.1f}% + 10"))
    if world in HEADROOM_WORLDS:
        if e2e:
            checks.append((e2e["top1"] >= 70, f"end2end {e2e['top1']:.1f}% >= 70%"))
        if lin and e2e:
            checks.append((lin["top1"] <= e2e["top1"] - 25,
                           f"headroom: linear probing {lin['top1']:.1f}% <= end2end "
                           f"{e2e['top1']:.1f}% - 25"))
        if apt and lin and e2e:
            gap = e2e["top1"] - lin["top1"]
            recovered = (apt["top1"] - lin["top1"]) / gap if gap > 0 else float("nan")
            checks.append((gap > 0 and recovered >= 0.5,
                           f"APT recovers {100 * recovered:.0f}% (>= 50%) of the "
                           f"linear-to-end2end gap of {gap:.1f} points"))
        return [("target met: " if ok else "TARGET MISSED: ") + text for ok, text in checks]
    if apt and lin:
        checks.append((apt["top1"] >= lin["top1"] + 15,
                       f"APT {apt['top1']:.1f}% >= linear probing {lin['top1']:.1f}% + 15"))
    if apt and e2e:
        checks.append((apt["top1"] >= e2e["top1"] - 10,
                       f"APT {apt['top1']:.1f}% within 10 points of end2end {e2e['top1']:.1f}%"))
        share = 100.0 * apt["trainable_params"] / e2e["trainable_params"]
        checks.append((share < 5, f"APT trains {share:.1f}% of end2end's parameters (< 5%)"))
    return [("target met: " if ok else "TARGET MISSED: ") + text for ok, text in checks]


def record_in_benchmarks(tables: List[str], install_excluded_seconds: float) -> str:
    """Write the tables with the machine header to ``benchmarks/results/demo.md`` (BENCHMARKS.md
    includes every file there; rebuild it with ``python benchmarks/run_all.py --no-run``)."""
    lines = ["## Demo (`make demo`)", "", *info_lines(machine_info()),
             f"- wall time of the whole demo: {install_excluded_seconds:.0f} s (install excluded; "
             f"target: both worlds under 15 minutes on 2 CPU cores)", ""]
    for table in tables:
        lines += [table]
    path = os.path.join(ROOT, "benchmarks", "results", "demo.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


def run_world(cfg: DemoConfig, args: argparse.Namespace, out: str, backbone: str,
              pre_seconds: Optional[float], wanted: Sequence[str]) -> str:
    """Data, the rows and the table of one world in ``out``; returns the Markdown table."""
    started = time.time()
    data = os.path.join(out, "data")
    make_data(cfg, data, cfg.videos_per_class, cfg.data_seed + args.seed, dict(cfg.splits))
    logger.info("%s world: synthetic data set in %s (%.0f s)", cfg.world, data,
                time.time() - started)
    rows_to_run = [m for m in methods(cfg) if not wanted or m.name in wanted]
    rows: Dict[str, Dict] = {}
    for method in rows_to_run:
        cost = flops_report(cfg, method)
        row = adapt(cfg, method, data, backbone, out, args.seed)
        row.update(trainable_params=cost["trainable_params"], params=cost["params"],
                   gflops=cost["gflops"])
        rows[method.name] = row
        logger.info("%s world, %s: top-1 %.1f%%, top-5 %.1f%% (%.0f s)", cfg.world, method.name,
                    row["top1"], row["top5"], row["seconds"])
    notes = check_targets(rows, cfg.world)
    notes.append("backbone: " + (f"pre-trained in this run ({cfg.pretrain_epochs} epochs, "
                                 f"{pre_seconds:.0f} s)" if pre_seconds is not None else
                                 f"assets/demo_backbone/{BACKBONE_FILE} (`make demo-backbone`)"))
    notes.append(f"this world {time.time() - started:.0f} s")
    table = markdown_table(list(rows.values()), cfg, notes)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(table)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"config": asdict(cfg), "methods": [asdict(m) for m in rows_to_run],
                   "rows": list(rows.values()), "notes": notes}, f, indent=2)
    plot(list(rows.values()), os.path.join(out, "accuracy_vs_params.png"),
         100.0 / cfg.num_classes, cfg.world)
    return table


# -------------------------------------------------------------------------------------- main
def run_demo(args: argparse.Namespace) -> int:
    """The demo as ``tools/demo.py``'s flags say; returns the exit status.

    Raises:
        DemoFlagError: ``--world`` or ``--methods`` names something unknown.
    """
    worlds = [w.strip() for w in args.world.split(",") if w.strip()]
    try:
        cfgs = [world_config(w, args.quick) for w in worlds]
    except ValueError as e:
        raise DemoFlagError(f"--world: {e}") from e
    for cfg in cfgs:
        for name in ("workers", "pretrain_epochs", "finetune_epochs"):
            if getattr(args, name) is not None:
                setattr(cfg, name, getattr(args, name))
    out = os.path.abspath(args.output_dir)
    for d in ("", "tensorboard", "logs"):
        os.makedirs(os.path.join(out, d), exist_ok=True)
    started = time.time()
    # The backbone is the motion world's in every world (its own pre-training recipe run on the
    # relations videos gave a worse one: docs/WORLDS.md).
    backbone_cfg = world_config("motion", args.quick)
    for name in ("workers", "pretrain_epochs"):
        if getattr(args, name) is not None:
            setattr(backbone_cfg, name, getattr(args, name))

    if args.build_backbone:
        digest = build_backbone(backbone_cfg, out, args.seed)
        sys.stdout.write(f"\nwrote {os.path.join(BACKBONE_DIR, BACKBONE_FILE)}\nsha256 {digest}\n"
                         f"(record it as BACKBONE_SHA256 in tools/worlds.py)\n")
        return 0

    pre_seconds = None
    if args.pretrain or args.quick:
        # The k-NN probe reads the motion world's labelled train/val videos.
        labelled = os.path.join(out, "pretrain_probe_data")
        make_data(backbone_cfg, labelled, backbone_cfg.videos_per_class,
                  backbone_cfg.data_seed + args.seed, dict(backbone_cfg.splits))
        backbone, pre_seconds = pretrain(backbone_cfg, out, labelled, args.seed)
        logger.info("pre-training done in %.0f s: %s", pre_seconds, backbone)
    else:
        backbone = committed_backbone()
        logger.info("backbone: %s (committed; --pretrain redoes it)", backbone)

    wanted = [m.strip() for m in args.methods.split(",") if m.strip()]
    known = {m.name for cfg in cfgs for m in methods(replace(cfg, rows=()))}
    if set(wanted) - known:
        raise DemoFlagError(f"--methods: unknown rows {sorted(set(wanted) - known)}; known: "
                            f"{sorted(known)}")
    if args.select:
        cfg = cfgs[0]
        world_out = os.path.join(out, cfg.world)
        data = os.path.join(world_out, "data")
        make_data(cfg, data, cfg.videos_per_class, cfg.data_seed + args.seed, dict(cfg.splits))
        by_name = {m.name: m for m in methods(replace(cfg, rows=()))}
        report = []
        for part in args.select.split(";"):
            name, lrs = part.split("=")
            for lr in (float(v) for v in lrs.split(",")):
                row = adapt(cfg, by_name[name.strip()], data, backbone, world_out, args.seed, lr,
                            tag=f"_lr{lr:g}")
                report.append(f"{cfg.world} {name.strip()} lr {lr:g}: best val top-1 "
                              f"{row['best_val_top1']:.1f}, last {row['last_val_top1']:.1f}")
                logger.info(report[-1])
        sys.stdout.write("\n".join(report) + "\n")
        return 0

    tables = []
    for cfg in cfgs:
        world_out = os.path.join(out, cfg.world)
        for d in ("tensorboard", "logs"):
            os.makedirs(os.path.join(world_out, d), exist_ok=True)
        tables.append(f"### {WORLD_TITLES[cfg.world]}\n\n" +
                      run_world(cfg, args, world_out, backbone, pre_seconds, wanted))
    total = time.time() - started
    text = "\n".join(tables) + f"\nwhole demo {total:.0f} s\n"
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(text)
    if args.record:
        logger.info("recorded in %s", record_in_benchmarks(tables, total))
    sys.stdout.write("\n" + text + f"\nTensorBoard: tensorboard --logdir {out}/<world>/tensorboard\n")
    return 0

