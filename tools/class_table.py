"""Per-class top-1 of fine-tuning runs side by side, and the classes on which two runs differ
most (``tools/compare_runs.py --per_class`` and ``--diff``).

A run's per-class results are its ``test_confusion.csv`` (written by the final test since
per-class results exist: ``utils.class_results``); for a run made before, they are counted from
its ``predictions_rank*.json`` with the merge of the test (``engine_eval.merge_predictions``:
each video once, unreadable videos left out) and named by its label map
(``runs.default_class_names``). Runs equal but for ``--seed`` (``run_table.seed_groups``) are one
column: per-class mean ± sample std over the seeds.
"""
from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from engine_eval import merge_predictions, read_predictions
from models.config import FinetuneConfig
from runs import default_class_names
from utils.class_results import ClassResults, read_confusion_csv, result_files
from utils.stats import mean_std

logger = logging.getLogger("compare_runs")

PREDICTIONS = re.compile(r"^predictions_rank(\d+)\.json$")  # engine_eval.prediction_file, no tag


class RunClasses:
    """The per-class results of runs, read once per run folder (None: the run has none)."""

    def __init__(self) -> None:
        self.cache: Dict[str, Optional[ClassResults]] = {}

    def of(self, run_dir: str, saved: Dict[str, Any]) -> Optional[ClassResults]:
        """The classes of the run's latest test (``saved``: its ``args.json``)."""
        key = os.path.realpath(run_dir)
        if key not in self.cache:
            self.cache[key] = self._read(run_dir, saved)
        return self.cache[key]

    @staticmethod
    def _read(run_dir: str, saved: Dict[str, Any]) -> Optional[ClassResults]:
        confusion = result_files(run_dir)[1]
        if os.path.isfile(confusion):
            return read_confusion_csv(confusion)
        files = sorted((int(m.group(1)), os.path.join(run_dir, name))
                       for name in os.listdir(run_dir) if (m := PREDICTIONS.match(name)))
        if not files:
            return None
        nb_classes = saved.get("nb_classes")
        merged = merge_predictions((read_predictions(path) for _, path in files),
                                   int(nb_classes) if nb_classes else None)
        classes = merged["classes"]
        if classes is None:
            return None
        try:  # the label map next to the run's lists, as the run itself names its classes
            names = default_class_names(FinetuneConfig.from_args(saved))
        except (ValueError, TypeError) as err:  # flags this checkout refuses
            logger.warning("%s: class names not read (%s); classes shown by index", run_dir, err)
            return classes
        return classes.with_names(names) if len(names) == classes.num_classes else classes


def agrees(classes: ClassResults, top1: Optional[float]) -> bool:
    """Whether the per-class results are of the test whose top-1 the table shows (a later
    ``--eval`` into the same folder rewrites them)."""
    return top1 is not None and math.isclose(classes.top1(), top1, abs_tol=1e-6)


@dataclass(frozen=True)
class Column:
    """One column of the per-class table: a run, or the seeds of one run."""

    label: str
    runs: Tuple[str, ...]
    classes: Tuple[ClassResults, ...]

    def per_class(self) -> Tuple[np.ndarray, np.ndarray]:
        """Per-class top-1 mean and sample std over the seeds (NaN std for one run)."""
        values = np.stack([c.per_class_top1() for c in self.classes])  # (seeds, C)
        if len(self.classes) == 1:
            return values[0], np.full(values.shape[1], np.nan)
        return values.mean(axis=0), values.std(axis=0, ddof=1)

    def summary(self, what: str) -> Tuple[float, float]:
        """Mean and std over the seeds of ``top1`` or ``mean_class_top1``."""
        return mean_std([getattr(c, what)() for c in self.classes])


def columns(rows: Sequence[Any], groups: Sequence[Sequence[Tuple[Any, Any]]],
            loaded: Dict[str, ClassResults]) -> List[Column]:
    """The columns of the per-class table, in the rows' order: one per seed group (its runs
    with per-class results) and one per other run; runs without per-class results are left out.

    Args:
        rows: ``run_table.Row`` of every run.
        groups: ``run_table.seed_groups(rows)``.
        loaded: run folder -> its per-class results (those of the test the table shows).
    """
    group_of = {r.run: g for g in groups for r, _ in g}
    out: List[Column] = []
    seen = set()
    for row in rows:
        if row.run not in loaded or row.run in seen:
            continue
        members = [r.run for r, _ in group_of.get(row.run, [(row, None)]) if r.run in loaded]
        seen.update(members)
        name = os.path.basename(row.run)
        label = name if len(members) == 1 else f"{name} (+{len(members) - 1} seeds)"
        out.append(Column(label, tuple(members), tuple(loaded[m] for m in members)))
    return out


