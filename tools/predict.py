"""What action is in this video? The top-k classes of video files from a trained checkpoint, or
a timeline of them over a long video.

Usage::

    python tools/predict.py --resume OUT/checkpoint-best.pth VIDEO_OR_FOLDER [...] \\
        [--finetune BACKBONE] [--topk 5] [--output predictions.json|.csv]
    python tools/predict.py --resume OUT VIDEO ...   # a run folder: its best, else newest
    python tools/predict.py --tasks ucf101=OUT1/checkpoint-best.pth,hmdb51=OUT2/... VIDEO ...
    python tools/predict.py --resume OUT --window 2 --stride 1 LONG_VIDEO \\
        [--output timeline.csv|.json] [--plot timeline.png]

``--tasks`` answers every video for every task (APT or linear-probe checkpoints trained on one
backbone): the backbone runs once per batch, each clip with its own task's prompts and head
(``models/multitask.py``); the scores are those each checkpoint gives alone.

The network (backbone, transfer type and its settings, class count), the clip shape and the
test views come from the flags the checkpoint saved (``ckpt["args"]``); the clip and view flags
below override them. Each video gets the multi-view test of the engine (``engine_eval.final_test``:
``test_num_segment x test_num_crop`` views, decoded once, softmax averaged over the views), so the
probabilities are those ``run_class_apt.py --eval`` writes to ``predictions_rank0.json``.

``--window SECONDS`` gives a timeline instead: one row per window (``--stride`` seconds apart),
each window tested as the test tests a video whose frames are the window's (one temporal view
unless ``--test_num_segment`` is given, the test's spatial crops), the video decoded once in
order with memory bounded by the window (``datasets/windows.py``).

This module holds the flags, the inputs and the outputs only: the torch side
(``prediction.py``: loading, multi-view scores, tasks, windows) is imported once the flags are
parsed, so ``--help`` and a refused flag answer without torch (docs/CONVENTIONS.md, "Entry
points: flags first, torch after").

Long on purpose: one command line with two kinds of output (answers per video, timelines per
window), each as a table, CSV, JSON and (timelines) a plot.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
from typing import Any, Iterable, List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tools import plots  # noqa: E402  (matplotlib only when a plot is drawn)
# Folders are searched for the VIDEO_EXTENSIONS containers; a file named is taken as it is.
from datasets.listfile import VIDEO_EXTENSIONS, find_videos  # noqa: E402
from utils.config import DATA_SETS, SAMPLINGS, VIDEO_BACKENDS, ConfigError  # noqa: E402

logger = logging.getLogger("predict")

# Flags that override the checkpoint's saved ones (None: keep the saved value).
CLIP_FLAGS = ("num_frames", "sampling_rate", "sampling", "input_size", "short_side_size",
              "test_num_segment", "test_num_crop", "video_backend")
PLOT_FORMATS = (".png", ".pdf", ".svg")
# Curves per plotted timeline at most (more are unreadable).
MAX_CURVES = 10


# ------------------------------------------------------------------------------------- flags
def get_args_parser() -> argparse.ArgumentParser:
    """The flags of ``tools/predict.py``."""
    p = argparse.ArgumentParser(
        "tools/predict.py", description="Top-k action classes of video files, with the "
        "multi-view test of a trained checkpoint; with --window, a timeline of them over a "
        "long video.")
    p.add_argument("videos", nargs="+", metavar="VIDEO",
                   help="video files, or folders searched recursively for "
                        f"{', '.join(e[1:] for e in VIDEO_EXTENSIONS)} files")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--resume", metavar="CKPT",
                       help="training checkpoint of run_class_apt.py (checkpoint-*.pth or a "
                            "DeepSpeed checkpoint-*/ folder), or a run's --output_dir (its "
                            "best checkpoint, else its newest)")
    which.add_argument("--tasks", action="append", metavar="NAME=CKPT[,NAME=CKPT...]",
                       help="several tasks' checkpoints (APT or linear probing; a run folder "
                            "as for --resume) on one shared frozen backbone, comma-separated or "
                            "the flag repeated; answered in one forward pass per batch, every "
                            "video for every task")
    p.add_argument("--finetune", default="", metavar="BACKBONE",
                   help="the backbone the checkpoint was trained on, when the file it recorded "
                        "is no longer there (checkpoints of frozen-backbone methods hold only "
                        "the trained tensors)")
    p.add_argument("--topk", type=int, default=5, help="classes per video or window (default 5)")
    p.add_argument("--class_names", default="", metavar="FILE",
                   help="'<label> <name>' per line (default: classes.txt next to the "
                        "checkpoint's list files, else class indices)")
    p.add_argument("--output", default="", metavar="FILE",
                   help="also write the answers (or timelines) to FILE.json or FILE.csv (its "
                        "folder is created before any video is read)")
    g = p.add_argument_group("timeline of a long video")
    g.add_argument("--window", type=float, default=None, metavar="SECONDS",
                   help="score windows of this many seconds instead of whole videos: one row "
                        "per window; each frame is decoded once, memory bounded by the window")
    g.add_argument("--stride", type=float, default=None, metavar="SECONDS",
                   help="seconds between window starts (default: --window, windows back to "
                        "back; smaller: overlapping windows)")
    g.add_argument("--plot", default="", metavar="FILE",
                   help=f"also draw the top classes' probabilities over time "
                        f"({', '.join(f[1:] for f in PLOT_FORMATS)}; one panel per video and "
                        f"task)")
    g = p.add_argument_group("clip and views (default: the checkpoint's flags; with --window, "
                             "one temporal view per window)")
    for name in ("num_frames", "sampling_rate", "input_size", "short_side_size",
                 "test_num_segment", "test_num_crop"):
        g.add_argument(f"--{name}", type=int, default=None)
    g.add_argument("--data_set", default=None, choices=DATA_SETS,
                   help="sampling of the data set (SSV2: one frame per segment)")
    g.add_argument("--sampling", default=None, choices=SAMPLINGS,
                   help="frame sampling over the data set's own: segment (one frame per "
                        "segment, TSN/SSv2) or dense (Kinetics/UCF)")
    g.add_argument("--video_backend", default=None, choices=VIDEO_BACKENDS,
                   help="decoder of whole videos (--window always decodes with PyAV, in order)")
    g = p.add_argument_group("run")
    g.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    g.add_argument("--batch_size", type=int, default=30,
                   help="clips per forward pass (default 30: whole videos of 2x3, 5x3 or 10x3 "
                        "views)")
    g.add_argument("--num_workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="decoding processes (default: up to 4, at most the CPU count; "
                        "--window decodes in the main process)")
    g.add_argument("--amp", action="store_true", default=None,
                   help="mixed precision (default: the checkpoint's --amp/--no_amp; unset "
                        "there: on for CUDA, off on CPU)")
    g.add_argument("--no_amp", action="store_false", dest="amp")
    g.add_argument("--log_every", type=int, default=10,
                   help="progress line every N batches (default 10)")
    g.add_argument("--unsafe_load", action="store_true", default=False,
                   help="allow full unpickling of a checkpoint you trust")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Refuse flags that cannot work before any file is read (the message names the flag)."""
    if args.topk < 1:
        raise ConfigError(f"--topk must be >= 1, got {args.topk}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.output and not args.output.lower().endswith((".json", ".csv")):
        raise ConfigError(f"--output {args.output}: the name must end in .json or .csv")
    if args.window is None:
        for flag in ("stride", "plot"):
            if getattr(args, flag):
                raise ConfigError(f"--{flag} needs --window (a timeline of windows)")
        return
    if not args.window > 0:
        raise ConfigError(f"--window must be > 0 seconds, got {args.window}")
    if args.stride is not None and not args.stride > 0:
        raise ConfigError(f"--stride must be > 0 seconds, got {args.stride}")
    if args.plot and not args.plot.lower().endswith(PLOT_FORMATS):
        raise ConfigError(f"--plot {args.plot}: the name must end in "
                          f"{', '.join(PLOT_FORMATS)}")


def overrides_of(args: argparse.Namespace) -> dict:
    """The settings the command line changes in the checkpoint's (None: keep its own).

    With ``--window`` a window is tested with one temporal view unless ``--test_num_segment``
    says otherwise: the windows themselves cover the video in time."""
    overrides = {k: getattr(args, k) for k in CLIP_FLAGS + ("data_set", "amp")}
    if args.window is not None and args.test_num_segment is None:
        overrides["test_num_segment"] = 1
    return overrides


# ------------------------------------------------------------------------------ the videos
def prepare_output(path: str, flag: str = "--output") -> None:
    """Create the folder of an output file and check it can be written, before any model is
    loaded or video decoded (a run that answered every video must not fail at the end).

    Raises:
        ConfigError: the folder cannot be created, or is not writable; names the file.
    """
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:  # a regular file on the way (ENOTDIR, EEXIST), no permission, ...
        raise ConfigError(f"{flag} {path}: cannot create its folder {folder}: "
                          f"{err.strerror or err}") from err
    if os.path.isdir(path):
        raise ConfigError(f"{flag} {path}: is a folder; name a file")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: cannot write into its folder {folder} "
                          f"(permission denied)")


