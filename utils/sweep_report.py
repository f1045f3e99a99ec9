"""The report of a protocol sweep (``utils/sweep.py``): per method the chosen point, test top-1
mean +- std over seeds, the fraction of the linear-to-full-fine-tuning gap recovered, and the
paired bootstrap interval of its difference to the reference method over the same test videos;
written as Markdown, JSON and CSV (the plot is ``tools/plots.py``'s ``protocol_plot``)."""
from __future__ import annotations

import csv
import json
import math
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from .machine import info_lines, machine_info
from .outputs import atomic_file
from .stats import gap_recovered, mean_std, paired_bootstrap
from .sweep import SELECTION_RULE, SweepResults, SweepSpec, point_label

CSV_FIELDS = ("method", "transfer_type", "pretrained", "chosen", "val_top1_mean", "seeds",
              "top1_mean", "top1_std", "top5_mean", "top5_std", "gap_recovered",
              "diff_to_reference", "diff_low", "diff_high", "trainable_params", "gflops")


def per_video_correct(predictions: List[Mapping[str, Any]], where: str
                      ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(video indices, labels, correct 0/1)`` of a run's readable test videos, by index.

    Args:
        predictions: the records of ``predictions_rank0.json`` (index, label, scores).
        where: the run, for messages.
    """
    good = sorted((p for p in predictions if p["label"] >= 0 and p["scores"] is not None),
                  key=lambda p: p["index"])
    if not good:
        raise RuntimeError(f"{where}: no readable test video in its predictions")
    index = np.array([p["index"] for p in good])
    labels = np.array([p["label"] for p in good])
    top1 = np.array([int(np.argmax(p["scores"])) for p in good])
    return index, labels, (top1 == labels).astype(np.float64)


def build_report(spec: SweepSpec, results: SweepResults) -> Dict[str, Any]:
    """The report's data (JSON-ready).

    Every method's per-video accuracy is the mean over its seeds of 0/1 correctness; the
    bootstrap pairs the methods over the same videos (their indices and labels are checked to
    be the same in every run).

    Raises:
        RuntimeError: runs that tested different videos (naming them).
    """
    videos: Optional[Tuple[np.ndarray, np.ndarray]] = None
    accuracy: Dict[str, np.ndarray] = {}
    rows: List[Dict[str, Any]] = []
    for m in spec.methods:
        per_seed, top1, top5 = [], [], []
        for seed in spec.seeds:
            res = results.tests[(m.name, seed)]
            index, labels, correct = per_video_correct(res["predictions"], f"{m.name} seed {seed}")
            if videos is None:
                videos = (index, labels)
            elif not (np.array_equal(index, videos[0]) and np.array_equal(labels, videos[1])):
                raise RuntimeError(f"{m.name} seed {seed} tested other videos (indices or "
                                   f"labels) than {spec.methods[0].name}: not a paired test")
            per_seed.append(correct)
            top1.append(res["top1"])
            top5.append(res["top5"])
        accuracy[m.name] = np.mean(per_seed, axis=0)
        (t1, s1), (t5, s5) = mean_std(top1), mean_std(top5)
        cost = results.costs[m.name]
        rows.append({"method": m.name, "transfer_type": m.transfer_type,
                     "pretrained": m.pretrained, "chosen": results.chosen[m.name]["point"],
                     "val_top1_mean": results.chosen[m.name]["val_top1_mean"],
                     "seeds": list(spec.seeds), "top1": top1, "top1_mean": t1, "top1_std": s1,
                     "top5_mean": t5, "top5_std": s5,
                     "trainable_params": cost["trainable_params"], "gflops": cost["gflops"]})
    by_name = {r["method"]: r for r in rows}
    for r in rows:
        lin, full = by_name.get(spec.linear), by_name.get(spec.full)
        r["gap_recovered"] = (gap_recovered(r["top1_mean"], lin["top1_mean"], full["top1_mean"])
                              if lin and full else None)
        if r["method"] == spec.reference:
            r["diff_to_reference"] = None
            continue
        d = paired_bootstrap(accuracy[r["method"]], accuracy[spec.reference],
                             spec.bootstrap_resamples, spec.bootstrap_seed)
        r["diff_to_reference"], r["diff_low"], r["diff_high"] = d.diff, d.low, d.high
    return {"name": spec.name, "protocol": spec.to_dict(), "machine": machine_info(),
            "selection_rule": SELECTION_RULE, "reference": spec.reference,
            "test_videos": int(videos[0].size), "val": results.val_table, "methods": rows,
            "launch": results.launch, "jobs_run": results.ran, "seconds": results.seconds}


def _pm(mean: float, std: float) -> str:
    return f"{mean:.1f} ± {std:.1f}" if not math.isnan(std) else f"{mean:.1f}"


def markdown(report: Mapping[str, Any]) -> str:
    """The report as Markdown: the main table, notes saying what each column is, the val table
    and the machine."""
    spec = report["protocol"]
    ref = report["reference"]
    n = len(spec["seeds"])
    lines = [f"### {report['name']}", "",
             f"| method | chosen on val (val top-1) | trainable params | GFLOPs / view | "
             f"test top-1 (mean ± std, {n} seeds) | top-5 | gap recovered | vs {ref} "
             f"(95% CI) |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in report["methods"]:
        gap = "" if r["gap_recovered"] is None else f"{100 * r['gap_recovered']:.0f}%"
        diff = ("reference" if r["diff_to_reference"] is None else
                f"{r['diff_to_reference']:+.1f} [{r['diff_low']:+.1f}, {r['diff_high']:+.1f}]")
        lines.append(f"| {r['method']} | {point_label(r['chosen'])} ({r['val_top1_mean']:.1f}) | "
                     f"{r['trainable_params']:,} | {r['gflops']:.4g} | "
                     f"{_pm(r['top1_mean'], r['top1_std'])} | "
                     f"{_pm(r['top5_mean'], r['top5_std'])} | {gap} | {diff} |")
    grid = len(report["val"]) // max(1, len(report["methods"]))
    lines += ["",
              f"- tuning: {grid} grid points per method, each trained with val seeds "
              f"{spec['val_seeds']} and `--skip_test` (the test split is not read); chosen: "
              f"{report['selection_rule']}.",
              f"- test: seeds {spec['seeds']} at the chosen point, {report['test_videos']} test "
              f"videos, {spec['flags'].get('test_num_segment', '?')}x"
              f"{spec['flags'].get('test_num_crop', '?')} views; mean ± sample std over seeds.",
              f"- gap recovered: (method − {spec['linear'] or 'linear'}) / ("
              f"{spec['full'] or 'full'} − {spec['linear'] or 'linear'}) of the mean top-1.",
              f"- vs {ref}: difference of mean top-1 in points; paired bootstrap over the test "
              f"videos ({spec['bootstrap_resamples']} resamples, seed "
              f"{spec['bootstrap_seed']}), a video's accuracy being the mean over the seeds.",
              "", "<details><summary>val top-1 of every grid point</summary>", "",
              "| method | point | val top-1 per val seed | mean |", "|---|---|---|---:|"]
    for v in report["val"]:
        seeds = ", ".join(f"{s}: {x:.1f}" for s, x in v["val_top1"].items())
        lines.append(f"| {v['method']} | {point_label(v['point'])} | {seeds} | {v['mean']:.2f} |")
    launch = report["launch"]
    lines += ["", "</details>", "",
              f"- launched: {launch['cluster']}, {launch['jobs']} jobs at once x "
              f"{launch['threads']} threads; this call ran {report['jobs_run']} jobs in "
              f"{report['seconds']:.0f} s", *info_lines(report["machine"])]
    return "\n".join(lines) + "\n"


def write_report(report: Mapping[str, Any], out: str) -> Dict[str, str]:
    """``results.md``, ``results.json`` and ``results.csv`` in ``out``; returns their paths."""
    paths = {k: os.path.join(out, f"results.{k}") for k in ("md", "json", "csv")}
    with atomic_file(paths["md"]) as f:
        f.write(markdown(report))
    with atomic_file(paths["json"]) as f:
        json.dump(report, f, indent=2, default=str)
    with atomic_file(paths["csv"], newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for r in report["methods"]:
            writer.writerow({**{k: "" if r.get(k) is None else r.get(k) for k in CSV_FIELDS},
                             "chosen": point_label(r["chosen"]),
                             "seeds": " ".join(str(s) for s in r["seeds"])})
    return paths
