"""What action is in this video? The top-k classes of video files from a trained checkpoint.

Usage::

    python tools/predict.py --resume OUT/checkpoint-best.pth VIDEO_OR_FOLDER [...] \\
        [--finetune BACKBONE] [--topk 5] [--output predictions.json|.csv]
    python tools/predict.py --resume OUT VIDEO ...   # a run folder: its best, else newest
    python tools/predict.py --tasks ucf101=OUT1/checkpoint-best.pth,hmdb51=OUT2/... VIDEO ...

``--tasks`` answers every video for every task (APT or linear-probe checkpoints trained on one
backbone): the backbone runs once per batch, each clip with its own task's prompts and head
(``models/multitask.py``); the scores are those each checkpoint gives alone.

The network (backbone, transfer type and its settings, class count), the clip shape and the
test views come from the flags the checkpoint saved (``ckpt["args"]``); the clip and view flags
below override them. Each video gets the multi-view test of the engine (``engine_eval.final_test``:
``test_num_segment x test_num_crop`` views, decoded once, softmax averaged over the views), so the
probabilities are those ``run_class_apt.py --eval`` writes to ``predictions_rank0.json``.

Two halves, kept apart so that several checkpoints can share them: :func:`load_model` (a
checkpoint -> a :class:`LoadedModel` on its device) and :func:`predict` (a model and video paths
-> one :class:`Answer` per video).

Long on purpose: one command line (flags, video discovery, one and many tasks, output
formats); rebuilding the run is ``runs.load_run``.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402  (after the checkout is on sys.path, as the other tools)

import datasets  # noqa: E402
from datasets import ListFileError  # noqa: E402
import utils  # noqa: E402
from datasets.transforms import normalize_video  # noqa: E402
from engine_eval import final_test  # noqa: E402
from engine_eval import multi_view_scores as mean_over_views  # noqa: E402
from models import CheckpointError  # noqa: E402
from models.run_checkpoints import find_run_checkpoint, read_named_checkpoint  # noqa: E402
from models.multitask import MultiTaskModel  # noqa: E402
from runs import CLASSES_FILE, default_class_names, load_run, read_class_names  # noqa: E402
from models.config import FinetuneConfig  # noqa: E402
from utils.config import DATA_SETS, VIDEO_BACKENDS, ConfigError  # noqa: E402
from utils.outputs import OutputWriteError, atomic_file  # noqa: E402

logger = logging.getLogger("predict")

# Containers a folder is searched for (case-insensitive); a file named on the command line is
# taken whatever its extension.
VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".flv",
                    ".wmv", ".3gp", ".ogv")
# Flags that override the checkpoint's saved ones (None: keep the saved value).
CLIP_FLAGS = ("num_frames", "sampling_rate", "input_size", "short_side_size",
              "test_num_segment", "test_num_crop", "video_backend")
# The dataset names a bad video by this "list file" and its 1-based position in the inputs.
INPUT_NAME = "predict.py inputs"


# ------------------------------------------------------------------------------------- flags
def get_args_parser() -> argparse.ArgumentParser:
    """The flags of ``tools/predict.py``."""
    p = argparse.ArgumentParser(
        "tools/predict.py", description="Top-k action classes of video files, with the "
        "multi-view test of a trained checkpoint.")
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
    p.add_argument("--topk", type=int, default=5, help="classes per video (default 5)")
    p.add_argument("--class_names", default="", metavar="FILE",
                   help=f"'<label> <name>' per line (default: {CLASSES_FILE} next to the "
                        f"checkpoint's list files, else class indices)")
    p.add_argument("--output", default="", metavar="FILE",
                   help="also write the answers to FILE.json or FILE.csv (its folder is created "
                        "before any video is read)")
    g = p.add_argument_group("clip and views (default: the checkpoint's flags)")
    for name in ("num_frames", "sampling_rate", "input_size", "short_side_size",
                 "test_num_segment", "test_num_crop"):
        g.add_argument(f"--{name}", type=int, default=None)
    g.add_argument("--data_set", default=None, choices=DATA_SETS,
                   help="sampling of the data set (SSV2: one frame per segment)")
    g.add_argument("--video_backend", default=None, choices=VIDEO_BACKENDS)
    g = p.add_argument_group("run")
    g.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    g.add_argument("--batch_size", type=int, default=30,
                   help="clips per forward pass (default 30: whole videos of 2x3, 5x3 or 10x3 "
                        "views)")
    g.add_argument("--num_workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="decoding processes (default: up to 4, at most the CPU count)")
    g.add_argument("--amp", action="store_true", default=None,
                   help="mixed precision (default: the checkpoint's --amp/--no_amp; unset "
                        "there: on for CUDA, off on CPU)")
    g.add_argument("--no_amp", action="store_false", dest="amp")
    g.add_argument("--log_every", type=int, default=10,
                   help="progress line every N batches (default 10)")
    g.add_argument("--unsafe_load", action="store_true", default=False,
                   help="allow full unpickling of a checkpoint you trust")
    return p


# ------------------------------------------------------------------------- loading a model
@dataclass(frozen=True)
class LoadedModel:
    """A trained network ready to test, with the settings it was trained with.

    Args:
        path: the checkpoint.
        cfg: the checkpoint's settings, with the command line's clip and view overrides.
        model: the network on ``device`` (weights loaded).
        device: where it runs.
        amp_dtype: autocast dtype of its forward passes (None: float32).
        class_names: a name per class index.
    """

    path: str
    cfg: FinetuneConfig
    model: torch.nn.Module
    device: torch.device
    amp_dtype: Optional[torch.dtype]
    class_names: List[str]


def load_model(path: str, device: torch.device, overrides: Optional[Dict[str, Any]] = None,
               finetune: str = "", class_names: str = "", unsafe_load: bool = False
               ) -> LoadedModel:
    """Read a training checkpoint and build its network with its weights on ``device``
    (``runs.load_run``).

    Args:
        path: ``checkpoint-*.pth``, a DeepSpeed ``checkpoint-*/`` folder or a run folder.
        device: where the model runs.
        overrides: flags that replace the saved ones (``FinetuneConfig.from_checkpoint``).
        finetune: the backbone file, when the one the checkpoint recorded is gone.
        class_names: a ``<label> <name>`` file ('' = ``classes.txt`` next to the list files).
        unsafe_load: allow full unpickling.

    Raises:
        FileNotFoundError: no such checkpoint, or its backbone is gone and no ``finetune``.
        CheckpointError: unreadable checkpoint, or another backbone than it was trained on.
    """
    run = load_run(path, device, overrides=overrides, finetune=finetune,
                   unsafe_load=unsafe_load, class_names=class_names)
    cfg = run.config
    amp_dtype = utils.amp_dtype_for(device, cfg.run.amp, cfg.run.amp_dtype)
    return LoadedModel(run.checkpoint, cfg, run.model, device, amp_dtype, run.label_names)


# ------------------------------------------------------------------------------ the videos
def find_videos(inputs: Sequence[str]) -> List[str]:
    """The videos to answer for: each file as given, each folder's video files (recursively,
    sorted); a video reached twice is taken once.

    Raises:
        FileNotFoundError: an input that does not exist, or a folder without video files.
    """
    found: List[str] = []
    for item in inputs:
        if os.path.isdir(item):
            inside = sorted(os.path.join(folder, name)
                            for folder, _, names in os.walk(item) for name in names
                            if name.lower().endswith(VIDEO_EXTENSIONS))
            if not inside:
                raise FileNotFoundError(f"{item}: no video files in this folder "
                                        f"({', '.join(e[1:] for e in VIDEO_EXTENSIONS)})")
            found += inside
        elif os.path.exists(item):
            found.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such video file or folder")
    return list(dict.fromkeys(found))


def video_loader(videos: Sequence[str], cfg: FinetuneConfig, batch_size: int,
                 num_workers: int, device: torch.device) -> torch.utils.data.DataLoader:
    """The engine's test items (all views of a video in one item) for ``videos``, in order.

    Args:
        videos: paths; item ``i`` is ``videos[i]``.
        cfg: the clip and view settings (``cfg.data``).
        batch_size: clips per forward pass; a batch holds that many clips' videos (at least 1).
        num_workers: decoding processes.
        device: pins memory for CUDA.
    """
    data_cfg = cfg.data
    # The label is unknown: 0 is a valid class for the dataset and is never read back.
    records = [datasets.VideoRecord(path=v, label=0, line=i) for i, v in enumerate(videos, 1)]
    dataset = datasets.VideoClsDataset(records, "test", data_cfg, INPUT_NAME)
    videos_per_batch = max(1, batch_size // dataset.num_views)
    num_workers = min(num_workers, math.ceil(len(dataset) / videos_per_batch))  # none idle
    return torch.utils.data.DataLoader(
        dataset, batch_size=videos_per_batch, shuffle=False,
        num_workers=num_workers, collate_fn=datasets.collate_eval,
        pin_memory=device.type == "cuda",
        worker_init_fn=datasets.seed_worker if num_workers > 0 else None)


class VideoRate:
    """Wraps a test loader: a progress line with videos/s and the ETA every ``every`` batches.

    Args:
        loader: yields ``(views, labels, indices, bad_paths)`` batches.
        every: batches between progress lines.
    """

    def __init__(self, loader: torch.utils.data.DataLoader, every: int) -> None:
        self.loader = loader
        self.every = max(1, every)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        total = len(self.loader.dataset)
        done, start = 0, time.time()
        for i, batch in enumerate(self.loader):
            yield batch  # the caller tests the batch before the count goes on
            done += int(batch[2].shape[0])
            if (i + 1) % self.every == 0 or done == total:
                rate = done / max(time.time() - start, 1e-9)
                eta = int((total - done) / max(rate, 1e-9))
                logger.info("%d/%d videos, %.2f videos/s, ETA %d:%02d:%02d", done,
                            total, rate, eta // 3600, eta // 60 % 60, eta % 60)


# ------------------------------------------------------------------------------ predicting
@dataclass(frozen=True)
class Answer:
    """The top-k classes of one video, or why it has none.

    Args:
        video: the path as given.
        topk: ``(class index, name, probability)``, most probable first; empty when unreadable.
        error: why the video has no answer ('' when it has one).
        task: the task answered (``--tasks``; '' for one checkpoint).
    """

    video: str
    topk: List[tuple]
    error: str = ""
    task: str = ""


def multi_view_scores(loaded: LoadedModel, videos: Sequence[str], batch_size: int,
                      num_workers: int = 0, log_every: int = 10) -> List[Optional[List[float]]]:
    """The engine's multi-view test of ``videos``: per video the softmax scores averaged over
    its views, or None for a video that could not be read.

    Args:
        loaded: the model and its clip settings.
        videos: paths.
        batch_size: clips per forward pass.
        num_workers: decoding processes.
        log_every: batches between progress lines.
    """
    loader = video_loader(videos, loaded.cfg, batch_size, num_workers, loaded.device)
    # final_test's own "Test:" lines only at its first and last batch; VideoRate logs videos/s.
    preds = final_test(VideoRate(loader, log_every), loaded.model, loaded.device, None,
                       loaded.amp_dtype, print_freq=max(len(loader), 1), chunk_size=batch_size)
    scores: List[Optional[List[float]]] = [None] * len(videos)
    for p in preds:
        scores[int(p["index"])] = p["scores"] if p["label"] >= 0 else None
    return scores


def top_k(scores: Sequence[float], k: int, class_names: Sequence[str]) -> List[tuple]:
    """``(class index, name, probability)`` of the ``k`` highest scores, highest first."""
    values, indices = torch.tensor(scores, dtype=torch.float64).topk(min(k, len(scores)))
    return [(int(i), class_names[int(i)], float(v)) for v, i in zip(values, indices)]


def predict(loaded: LoadedModel, videos: Sequence[str], k: int = 5, batch_size: int = 30,
            num_workers: int = 0, log_every: int = 10) -> List[Answer]:
    """One :class:`Answer` per video, in order (unreadable ones with ``error`` set)."""
    scores = multi_view_scores(loaded, videos, batch_size, num_workers, log_every)
    return [Answer(v, top_k(s, k, loaded.class_names)) if s is not None
            else Answer(v, [], "could not be read") for v, s in zip(videos, scores)]


# ------------------------------------------------------------------------------ many tasks
def parse_tasks(items: Sequence[str]) -> Dict[str, str]:
    """``NAME=CKPT`` items (each may hold several, comma-separated) -> {name: checkpoint}, in
    order (a bare path is named by itself)."""
    tasks: Dict[str, str] = {}
    for item in (part for value in items for part in value.split(",") if part):
        name, sep, path = item.partition("=")
        name, path = (name, path) if sep else (item, item)
        if not name or not path or name in tasks:
            raise ConfigError(f"--tasks {item}: expected NAME=CKPT with a name used once")
        tasks[name] = path
    return tasks


def predict_tasks(tasks: Dict[str, str], videos: Sequence[str], device: torch.device,
                  overrides: Dict[str, Any], args: argparse.Namespace) -> List[Answer]:
    """Every video answered for every task, the backbone run once per batch of clips.

    The clips of a batch of videos (all their views) are repeated once per task with that
    task's id, so one forward pass of ``MultiTaskModel`` serves all tasks; each task's softmax
    is averaged over the views as in the engine's test. The clip and view settings are the
    first task's (all tasks share the backbone, hence its clip shape), with the overrides.
    """
    cfgs = [FinetuneConfig.from_checkpoint(read_named_checkpoint(path, "--tasks",
                                                                 args.unsafe_load),
                                           path, overrides, args.finetune, args.unsafe_load)
            for path in tasks.values()]
    names = [read_class_names(args.class_names, c.model.num_classes) if args.class_names
             else default_class_names(c) for c in cfgs]
    model = MultiTaskModel(tasks, backbone=args.finetune or None, unsafe=args.unsafe_load)
    model.to(device)
    amp_dtype = utils.amp_dtype_for(device, cfgs[0].run.amp, cfgs[0].run.amp_dtype)
    loader = video_loader(videos, cfgs[0], args.batch_size, args.num_workers, device)
    K = len(tasks)
    scores: List[List[Optional[List[float]]]] = [[None] * len(videos) for _ in range(K)]
    with torch.inference_mode(), utils.autocast(device, amp_dtype):
        for views, labels, indices, _ in VideoRate(loader, args.log_every):
            B, V = views.shape[:2]
            # (B*V, 3, T, H, W), video-major; uint8 pixels normalised on the device
            clips = normalize_video(views.flatten(0, 1).to(device))
            # Every clip once per task, the tasks of a clip side by side (row r: clip r // K,
            # task r % K), so every forward pass of --batch_size rows mixes the tasks; each
            # task's rows stay in clip order.
            task_ids = torch.arange(K, device=device).repeat(B * V)
            per_task: Dict[int, List[torch.Tensor]] = {t: [] for t in range(K)}
            for start in range(0, K * B * V, args.batch_size):
                rows = torch.arange(start, min(start + args.batch_size, K * B * V),
                                    device=device)
                out = model.forward_grouped(clips[rows // K], task_ids[rows])
                for t, (_, logits) in sorted(out.items()):
                    per_task[t].append(logits.float())
            for t in range(K):
                video_scores = mean_over_views(torch.cat(per_task[t]), B, V)  # (B, C_t)
                for j, (label, index) in enumerate(zip(labels.tolist(), indices.tolist())):
                    if label >= 0:
                        scores[t][int(index)] = video_scores[j].tolist()
    return [Answer(v, top_k(scores[t][i], args.topk, names[t]) if scores[t][i] is not None
                   else [], "" if scores[t][i] is not None else "could not be read", task)
            for i, v in enumerate(videos) for t, task in enumerate(tasks)]


# --------------------------------------------------------------------------------- outputs
def format_table(answers: Iterable[Answer]) -> str:
    """The answers as an aligned text table, one line per (video, rank) (with a task column
    for ``--tasks``)."""
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
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    right = (False,) + ((False,) if tasks else ()) + (True, True, False, True)  # numbers right
    return "\n".join("  ".join(cell.rjust(w) if r else cell.ljust(w)
                               for cell, w, r in zip(row, widths, right)).rstrip()
                     for row in rows)


def write_answers(answers: Sequence[Answer], path: str) -> None:
    """``path`` ending in .json: a list of ``{video, topk: [{class, name, prob}]}`` (an
    unreadable video has an empty ``topk`` and an ``error``); .csv: one row per (video, rank)
    with columns video, rank, class, name, prob, error."""
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


def unreadable_summary(answers: Sequence[Answer]) -> str:
    """'2 of 10 videos could not be read: a.mp4, b.mp4' ('' when every video was read)."""
    videos = list(dict.fromkeys(a.video for a in answers))  # --tasks: a video once per task
    bad = list(dict.fromkeys(a.video for a in answers if a.error))
    if not bad:
        return ""
    return f"{len(bad)} of {len(videos)} videos could not be read: {', '.join(bad)}"


# ------------------------------------------------------------------------------------ main
def check_args(args: argparse.Namespace) -> None:
    """Refuse flags that cannot work before any file is read (the message names the flag)."""
    if args.topk < 1:
        raise ConfigError(f"--topk must be >= 1, got {args.topk}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.output and not args.output.lower().endswith((".json", ".csv")):
        raise ConfigError(f"--output {args.output}: the name must end in .json or .csv")


def prepare_output(path: str) -> None:
    """Create the folder of ``--output`` and check it can be written, before any model is
    loaded or video decoded (a run that answered every video must not fail at the end).

    Raises:
        ConfigError: the folder cannot be created, or is not writable; names the file.
    """
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:  # a regular file on the way (ENOTDIR, EEXIST), no permission, ...
        raise ConfigError(f"--output {path}: cannot create its folder {folder}: "
                          f"{err.strerror or err}") from err
    if os.path.isdir(path):
        raise ConfigError(f"--output {path}: is a folder; name a .json or .csv file")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"--output {path}: cannot write into its folder {folder} "
                          f"(permission denied)")


def run(args: argparse.Namespace) -> int:
    """Answer for the videos of the parsed command line; returns the exit status (0 when at
    least one video was read, 1 when none could be)."""
    check_args(args)
    if args.output:
        prepare_output(args.output)
    videos = find_videos(args.videos)
    device = torch.device(args.device or utils.default_device_name())
    overrides = {k: getattr(args, k) for k in CLIP_FLAGS + ("data_set", "amp")}
    if args.tasks:
        tasks = {name: find_run_checkpoint(path, "--tasks")
                 for name, path in parse_tasks(args.tasks).items()}
        answers = predict_tasks(tasks, videos, device, overrides, args)
        return report(answers, args)
    loaded = load_model(args.resume, device, overrides, args.finetune, args.class_names,
                        args.unsafe_load)
    views = loaded.cfg.data.test_views
    logger.info("%d videos, %d views each (%d segments x %d crops), %d frames of %dx%d",
                len(videos), views, loaded.cfg.data.test_num_segment,
                loaded.cfg.data.test_num_crop, loaded.cfg.data.num_frames,
                loaded.cfg.data.input_size, loaded.cfg.data.input_size)
    answers = predict(loaded, videos, args.topk, args.batch_size, args.num_workers,
                      args.log_every)
    return report(answers, args)


def report(answers: Sequence[Answer], args: argparse.Namespace) -> int:
    """Print the table (and write ``--output``); the exit status (1: no video was read)."""
    print(format_table(answers), flush=True)  # the command's output, not a log line
    summary = unreadable_summary(answers)
    if summary:
        print(summary, flush=True)
    if args.output:
        write_answers(answers, args.output)
        logger.info("wrote %s", args.output)
    return 0 if any(not a.error for a in answers) else 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry: the exit status (2: a flag, file or checkpoint that cannot be used,
    with a message naming it)."""
    args = get_args_parser().parse_args(argv)
    utils.setup_logging()
    try:
        return run(args)
    except (ValueError, FileNotFoundError, ListFileError, CheckpointError) as err:
        logger.error("%s: %s", type(err).__name__, err)
        return 2
    except OutputWriteError as err:  # the message is the whole line: "cannot write FILE: ..."
        logger.error("%s", err)
        return 2


if __name__ == "__main__":
    sys.exit(main())