# --------------------------------------------------------------------------------- answers
def format_table(answers: Iterable[Any]) -> str:
    """The answers (``prediction.Answer``) as an aligned text table, one line per (video, rank)
    (with a task column for ``--tasks``)."""
    answers = list(answers)
    tasks = any(a.task for a in answers)
    rows = [("video",) + (("task",) if tasks else ()) + ("#", "class", "name", "prob")]
    for a in answers:
        task = (a.task,) if tasks else ()
        if a.error:
            rows.append((a.video,) + task + ("-", "-", a.error, "-"))
        for rank, (index, name, prob) in enumerate(a.topk, start=1):
            rows.append((a.video if rank == 1 else "",) + (task if rank == 1 else ("",) * len(task))
                        + (str(rank), str(index), name, f"{prob:.4f}"))
    right = (False,) + ((False,) if tasks else ()) + (True, True, False, True)  # numbers right
    return _aligned(rows, right)


def _aligned(rows: Sequence[Sequence[str]], right: Sequence[bool]) -> str:
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return "\n".join("  ".join(cell.rjust(w) if r else cell.ljust(w)
                               for cell, w, r in zip(row, widths, right)).rstrip()
                     for row in rows)


def write_answers(answers: Sequence[Any], path: str) -> None:
    """``path`` ending in .json: a list of ``{video, topk: [{class, name, prob}]}`` (an
    unreadable video has an empty ``topk`` and an ``error``); .csv: one row per (video, rank)
    with columns video, rank, class, name, prob, error."""
    from utils.outputs import atomic_file  # after the flags: utils.outputs imports torch
    with atomic_file(path, newline="") as f:
        if path.lower().endswith(".json"):
            json.dump([{"video": a.video, **({"task": a.task} if a.task else {}),
                        "topk": [{"class": c, "name": n, "prob": p} for c, n, p in a.topk],
                        **({"error": a.error} if a.error else {})} for a in answers], f, indent=1)
            f.write("\n")
        else:
            out = csv.writer(f)
            tasks = any(a.task for a in answers)
            out.writerow(["video"] + (["task"] if tasks else []) +
                         ["rank", "class", "name", "prob", "error"])
            for a in answers:
                task = [a.task] if tasks else []
                if a.error:
                    out.writerow([a.video] + task + ["", "", "", "", a.error])
                for rank, (index, name, prob) in enumerate(a.topk, start=1):
                    out.writerow([a.video] + task + [rank, index, name, repr(prob), ""])


