"""The run table of ``tools/compare_runs.py``: fine-tuning runs of ``run_class_apt.py`` read
from their folders, one row each, as Markdown, CSV and a plot.

From a run folder's ``args.json`` (the flags and what the run resolved: class count,
architecture with the transfer type's settings, world size, backbone loaded; older runs without
the resolved keys fall back to the flags), its ``log.txt`` (docs/FORMATS.md, 'log.txt') and its
``run.log``, one ``Row``: method and settings, data set, backbone, trainable parameters, GFLOPs
per view, test views, final top-1/top-5 and mean-class top-1, best validation top-1 and its
epoch, epochs done of planned, training time and a status. Runs whose flags are equal but for
``--seed`` (and their output folders) are grouped (``seed_groups``): mean ± sample std over the
seeds.

GFLOPs are counted by ``models.cost_report`` on the model rebuilt from the run's architecture on
the meta device (shapes only, so a ViT-L counts as fast as a test model), once per architecture.
The mean-class top-1 is the one ``log.txt`` holds; for a run made before it was logged, it is
counted from the run's predictions (``tools/class_table.py``).

Long on purpose: one concern, the rows of the table and their three outputs; its library parts
(settings, costs, log reading, per-class results) come from the layers below.
"""
from __future__ import annotations

import csv
import dataclasses
import datetime
import glob
import json
import logging
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from models import cost_report, parameter_counts
from models.factory import create_model_from_config
from models.config import FinetuneConfig
from models.transfer import (TRANSFER_TYPES, canonical_transfer_type, resolve_block_range,
                             setting_fields)
from tools.class_table import RunClasses, agrees
from tools.plots import PlotPoint, accuracy_vs_params
from utils.logs import read_json_lines
from utils.stats import mean_std

logger = logging.getLogger("compare_runs")

# How a transfer type is named in the table (a type not listed shows its registered name).
TYPE_NAMES = {"apt": "APT", "vpt": "VPT", "lora": "LoRA", "approx": "approx. prompts",
              "random": "from scratch"}
# Short forms of known settings; any other setting shows as ``name=value``.
SHORT = {"prompt_num_tokens": "P", "lora_rank": "r", "lora_alpha": "a", "adapter_dim": "d",
         "adapter_scale": "s", "approx_rank": "r", "prompt_dropout": "dropout",
         "prompt_reparam": "reparam", "prompt_per_head": "per-head"}
MODE_SETTINGS = ("vpt_mode",)  # appended to the type's name: VPT-deep
BLOCK_RANGE = ("prompt_start", "prompt_end")

# run.log lines (utils/logs.py setup_logging): "2024-01-31 12:00:00 [rank 0] INFO engine: ...".
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) \[rank \d+\] \w+ (\S+): (.*)$")
TRAINING_LOGGERS = ("engine", "engine_eval", "utils.logs")  # the epoch loop, validation, test
# Whose "saved ..." lines are checkpoint writes: engine_checkpoints, and models.checkpoint in the
# run.log of runs made before the checkpoint writer moved there.
CHECKPOINT_LOGGERS = ("engine_checkpoints", "models.checkpoint")

TIME_NOTE = ("train time: from each `training epochs` line of run.log (one per start or resume) "
             "to that session's last training, validation, test or checkpoint line, summed; "
             "time between sessions is not counted")
FLOPS_NOTE = ("GFLOPs: one view at the run's frames and size, a multiply-add counted as 2, "
              "inference folding applied (models.cost_report)")
# Flags that differ between seeds of one run and nothing else: the rest must be equal to group.
PER_SEED = ("seed", "output_dir", "log_dir", "resume")
MEAN_CLASS_NOTE = ("mean-class: the mean over the classes of each class's top-1 (every class "
                   "weighs the same); empty for a run without it in log.txt and without the "
                   "predictions of its final test")
