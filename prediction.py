"""Predicting with trained checkpoints (what ``tools/predict.py`` runs once its flags are parsed).

Two halves, kept apart so that several checkpoints can share them: :func:`load_model` (a
checkpoint -> a :class:`LoadedModel` on its device, through ``runs.load_run``) and the
predictions:

* :func:`predict`: the top-k classes of whole video files, with the engine's multi-view test
  (``engine_eval.final_test``: ``test_num_segment x test_num_crop`` views, decoded once,
  softmax averaged over the views), so the probabilities are those ``run_class_apt.py --eval``
  writes to ``predictions_rank0.json``;
* :func:`predict_windows`: a :class:`Timeline` per video, the scores of sliding windows of a
  long video (``datasets/windows.py``: each frame decoded once, memory bounded by the window),
  each window tested as the test tests a video whose frames are the window's;
* :func:`load_tasks`, :func:`predict_tasks`, :func:`predict_windows_tasks`: the same for
  several tasks (APT or linear-probe checkpoints of one backbone) in one forward pass per batch
  (``models/multitask.py``); each task's scores are those its checkpoint gives alone.

Long on purpose: the three ways of predicting (videos, tasks, windows) share the loading, the
progress lines and the scoring, and are read together.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence

import torch

import datasets
import utils
from datasets import ListFileError
from datasets.transforms import normalize_video
from datasets.windows import FrameStream, Window, WindowBatches
from engine_eval import final_test
from engine_eval import multi_view_scores as mean_over_views
from models import CheckpointError
from models.config import FinetuneConfig
from models.multitask import MultiTaskModel
from models.run_checkpoints import find_run_checkpoint, read_named_checkpoint
from runs import default_class_names, load_run, read_class_names
from utils.config import ConfigError
from utils.outputs import OutputWriteError

logger = logging.getLogger("predict")

# What a command line reports in one line (exit status 2): a flag, file or checkpoint that
# cannot be used, and an output that cannot be written.
REFUSED = (ValueError, FileNotFoundError, ListFileError, CheckpointError)
UNWRITABLE = (OutputWriteError,)
# The dataset names a bad video by this "list file" and its 1-based position in the inputs.
INPUT_NAME = "predict.py inputs"
UNREADABLE = "could not be read"


# ------------------------------------------------------------------------- loading a model
def pick_device(name: Optional[str]) -> torch.device:
    """``--device``, or CUDA when available, else the CPU."""
    return torch.device(name or utils.default_device_name())


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


@dataclass(frozen=True)
class LoadedTasks:
    """Several tasks' checkpoints on one shared backbone (``--tasks``).

    Args:
        names: the task names, in task-id order.
        cfgs: each task's settings (with the overrides); the clip and views are the first's.
        class_names: each task's names per class index.
        model: the multi-task network on ``device``.
        device: where it runs.
        amp_dtype: autocast dtype (the first task's setting).
    """

    names: List[str]
    cfgs: List[FinetuneConfig]
    class_names: List[List[str]]
    model: MultiTaskModel
    device: torch.device
    amp_dtype: Optional[torch.dtype]


def parse_tasks(items: Sequence[str]) -> Dict[str, str]:
    """``NAME=CKPT`` items (each may hold several, comma-separated) -> {name: checkpoint or run
    folder}, in order (a bare path is named by itself).

    Raises:
        ConfigError: an item without a name or path, or a name used twice.
    """
    tasks: Dict[str, str] = {}
    for item in (part for value in items for part in value.split(",") if part):
        name, sep, path = item.partition("=")
        name, path = (name, path) if sep else (item, item)
        if not name or not path or name in tasks:
            raise ConfigError(f"--tasks {item}: expected NAME=CKPT with a name used once")
        tasks[name] = path
    return tasks


def load_tasks(tasks: Mapping[str, str], device: torch.device, overrides: Dict[str, Any],
               finetune: str = "", class_names: str = "", unsafe_load: bool = False
               ) -> LoadedTasks:
    """The tasks' checkpoints (a run folder: its best, else newest) on one backbone.

    Args:
        tasks: name -> checkpoint or run folder (``parse_tasks``).
        device: where the model runs.
        overrides: flags that replace the saved ones.
        finetune: the backbone file, when the one the checkpoints recorded is gone.
        class_names: a ``<label> <name>`` file for every task ('' = each one's ``classes.txt``).
        unsafe_load: allow full unpickling.
    """
    paths = {name: find_run_checkpoint(path, "--tasks") for name, path in tasks.items()}
    cfgs = [FinetuneConfig.from_checkpoint(read_named_checkpoint(path, "--tasks", unsafe_load),
                                           path, overrides, finetune, unsafe_load)
            for path in paths.values()]
    names = [read_class_names(class_names, c.model.num_classes) if class_names
             else default_class_names(c) for c in cfgs]
    model = MultiTaskModel(paths, backbone=finetune or None, unsafe=unsafe_load)
    model.to(device)
    amp_dtype = utils.amp_dtype_for(device, cfgs[0].run.amp, cfgs[0].run.amp_dtype)
    return LoadedTasks(list(paths), cfgs, names, model, device, amp_dtype)


def task_scores(tasks: LoadedTasks, views: torch.Tensor, batch_size: int) -> List[torch.Tensor]:
    """Each task's multi-view scores of a batch of items, the backbone run once per forward
    pass for all tasks.

    The clips of the items (all their views) are repeated once per task with that task's id,
    so one forward pass of ``MultiTaskModel`` serves all tasks; each task's softmax is averaged
    over the views as in the engine's test.

    Args:
        tasks: the model.
        views: uint8 ``(B, V, 3, T, H, W)``.
        batch_size: clips per forward pass.

    Returns:
        per task id, float ``(B, C_task)`` on the CPU.
    """
    device, K = tasks.device, len(tasks.names)
    B, V = views.shape[:2]
    with torch.inference_mode(), utils.autocast(device, tasks.amp_dtype):
        # (B*V, 3, T, H, W), item-major; uint8 pixels normalised on the device
        clips = normalize_video(views.flatten(0, 1).to(device))
        # Every clip once per task, the tasks of a clip side by side (row r: clip r // K,
        # task r % K), so every forward pass of batch_size rows mixes the tasks; each task's
        # rows stay in clip order.
        task_ids = torch.arange(K, device=device).repeat(B * V)
        per_task: Dict[int, List[torch.Tensor]] = {t: [] for t in range(K)}
        for start in range(0, K * B * V, batch_size):
            rows = torch.arange(start, min(start + batch_size, K * B * V), device=device)
            out = tasks.model.forward_grouped(clips[rows // K], task_ids[rows])
            for t, (_, logits) in sorted(out.items()):
                per_task[t].append(logits.float())
        return [mean_over_views(torch.cat(per_task[t]), B, V).cpu() for t in range(K)]


# ------------------------------------------------------------------------------ the videos
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


def _eta(seconds: float) -> str:
    s = int(max(seconds, 0))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


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
                logger.info("%d/%d videos, %.2f videos/s, ETA %s", done, total, rate,
                            _eta((total - done) / max(rate, 1e-9)))


class WindowRate:
    """Wraps :class:`WindowBatches`: a progress line with windows/s, the seconds of video done
    and the ETA (from the container's duration, when it states one) every ``every`` batches.

    Args:
        batches: one video's window batches.
        every: batches between progress lines.
    """

    def __init__(self, batches: WindowBatches, every: int) -> None:
        self.batches = batches
        self.every = max(1, every)

    def __len__(self) -> int:  # an estimate (final_test's first progress line): at least 1
        per_batch = self.batches.windows_per_batch
        windows = self.batches.expected_windows(self.batches.expected_duration) or 1
        return max(1, math.ceil(windows / per_batch))

    def __iter__(self) -> Iterator[Any]:
        done, start = 0, time.time()
        for i, batch in enumerate(self.batches):
            yield batch
            done += int(batch[2].shape[0])
            if (i + 1) % self.every == 0:
                elapsed = max(time.time() - start, 1e-9)
                at = self.batches.windows[-1].end if self.batches.windows else 0.0
                total = self.batches.expected_duration
                eta = _eta((total - at) * elapsed / max(at, 1e-9)) if total else "?"
                logger.info("%s: %d windows, %.2f windows/s, %.1f of %s s, ETA %s",
                            self.batches.path, done, done / elapsed, at,
                            f"{total:.1f}" if total else "?", eta)


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


def top_k(scores: Sequence[float], k: int, class_names: Sequence[str]) -> List[tuple]:
    """``(class index, name, probability)`` of the ``k`` highest scores, highest first."""
    values, indices = torch.tensor(scores, dtype=torch.float64).topk(min(k, len(scores)))
    return [(int(i), class_names[int(i)], float(v)) for v, i in zip(values, indices)]


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


def predict(loaded: LoadedModel, videos: Sequence[str], k: int = 5, batch_size: int = 30,
            num_workers: int = 0, log_every: int = 10) -> List[Answer]:
    """One :class:`Answer` per video, in order (unreadable ones with ``error`` set)."""
    scores = multi_view_scores(loaded, videos, batch_size, num_workers, log_every)
    return [Answer(v, top_k(s, k, loaded.class_names)) if s is not None
            else Answer(v, [], UNREADABLE) for v, s in zip(videos, scores)]


def predict_tasks(tasks: LoadedTasks, videos: Sequence[str], k: int = 5, batch_size: int = 30,
                  num_workers: int = 0, log_every: int = 10) -> List[Answer]:
    """Every video answered for every task (video-major: a video's tasks side by side), the
    backbone run once per forward pass for all tasks; the clip and view settings are the first
    task's (all tasks share the backbone, hence its clip shape)."""
    loader = video_loader(videos, tasks.cfgs[0], batch_size, num_workers, tasks.device)
    K = len(tasks.names)
    scores: List[List[Optional[List[float]]]] = [[None] * len(videos) for _ in range(K)]
    for views, labels, indices, _ in VideoRate(loader, log_every):
        per_task = task_scores(tasks, views, batch_size)
        for t in range(K):
            for j, (label, index) in enumerate(zip(labels.tolist(), indices.tolist())):
                if label >= 0:
                    scores[t][int(index)] = per_task[t][j].tolist()
    return [Answer(v, top_k(scores[t][i], k, tasks.class_names[t]), "", task)
            if scores[t][i] is not None else Answer(v, [], UNREADABLE, task)
            for i, v in enumerate(videos) for t, task in enumerate(tasks.names)]


# ------------------------------------------------------------------------------- timelines
@dataclass(frozen=True)
class Timeline:
    """The scores of one video's sliding windows (for one task).

    Args:
        video: the path as given.
        windows: the windows, in time order.
        scores: per window, the softmax scores averaged over its views (one per class).
        class_names: a name per class index.
        task: the task (``--tasks``; '' for one checkpoint).
        error: why decoding stopped early ('' when it did not; the windows before it stay).
        frames_decoded: frames the decoder produced (each frame once).
        max_frames_held: the most frames held at once (bounded by the window).
    """

    video: str
    windows: List[Window]
    scores: List[List[float]]
    class_names: List[str]
    task: str = ""
    error: str = ""
    frames_decoded: int = 0
    max_frames_held: int = 0

    def topk(self, k: int) -> List[List[tuple]]:
        """Per window, ``(class index, name, probability)`` of its ``k`` highest scores."""
        return [top_k(s, k, self.class_names) for s in self.scores]


def _window_batches(video: str, cfg: FinetuneConfig, window: float, stride: float,
                    batch_size: int, stream: Callable[[str], FrameStream]) -> WindowBatches:
    views = cfg.data.test_num_segment * cfg.data.test_num_crop
    return WindowBatches(video, cfg.data, window, stride, max(1, batch_size // views), stream)


def _log_clip(cfg: FinetuneConfig, window: float, stride: float) -> None:
    d = cfg.data
    sampled = ("one frame per segment of the window" if d.segment_sampling else
               f"{d.num_frames} frames {d.sampling_rate} apart, centred in the window")
    logger.info("windows of %.3f s every %.3f s; per window %d temporal x %d spatial views of %s",
                window, stride, d.test_num_segment, d.test_num_crop, sampled)


def predict_windows(loaded: LoadedModel, videos: Sequence[str], window: float, stride: float,
                    batch_size: int = 30, log_every: int = 10,
                    stream: Callable[[str], FrameStream] = FrameStream) -> List[Timeline]:
    """A :class:`Timeline` per video: each window's multi-view scores, from the engine's test
    loop (``engine_eval.final_test``) on batches of windows.

    Args:
        loaded: the model and its clip and view settings.
        videos: paths.
        window: seconds per window.
        stride: seconds between window starts.
        batch_size: clips per forward pass (windows per batch: ``batch_size // views``).
        log_every: batches between progress lines.
        stream: the frame source of a path (``datasets.windows.FrameStream``).
    """
    _log_clip(loaded.cfg, window, stride)
    timelines = []
    for video in videos:
        batches = _window_batches(video, loaded.cfg, window, stride, batch_size, stream)
        rate = WindowRate(batches, log_every)
        preds = final_test(rate, loaded.model, loaded.device, None, loaded.amp_dtype,
                           print_freq=10 ** 9, chunk_size=batch_size)
        scores = {int(p["index"]): p["scores"] for p in preds}
        timelines.append(Timeline(video, batches.windows,
                                  [scores[w.index] for w in batches.windows],
                                  loaded.class_names, "", batches.error, batches.frames_decoded,
                                  batches.max_frames_held))
    return timelines


def predict_windows_tasks(tasks: LoadedTasks, videos: Sequence[str], window: float,
                          stride: float, batch_size: int = 30, log_every: int = 10,
                          stream: Callable[[str], FrameStream] = FrameStream) -> List[Timeline]:
    """A :class:`Timeline` per video and task (video-major), every window's clips through the
    backbone once for all tasks; arguments as :func:`predict_windows`."""
    _log_clip(tasks.cfgs[0], window, stride)
    timelines = []
    for video in videos:
        batches = _window_batches(video, tasks.cfgs[0], window, stride, batch_size, stream)
        scores: List[Dict[int, List[float]]] = [{} for _ in tasks.names]
        for views, _, indices, _ in WindowRate(batches, log_every):
            for t, s in enumerate(task_scores(tasks, views, batch_size)):
                scores[t].update(zip(indices.tolist(), s.tolist()))
        timelines += [Timeline(video, batches.windows, [scores[t][w.index] for w in batches.windows],
                               tasks.class_names[t], name, batches.error, batches.frames_decoded,
                               batches.max_frames_held)
                      for t, name in enumerate(tasks.names)]
    return timelines