def unreadable_summary(answers: Sequence[Any]) -> str:
    """'2 of 10 videos could not be read: a.mp4, b.mp4' ('' when every video was read)."""
    videos = list(dict.fromkeys(a.video for a in answers))  # --tasks: a video once per task
    bad = list(dict.fromkeys(a.video for a in answers if a.error))
    if not bad:
        return ""
    return f"{len(bad)} of {len(videos)} videos could not be read: {', '.join(bad)}"


# ------------------------------------------------------------------------------- timelines
def format_timelines(timelines: Sequence[Any], k: int) -> str:
    """The timelines (``prediction.Timeline``) as an aligned table: one line per window with
    its start and end (seconds) and its top-k ``name prob`` (with a task column for
    ``--tasks``); a video that stopped early or could not be read has a line saying why."""
    tasks = any(t.task for t in timelines)
    rows = [("video",) + (("task",) if tasks else ()) + ("start", "end") +
            tuple(f"#{r}" for r in range(1, k + 1))]
    for t in timelines:
        task = (t.task,) if tasks else ()
        for i, (w, top) in enumerate(zip(t.windows, t.topk(k))):
            cells = [f"{name} {prob:.4f}" for _, name, prob in top]
            rows.append((t.video if i == 0 else "",) + (task if i == 0 else ("",) * len(task))
                        + (f"{w.start:.2f}", f"{w.end:.2f}") + tuple(cells)
                        + ("",) * (k - len(cells)))
        if t.error:
            rows.append((t.video if not t.windows else "",) + task + ("-", "-", t.error)
                        + ("",) * (k - 1))
    right = (False,) + ((False,) if tasks else ()) + (True, True) + (False,) * k
    return _aligned(rows, right)