def _cell(mean: float, std: float) -> str:
    if math.isnan(mean):
        return ""
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"


def per_class_markdown(cols: Sequence[Column]) -> str:
    """Rows: the classes (index, name, test videos); columns: per-class top-1 of each column,
    mean ± std over seeds; then mean-class and top-1. The columns must share their classes."""
    first = cols[0].classes[0]
    head = ["class", "name", "videos", *(c.label for c in cols)]
    lines = ["| " + " | ".join(head) + " |",
             "|---:|---|---:|" + "|".join("---:" for _ in cols) + "|"]
    stats = [c.per_class() for c in cols]
    for k in range(first.num_classes):
        cells = [str(k), first.names[k], str(int(first.videos[k])),
                 *(_cell(m[k], s[k]) for m, s in stats)]
        lines.append("| " + " | ".join(x.replace("|", "\\|") for x in cells) + " |")
    for title, what in (("mean-class", "mean_class_top1"), ("top-1", "top1")):
        cells = [f"**{title}**", "", str(first.total), *(_cell(*c.summary(what)) for c in cols)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def diff_markdown(a: Column, b: Column, top: int) -> str:
    """The ``top`` classes with the largest |B - A| of per-class top-1 (mean over seeds; equal
    classes are not listed), with a line counting the classes on which B is better, worse and
    equal."""
    first = a.classes[0]
    ma, _ = a.per_class()
    mb, _ = b.per_class()
    delta = mb - ma
    tested = np.flatnonzero(~np.isnan(delta))
    order = sorted((k for k in tested if delta[k] != 0), key=lambda k: (-abs(delta[k]), k))[:top]
    lines = [f"| class | name | videos | A: {a.label} | B: {b.label} | B − A |",
             "|---:|---|---:|---:|---:|---:|"]
    for k in order:
        cells = [str(k), first.names[k], str(int(first.videos[k])), f"{ma[k]:.2f}",
                 f"{mb[k]:.2f}", f"{delta[k]:+.2f}"]
        lines.append("| " + " | ".join(x.replace("|", "\\|") for x in cells) + " |")
    better = int((delta[tested] > 0).sum())
    worse = int((delta[tested] < 0).sum())
    mean_a, mean_b = a.summary("mean_class_top1")[0], b.summary("mean_class_top1")[0]
    lines += ["", f"- B − A over {tested.size} classes with test videos: B better on {better}, "
              f"worse on {worse}, equal on {tested.size - better - worse}; mean-class "
              f"{mean_b - mean_a:+.2f} points (per-class values: means over seeds)."]
    return "\n".join(lines) + "\n"


def same_classes(cols: Sequence[Column]) -> List[List[Column]]:
    """The columns split into sets that share class names and test videos per class (a table
    each: runs on other data sets or test lists are not side by side)."""
    sets: Dict[Tuple[Any, ...], List[Column]] = {}
    for c in cols:
        first = c.classes[0]
        key = (first.names, tuple(int(v) for v in first.videos))
        sets.setdefault(key, []).append(c)
    return list(sets.values())


def loaded_classes(rows: Sequence[Any], classes: RunClasses,
                   saved_of: Callable[[str], Optional[Dict[str, Any]]]) -> Dict[str, ClassResults]:
    """Run folder -> per-class results, for the tested rows whose results are of the test the
    table shows; each run left out is named in a warning.

    Args:
        rows: ``run_table.Row`` of every run.
        classes: the reader (shared with ``run_table.collect``).
        saved_of: a run folder's ``args.json`` (``run_table.read_args``).
    """
    loaded: Dict[str, ClassResults] = {}
    for row in rows:
        if row.top1 is None:
            continue  # no final test: the table says so in its status
        found = classes.of(row.run, saved_of(row.run) or {})
        if found is None:
            logger.warning("%s: no per-class results (neither test_confusion.csv nor "
                           "predictions_rank*.json); left out of the per-class tables", row.run)
        elif not agrees(found, row.top1):
            logger.warning("%s: its per-class files are of a later test (top-1 %.2f, not %.2f: "
                           "an --eval into the same folder?); left out of the per-class tables",
                           row.run, found.top1(), row.top1)
        else:
            loaded[row.run] = found
    return loaded


def column_of(cols: Sequence[Column], run_dir: str) -> Optional[Column]:
    """The column holding ``run_dir`` (a run, or one seed of a group), or None."""
    real = os.path.realpath(run_dir)
    return next((c for c in cols if real in {os.path.realpath(r) for r in c.runs}), None)