EPOCH_NOTE = "best val: the highest val_acc1 of log.txt, at the epoch numbered as there (from 0)"


class RunDirError(ValueError):
    """A RUN_DIR argument that names no run; the message names the path or pattern."""


@dataclass
class Row:
    """One run as the table shows it (None: not known)."""

    run: str
    status: str
    data_set: str
    method: str
    transfer_type: str
    backbone: str
    trainable_params: Optional[int]
    gflops: Optional[float]
    views: str
    top1: Optional[float]
    top5: Optional[float]
    mean_class: Optional[float]
    ema_top1: Optional[float]
    ema_top5: Optional[float]
    best_val_top1: Optional[float]
    best_val_epoch: Optional[int]
    epochs_done: int
    epochs_planned: Optional[int]
    train_seconds: Optional[float]
    nb_classes: Optional[int]


# ----------------------------------------------------------------------------------- inputs
def expand_run_dirs(patterns: Sequence[str]) -> List[str]:
    """The run folders named by ``patterns``: paths, or globs the shell did not expand
    (quoted); a glob keeps the folders it matches. Files are skipped with a warning (a shell
    glob such as ``runs/*`` also names the CSV written there). Each folder once, in the order
    given."""
    found: List[str] = []
    for pattern in patterns:
        if os.path.exists(pattern) or not any(c in pattern for c in "*?["):
            if not os.path.exists(pattern):
                raise RunDirError(f"{pattern}: no such run folder")
            if not os.path.isdir(pattern):
                logger.warning("%s: a file, not a run folder; skipped", pattern)
                continue
            paths = [pattern]
        else:
            paths = sorted(p for p in glob.glob(pattern) if os.path.isdir(p))
            if not paths:
                raise RunDirError(f"{pattern!r} matches no folder")
        found += [os.path.normpath(p) for p in paths]
    unique: Dict[str, str] = {}  # real path -> the path as first given
    for path in found:
        unique.setdefault(os.path.realpath(path), path)
    return list(unique.values())