def write_timelines(timelines: Sequence[Any], path: str, k: int, window: float,
                    stride: float) -> None:
    """``path`` ending in .json: a list of ``{video, task?, window, stride, frames_decoded,
    windows: [{start, end, frames, topk: [{class, name, prob}]}], error?}``; .csv: one row per
    window, ``video[,task],start,end,frames,class_1,name_1,prob_1,...,error`` (a video that
    stopped early or could not be read: one more row with only ``error`` set)."""
    from utils.outputs import atomic_file  # after the flags: utils.outputs imports torch
    with atomic_file(path, newline="") as f:
        if path.lower().endswith(".json"):
            json.dump([{"video": t.video, **({"task": t.task} if t.task else {}),
                        "window": window, "stride": stride, "frames_decoded": t.frames_decoded,
                        "windows": [{"start": w.start, "end": w.end, "frames": w.num_frames,
                                     "topk": [{"class": c, "name": n, "prob": p}
                                              for c, n, p in top]}
                                    for w, top in zip(t.windows, t.topk(k))],
                        **({"error": t.error} if t.error else {})} for t in timelines],
                      f, indent=1)
            f.write("\n")
            return
        out = csv.writer(f)
        tasks = any(t.task for t in timelines)
        out.writerow(["video"] + (["task"] if tasks else []) + ["start", "end", "frames"] +
                     [f"{col}_{r}" for r in range(1, k + 1) for col in ("class", "name", "prob")]
                     + ["error"])
        for t in timelines:
            task = [t.task] if tasks else []
            for w, top in zip(t.windows, t.topk(k)):
                cells = [c for index, name, prob in top for c in (index, name, repr(prob))]
                out.writerow([t.video] + task + [repr(w.start), repr(w.end), w.num_frames] +
                             cells + [""] * (3 * k - len(cells)) + [""])
            if t.error:
                out.writerow([t.video] + task + ["", "", ""] + [""] * (3 * k) + [t.error])


def plot_timelines(timelines: Sequence[Any], path: str, k: int) -> None:
    """Draw each timeline's classes over time (``tools/plots.py``): every class that is the
    most probable in some window, and at least ``k`` classes (those with the highest peak),
    ``MAX_CURVES`` at most."""
    panels = []
    for t in timelines:
        if not t.windows:
            continue
        peaks = [max(s[c] for s in t.scores) for c in range(len(t.class_names))]
        by_peak = sorted(range(len(peaks)), key=lambda c: -peaks[c])
        winners = {max(range(len(s)), key=s.__getitem__) for s in t.scores}
        top = ([c for c in by_peak if c in winners] +
               [c for c in by_peak if c not in winners])[:min(max(k, len(winners)), MAX_CURVES)]
        panels.append(plots.TimelinePanel(
            title=t.video + (f" ({t.task})" if t.task else ""),
            starts=[w.start for w in t.windows], ends=[w.end for w in t.windows],
            curves={t.class_names[c]: [s[c] for s in t.scores] for c in top}))
    if not panels:
        logger.warning("--plot %s: no video had a window to draw; not written", path)
        return
    plots.scores_over_time(panels, path)
    logger.info("wrote %s", path)


# ------------------------------------------------------------------------------------ main
def run(args: argparse.Namespace) -> int:
    """Answer for the videos of the parsed command line; returns the exit status (0 when at
    least one video was read, 1 when none could be)."""
    check_args(args)
    for flag in ("output", "plot"):
        if getattr(args, flag):
            prepare_output(getattr(args, flag), f"--{flag}")
    videos = find_videos(args.videos)
    # The torch layers load once the flags are parsed and checked, so --help and a refused flag
    # cost no torch import (docs/CONVENTIONS.md, "Entry points").
    import prediction
    device = prediction.pick_device(args.device)
    overrides = overrides_of(args)
    if args.tasks:
        model = prediction.load_tasks(prediction.parse_tasks(args.tasks), device, overrides,
                                      args.finetune, args.class_names, args.unsafe_load)
        cfg = model.cfgs[0]
    else:
        model = prediction.load_model(args.resume, device, overrides, args.finetune,
                                      args.class_names, args.unsafe_load)
        cfg = model.cfg
    if args.window is not None:
        stride = args.stride or args.window
        predict = (prediction.predict_windows_tasks if args.tasks
                   else prediction.predict_windows)
        timelines = predict(model, videos, args.window, stride, args.batch_size, args.log_every)
        return report_timelines(timelines, args, stride)
    d = cfg.data
    logger.info("%d videos, %d views each (%d segments x %d crops), %d frames of %dx%d",
                len(videos), d.test_views, d.test_num_segment, d.test_num_crop, d.num_frames,
                d.input_size, d.input_size)
    predict = prediction.predict_tasks if args.tasks else prediction.predict
    answers = predict(model, videos, args.topk, args.batch_size, args.num_workers,
                      args.log_every)
    return report(answers, args)


def report(answers: Sequence[Any], args: argparse.Namespace) -> int:
    """Print the table (and write ``--output``); the exit status (1: no video was read)."""
    print(format_table(answers), flush=True)  # the command's output, not a log line
    summary = unreadable_summary(answers)
    if summary:
        print(summary, flush=True)
    if args.output:
        write_answers(answers, args.output)
        logger.info("wrote %s", args.output)
    return 0 if any(not a.error for a in answers) else 1


def report_timelines(timelines: Sequence[Any], args: argparse.Namespace, stride: float) -> int:
    """Print the timelines (and write ``--output`` and ``--plot``); the exit status (1: no
    video gave a window)."""
    print(format_timelines(timelines, args.topk), flush=True)  # the command's output
    videos = {t.video: t for t in timelines}  # --tasks: a video once per task
    bad = [v for v, t in videos.items() if not t.windows]
    if bad:
        print(f"{len(bad)} of {len(videos)} videos could not be read: {', '.join(bad)}",
              flush=True)
    logger.info("%d windows from %d videos, %d frames decoded", sum(len(t.windows) for t in
                videos.values()), len(videos), sum(t.frames_decoded for t in videos.values()))
    if args.output:
        write_timelines(timelines, args.output, args.topk, args.window, stride)
        logger.info("wrote %s", args.output)
    if args.plot:
        plot_timelines(timelines, args.plot, args.topk)
    return 0 if len(bad) < len(videos) else 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry: the exit status (2: a flag, file or checkpoint that cannot be used,
    with a message naming it)."""
    args = get_args_parser().parse_args(argv)
    try:
        check_args(args)
    except ConfigError as err:  # refused before torch is imported
        logger.error("%s: %s", type(err).__name__, err)
        return 2
    import prediction  # after the flags, as in run: its error types come with the torch layers
    import utils
    utils.setup_logging()
    try:
        return run(args)
    except prediction.REFUSED as err:
        logger.error("%s: %s", type(err).__name__, err)
        return 2
    except prediction.UNWRITABLE as err:  # the message is the whole line: "cannot write FILE"
        logger.error("%s", err)
        return 2


if __name__ == "__main__":
    sys.exit(main())