def read_args(run_dir: str) -> Optional[Dict[str, Any]]:
    """``args.json`` of a run, or None where the folder has none (not a training run)."""
    path = os.path.join(run_dir, "args.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise RunDirError(f"{path}: not JSON ({err})") from err


def read_log(run_dir: str) -> Optional[List[Dict[str, Any]]]:
    """The records of ``log.txt`` (None if there is none). A line that is no JSON object (one
    cut short by a crash) is skipped with a warning naming it."""
    path = os.path.join(run_dir, "log.txt")
    return read_json_lines(path) if os.path.isfile(path) else None


def training_seconds(run_log: str) -> Optional[float]:
    """Seconds of training in ``run_log`` (see ``TIME_NOTE``), or None without a training session.

    A session starts at the ``engine: training epochs`` line and ends at its last line from
    the training loop; the ``run_class_apt: model`` line of the next start (training or
    ``--eval``) closes it, so the next start's loading and the downtime before it never count.
    """
    if not os.path.isfile(run_log):
        return None
    total, start, end, sessions = 0.0, None, None, 0
    with open(run_log, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = LOG_LINE.match(line)
            if not m:  # continuation lines of a multi-line message
                continue
            stamp = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")
            name, message = m.group(2), m.group(3)
            if name == "engine" and message.startswith("training epochs "):
                total += (end - start).total_seconds() if start else 0.0
                start = end = stamp
                sessions += 1
            elif name == "run_class_apt" and message.startswith("model "):
                total += (end - start).total_seconds() if start else 0.0
                start = end = None
            elif start is not None and (name in TRAINING_LOGGERS or (
                    name in CHECKPOINT_LOGGERS and message.startswith("saved "))):
                end = stamp
    total += (end - start).total_seconds() if start else 0.0
    return total if sessions else None


# ---------------------------------------------------------------------------- the model
class ArchitectureCosts:
    """Depth, trainable parameters and GFLOPs of the model a run trained, rebuilt from its
    saved flags on the meta device; counted once per architecture.

    Args:
        count_flops: False for ``--no_flops`` (the model is still built, for its depth and
            parameter count).
    """

    def __init__(self, count_flops: bool = True) -> None:
        self.count_flops = count_flops
        self.cache: Dict[str, Dict[str, Any]] = {}

    def of(self, saved: Dict[str, Any], where: str) -> Optional[Dict[str, Any]]:
        """``{"depth", "trainable_params", "gflops", "method", "transfer_type"}`` of the run
        whose ``args.json`` is ``saved`` (``where`` names it in warnings); None where it cannot
        be rebuilt."""

        try:  # flags this checkout refuses (a removed type or model, a bad setting)
            # the declared defaults with the saved flags over them, so a run saved before a
            # flag existed gets that flag's default
            cfg = FinetuneConfig.from_args(saved).model
            key = json.dumps([cfg.architecture(), cfg.num_classes, cfg.num_frames,
                              cfg.input_size], sort_keys=True, default=str)
            if key not in self.cache:
                self.cache[key] = self._count(cfg)
        except (ValueError, TypeError) as err:
            logger.warning("%s: cannot rebuild the model (%s); its GFLOPs are left out", where,
                           err)
            return None
        return {**self.cache[key], "method": cfg.method, "transfer_type": cfg.transfer_type}

    def _count(self, cfg: Any) -> Dict[str, Any]:
        with torch.device("meta"):  # shapes only: no storage, no arithmetic
            model = create_model_from_config(cfg)
        if self.count_flops:
            report = cost_report(model, cfg.num_frames, cfg.input_size, cfg.model)
        else:
            report = {**parameter_counts(model), "gflops": None}
        return {"depth": model.depth, "trainable_params": report["trainable_params"],
                "gflops": report["gflops"]}


def method_label(transfer_type: str, settings: Dict[str, Any], depth: Optional[int]) -> str:
    """The transfer type and its settings in short form, e.g. ``APT P=400 blocks 0-11 reparam``.

    The settings are the fields of the type's settings dataclass (``setting_fields``), so a new
    type's settings show without editing this tool. Switches show when on; a setting that is
    0/None at a 0/None default (no dropout) is left out; the block range shows as blocks.

    Args:
        transfer_type: ``--transfer_type``.
        settings: the run's values of the type's settings (missing ones take the default).
        depth: the backbone's block count (resolves the default block range), or None.
    """
    transfer_type = canonical_transfer_type(transfer_type)  # runs of old code: a former name
    name = TYPE_NAMES.get(transfer_type, transfer_type)
    try:
        fields = setting_fields(transfer_type)
    except ValueError:  # a type this checkout no longer has: its name and no settings
        logger.warning("--transfer_type %s is not registered here: its settings are not shown",
                       transfer_type)
        return name
    values = {k: settings.get(k, f.default) for k, f in fields.items()}
    numbers, switches = [], []
    for key, f in fields.items():
        value = values[key]
        if key in BLOCK_RANGE or (not value and not f.default):
            continue
        if key in MODE_SETTINGS:
            name += f"-{value}"
        elif isinstance(value, bool):
            switches.append(SHORT.get(key, key))
        else:
            shown = f"{value:g}" if isinstance(value, float) else str(value)
            numbers.append(f"{SHORT.get(key, key)}={shown}")
    if all(k in fields for k in BLOCK_RANGE):
        start, end = values["prompt_start"], values["prompt_end"]
        if depth is not None:
            start, end = resolve_block_range(depth, start, end)
        numbers.append(f"blocks {0 if start is None else start}-{'last' if end is None else end}")
    return " ".join([name, *numbers, *switches])


# ----------------------------------------------------------------------------------- a run
def data_set_name(saved: Dict[str, Any]) -> str:
    """``--data_set``; for ``custom``, with the data folder's name."""
    name = str(saved.get("data_set", "?"))
    if name == "custom" and saved.get("data_path"):
        return f"custom ({os.path.basename(os.path.normpath(saved['data_path']))})"
    return name


def backbone_name(saved: Dict[str, Any]) -> str:
    """The file name of the backbone the run loaded (``backbone_loaded``; older runs:
    ``--finetune``), or "random init"."""
    if "backbone_loaded" in saved:
        path = saved["backbone_loaded"]
    else:
        method = TRANSFER_TYPES.get(canonical_transfer_type(saved.get("transfer_type", "")))
        path = saved.get("finetune") if method is None or method.loads_pretrained else None
    return os.path.basename(os.path.normpath(path)) if path else "random init"


def final_records(records: List[Dict[str, Any]]) -> Tuple[Optional[Dict], Optional[Dict]]:
    """The final test of training (else of a later ``--eval``) and that of the EMA weights."""
    tests = [r for r in records if "Final top-1" in r]
    of_training = [r for r in tests if r.get("tested") != "resume"]
    final = (of_training or tests or [None])[-1]
    ema = ([r for r in records if "Final EMA top-1" in r] or [None])[-1]
    return final, ema


def status_of(records: Optional[List[Dict]], final: Optional[Dict], done: int,
              planned: Optional[int]) -> str:
    """done / in progress or stopped / failed, from what ``log.txt`` holds."""
    of = f"{done} of {planned if planned is not None else '?'} epochs"
    if records is None:
        return "failed or in its first epoch (no log.txt)"
    if final is None:
        if planned is None or done < planned:
            return f"in progress or stopped after {of}"
        return f"failed: {of}, no final test"
    if final.get("tested") == "resume":
        return f"tested with --eval after {of}"
    return "done"


def mean_class_of(run_dir: str, saved: Dict[str, Any], final: Optional[Dict[str, Any]],
                  classes: RunClasses) -> Optional[float]:
    """The final test's mean-class top-1: from its ``log.txt`` line, or (a run made before it
    was logged) counted from the run's per-class files or predictions when they are of that
    test (same top-1); None otherwise."""
    if final is None:
        return None
    key = "Final mean-class top-1"
    if key in final:
        return final[key]
    found = classes.of(run_dir, saved)
    if found is None:
        return None
    if not agrees(found, final["Final top-1"]):
        logger.warning("%s: its predictions are of a later test (top-1 %.2f, not %.2f): no "
                       "mean-class top-1", run_dir, found.top1(), final["Final top-1"])
        return None
    return found.mean_class_top1()


def make_row(run_dir: str, saved: Dict[str, Any], costs: ArchitectureCosts,
             classes: RunClasses) -> Row:
    """The table row of one run (``classes``: where its per-class results are read)."""
    records = read_log(run_dir)
    epochs = [r for r in records or [] if "epoch" in r]
    done = max((int(r["epoch"]) + 1 for r in epochs), default=0)
    planned = saved.get("epochs")
    final, ema = final_records(records or [])
    validated = [r for r in epochs if r.get("val_acc1") is not None]
    best = max(validated, key=lambda r: r["val_acc1"], default=None)  # first of equal ones
    counted = [r["n_parameters"] for r in epochs if "n_parameters" in r]
    model = costs.of(saved, os.path.join(run_dir, "args.json"))
    # The registered name (a run of old code may save a former one), as the model was rebuilt.
    transfer_type = model["transfer_type"] if model else str(saved.get("transfer_type", "?"))
    settings = model["method"].to_dict() if model else saved
    return Row(
        run=run_dir, status=status_of(records, final, done, planned),
        data_set=data_set_name(saved),
        method=method_label(transfer_type, settings, model["depth"] if model else None),
        transfer_type=transfer_type, backbone=backbone_name(saved),
        trainable_params=counted[-1] if counted else (model or {}).get("trainable_params"),
        gflops=(model or {}).get("gflops"),
        views=f"{saved.get('test_num_segment', '?')}x{saved.get('test_num_crop', '?')}",
        top1=final["Final top-1"] if final else None, top5=final["Final top-5"] if final else None,
        mean_class=mean_class_of(run_dir, saved, final, classes),
        ema_top1=ema["Final EMA top-1"] if ema else None,
        ema_top5=ema["Final EMA top-5"] if ema else None,
        best_val_top1=best["val_acc1"] if best else None,
        best_val_epoch=int(best["epoch"]) if best else None,
        epochs_done=done, epochs_planned=planned,
        train_seconds=training_seconds(os.path.join(run_dir, "run.log")),
        nb_classes=saved.get("nb_classes"))


def collect(run_dirs: Iterable[str], count_flops: bool = True,
            classes: Optional[RunClasses] = None) -> List[Row]:
    """The rows of the runs, sorted by data set, then top-1 (highest first; untested last).

    Args:
        run_dirs: the run folders (``expand_run_dirs``).
        count_flops: False for ``--no_flops``.
        classes: the per-class results' reader to share with the per-class tables.
    """
    costs = ArchitectureCosts(count_flops)
    classes = classes if classes is not None else RunClasses()
    rows = []
    for run_dir in run_dirs:
        saved = read_args(run_dir)
        if saved is None:
            logger.warning("%s: no args.json, not a run_class_apt.py training run; skipped",
                           run_dir)
            continue
        rows.append(make_row(run_dir, saved, costs, classes))
    rows.sort(key=lambda r: (r.data_set, r.top1 is None, -(r.top1 or 0.0), r.run))
    return rows


# ---------------------------------------------------------------------------------- outputs
def _num(value: Optional[float], fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def _duration(seconds: Optional[float]) -> str:
    return "" if seconds is None else str(datetime.timedelta(seconds=int(round(seconds))))


def markdown(rows: Sequence[Row], count_flops: bool = True) -> str:
    """The table, with notes on what the GFLOPs, best val and train time are."""
    with_ema = any(r.ema_top1 is not None for r in rows)
    head = ["run", "data set", "method", "backbone", "trainable params", "GFLOPs/view",
            "views", "top-1", "top-5", "mean-class", *(["EMA top-1"] if with_ema else []),
            "best val top-1 (epoch)", "epochs", "train time", "status"]
    right = {"trainable params", "GFLOPs/view", "top-1", "top-5", "mean-class", "EMA top-1",
             "best val top-1 (epoch)", "epochs", "train time"}
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join("---:" if h in right else "---" for h in head) + "|"]
    for r in rows:
        best = "" if r.best_val_top1 is None else f"{r.best_val_top1:.2f} ({r.best_val_epoch})"
        cells = [r.run, r.data_set, r.method, r.backbone,
                 "" if r.trainable_params is None else f"{r.trainable_params:,}",
                 _num(r.gflops, ".4g"), r.views, _num(r.top1, ".2f"), _num(r.top5, ".2f"),
                 _num(r.mean_class, ".2f"),
                 *([_num(r.ema_top1, ".2f")] if with_ema else []), best,
                 f"{r.epochs_done}/{'?' if r.epochs_planned is None else r.epochs_planned}",
                 _duration(r.train_seconds), r.status]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    notes = [FLOPS_NOTE if count_flops else "GFLOPs: not counted (--no_flops)", MEAN_CLASS_NOTE,
             EPOCH_NOTE, TIME_NOTE]
    return "\n".join(lines + [""] + [f"- {n}." for n in notes]) + "\n"


def seed_groups(rows: Sequence[Row]) -> List[List[Tuple[Row, Any]]]:
    """Runs equal but for ``--seed`` (``PER_SEED``), as ``[(row, seed), ...]`` per group, for
    the groups holding at least two tested runs, in the rows' order."""
    groups: Dict[str, List[Tuple[Row, Any]]] = {}
    for r in rows:
        saved = read_args(r.run) or {}
        key = json.dumps({k: v for k, v in saved.items() if k not in PER_SEED}, sort_keys=True,
                         default=str)
        groups.setdefault(key, []).append((r, saved.get("seed")))
    return [g for g in groups.values() if sum(r.top1 is not None for r, _ in g) >= 2]


def seeds_markdown(groups: Sequence[Sequence[Tuple[Row, Any]]]) -> str:
    """One row per group of ``seed_groups``: mean ± sample std over its tested runs."""
    lines = ["| method | data set | backbone | seeds | top-1 (mean ± std) | top-5 (mean ± std) | "
             "mean-class (mean ± std) | runs |", "|---|---|---|---|---:|---:|---:|---|"]
    for group in groups:
        tested = sorted(((r, s) for r, s in group if r.top1 is not None),
                        key=lambda rs: (str(type(rs[1])), rs[1]))  # by seed
        (t1, s1), (t5, s5) = (mean_std([getattr(r, k) for r, _ in tested]) for k in ("top1", "top5"))
        first = tested[0][0]
        means = [r.mean_class for r, _ in tested]
        mc = "" if None in means else "{:.2f} ± {:.2f}".format(*mean_std(means))
        cells = [first.method, first.data_set, first.backbone,
                 ", ".join(str(s) for _, s in tested), f"{t1:.2f} ± {s1:.2f}",
                 f"{t5:.2f} ± {s5:.2f}", mc, ", ".join(os.path.basename(r.run) for r, _ in tested)]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines + ["", "- runs whose flags are equal but for --seed; sample std "
                              "(n - 1) over the seeds; runs without a final test left out."]) + "\n"


def write_csv(rows: Sequence[Row], path: str) -> None:
    """Every field of every row, unformatted (empty where not known)."""
    names = [f.name for f in dataclasses.fields(Row)]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=names)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: "" if v is None else v for k, v in dataclasses.asdict(r).items()})


def plot(rows: Sequence[Row], path: str) -> bool:
    """Final top-1 against trainable parameters of the tested runs (``tools/plots.py``); one
    colour per transfer type, each point labelled with its method. False: nothing to plot."""
    tested = [r for r in rows if r.top1 is not None and r.trainable_params]
    if not tested:
        return False
    data_sets = sorted({r.data_set for r in tested})
    labels = [r.method if len(data_sets) == 1 else f"{r.method}, {r.data_set}" for r in tested]
    labels = [f"{t} ({os.path.basename(r.run)})" if labels.count(t) > 1 else t
              for t, r in zip(labels, tested)]
    points = [PlotPoint(r.trainable_params, r.top1, r.gflops,
                        group=TYPE_NAMES.get(r.transfer_type, r.transfer_type),
                        legend=TYPE_NAMES.get(r.transfer_type, r.transfer_type), label=label)
              for r, label in zip(tested, labels)]
    top1 = [r.top1 for r in tested]
    # Zoomed on the runs (in steps of 10 points), as the APT paper's figure is.
    ylim = (max(0.0, 10.0 * math.floor(min(top1) / 10 - 1)),
            min(100.0, 10.0 * math.ceil(max(top1) / 10 + 0.5)))
    classes = {r.nb_classes for r in tested}
    chance = 100.0 / classes.pop() if len(classes) == 1 and None not in classes else None
    if chance is not None and not ylim[0] <= chance <= ylim[1]:
        chance = None
    where = f" on {data_sets[0]}" if len(data_sets) == 1 else ""
    area = ("marker area proportional to GFLOPs per view"
            if all(r.gflops is not None for r in tested) else "GFLOPs not counted")
    accuracy_vs_params(points, path, f"Test top-1 against trainable parameters{where}\n({area})",
                       ylabel="final test top-1 (%)", chance=chance, ylim=ylim)
    return True
