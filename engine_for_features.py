"""Feature extraction (docs/FEATURES.md): the head's input of any checkpoint for every video of a
list file or folder, averaged over the test views, written per video (``.npy``) or into one
``.npz`` / HDF5 file; resumable, sharded over the processes of a launcher.

The model is any checkpoint ``models.released.read_source`` reads: a training checkpoint or run
folder of ``run_class_apt.py`` and a released classifier (rebuilt as ``runs.load_run`` does), or
a pre-trained backbone (built as ``--finetune`` loads it, with no head). Each video is read as
the final test reads it (``datasets.VideoClsDataset`` in test mode: ``test_num_segment x
test_num_crop`` views), its views go through the network with the method folded
(``folded_for_inference``), and the pooled feature (``VisionTransformer.pool``: ``fc_norm`` of
the mean token, or the first token) of each view is averaged over the views (``--per_view``
keeps them apart); ``--tokens`` also keeps the tokens before pooling.

Each video's arrays are written as soon as they are computed, as ``.npy`` files in a folder (the
output for ``npy``, ``<output>.parts/`` for the single-file formats), so an interrupted run
resumes where it stopped; the single file is assembled from them (and from the videos of an
earlier file at that path) at the end, by rank 0, and the parts are removed.

Long on purpose: loading the model of any checkpoint, the videos, the loop and the three output
formats with their resumption are one tool's library, read together.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

import utils
from datasets import VideoClsDataset, VideoRecord, collate_eval, parse_list_file, seed_worker
from datasets.listfile import find_video_files
from datasets.transforms import normalize_video
from models.config import FinetuneConfig
from models.pretrained import load_state_dict_into, set_layer_norm_eps
from models.released import ForeignWeights, read_source
from models.transfer import folded_for_inference
from runs import build_model, rebuild_run
from utils.config import ConfigError, DataConfig
from utils.dist import all_gather_object, barrier, broadcast_from_main, get_rank, get_world_size
from utils.outputs import atomic_file, make_dirs, temporary_path, writing

logger = logging.getLogger(__name__)

FORMATS = ("npy", "npz", "h5")
SETTINGS_FILE = "features.json"
TOKENS_SUFFIX = ".tokens"


# ------------------------------------------------------------------------------ the model
@dataclass(frozen=True)
class FeatureModel:
    """A network to take features from, with the clip and view settings to read videos with.

    Args:
        model: on its device (eval mode is set around the forward passes).
        data: the clip and view settings (``DataConfig``).
        checkpoint: the file or folder it was read from.
        kind: what that was (a training checkpoint, a released classifier, a backbone).
        pooling: how the feature is pooled (``mean+fc_norm`` or ``first token``).
        class_names: the classes of its head, None without one.
    """

    model: nn.Module
    data: DataConfig
    checkpoint: str
    kind: str
    pooling: str
    class_names: Optional[List[str]]


def load_feature_model(source: str, device: torch.device,
                       overrides: Optional[Mapping[str, Any]] = None, use_cls: bool = False,
                       finetune: str = "", unsafe_load: bool = False) -> FeatureModel:
    """The network of any checkpoint, for features.

    Args:
        source: a run folder or training checkpoint, a released VideoMAE classifier (``.pth``
            or Hugging Face folder), or a pre-trained backbone (any ``--finetune`` layout).
        device: where it runs.
        overrides: clip and view flags (``num_frames``, ``test_num_crop``, ``data_set``,
            ...) over the checkpoint's (None: keep).
        use_cls: a backbone only: pool the first token through ``norm`` instead of the mean
            through ``fc_norm`` (a classifier pools as it was trained).
        finetune: the backbone of a frozen-backbone run whose recorded file is gone.
        unsafe_load: allow full unpickling.
    """
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    path, found = read_source(source, "--checkpoint", unsafe_load)
    if isinstance(found, ForeignWeights) and found.num_classes is None:
        return _backbone_model(path, found, device, given, use_cls)
    if use_cls:
        raise ConfigError("--use_cls is for a backbone without a classifier; a trained "
                          "classifier pools as it was trained")
    ckpt = found.run_checkpoint() if isinstance(found, ForeignWeights) else found
    run = rebuild_run(path, ckpt, device, overrides=given, finetune=finetune,
                      unsafe_load=unsafe_load)
    kind = f"released {found.format} classifier" if isinstance(found, ForeignWeights) \
        else f"training checkpoint ({run.config.model.transfer_type})"
    return FeatureModel(run.model, run.config.data, path, kind,
                        _pooling(run.model), run.label_names)


def _backbone_model(path: str, weights: ForeignWeights, device: torch.device,
                    given: Mapping[str, Any], use_cls: bool) -> FeatureModel:
    """A pre-trained backbone loaded as ``--finetune`` loads it, into the ``end2end`` model of
    its inferred flags without a head; ``fc_norm`` keeps its identity initialisation."""
    flags = {**weights.flags, **given, "transfer_type": "end2end", "use_mean_pooling": not use_cls,
             "data_set": given.get("data_set", "custom"), "nb_classes": None}
    # The class count is not read (no head); DataConfig still wants one for a named data set.
    flags["nb_classes"] = 1 if flags["data_set"] == "custom" else None
    cfg = FinetuneConfig.from_args(flags)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_classes=0))
    model = build_model(cfg)
    unknown = [f"--{k} {getattr(cfg.data, k)}" for k in ("num_frames", "input_size")
               if k not in weights.flags and k not in given]
    if unknown:
        logger.warning("%s does not record its clip shape: using %s (pass the flags it was "
                       "pre-trained with)", path, " ".join(unknown))
    report = load_state_dict_into(model, weights.state, path, weights.format, weights.dropped)
    set_layer_norm_eps(model, weights.layer_norm_eps, path)
    logger.info("backbone %s (%s): %d tensors loaded; %s", path, weights.format,
                len(report.loaded), ", ".join(f"--{k} {v}" for k, v in weights.flags.items()))
    return FeatureModel(model.to(device), cfg.data, path, f"{weights.format} backbone",
                        _pooling(model), None)


def _pooling(model: nn.Module) -> str:
    return "mean+fc_norm" if getattr(model, "fc_norm", None) is not None else "first token"


# ------------------------------------------------------------------------------ the videos
@dataclass(frozen=True)
class VideoSet:
    """The videos to extract, in order.

    Args:
        paths: resolved paths.
        ids: a name per video, unique: its path relative to ``root`` without the extension
            (the output's keys and file names).
        labels: per video from a list file, None for a folder.
        source: the list file or folder, for messages.
    """

    paths: List[str]
    ids: List[str]
    labels: Optional[List[int]]
    source: str


def read_videos(source: str, data_root: str = "") -> VideoSet:
    """The videos of a list file (``<path> <label>`` lines, docs/FORMATS.md) or a folder.

    Args:
        source: a list file or a folder searched recursively for video files.
        data_root: prefix of a list file's relative paths ('': the list file's folder).

    Raises:
        FileNotFoundError: no such file or folder, or a folder without videos.
        ListFileError: a list file that cannot be read, naming the line.
        ConfigError: two videos with the same name but another extension.
    """
    if os.path.isdir(source):
        paths, labels, root = find_video_files(source), None, source
    else:
        # Labels are kept as given, not checked against a class count.
        records = parse_list_file(source, sys.maxsize, data_root)
        paths, labels = [r.path for r in records], [r.label for r in records]
        root = data_root or os.path.dirname(os.path.abspath(source))
    ids = [video_id(p, root) for p in paths]
    seen: Dict[str, str] = {}
    for i, p in zip(ids, paths):
        if i in seen:
            raise ConfigError(f"{source}: {seen[i]} and {p} would both be written as {i!r}")
        seen[i] = p
    return VideoSet(paths, ids, labels, source)


def video_id(path: str, root: str) -> str:
    """``path`` relative to ``root``, without its extension, '/'-separated (a path outside
    ``root``: its absolute path without the leading '/')."""
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
    if rel.startswith(os.pardir):
        rel = os.path.abspath(path).lstrip(os.sep)
    return os.path.splitext(rel)[0].replace(os.sep, "/")


# ------------------------------------------------------------------------------ the features
def clip_features(model: nn.Module, clips: torch.Tensor, tokens: bool
                  ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The pooled features (B, D) of normalised clips, the head's input, and with ``tokens``
    the tokens they pool (B, N, D)."""
    out = model.forward_tokens(clips)
    return model.pool(out), (out if tokens else None)


@dataclass(frozen=True)
class Output:
    """Where and how features are written.

    Args:
        path: a folder (``npy``) or the ``.npz`` / ``.h5`` file.
        format: one of ``FORMATS``.
        tokens: also the tokens before pooling.
        per_view: one row per view instead of the mean over the views.
    """

    path: str
    format: str
    tokens: bool = False
    per_view: bool = False

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"--format {self.format}: choose one of {', '.join(FORMATS)}")

    @property
    def parts(self) -> str:
        """The folder of the per-video ``.npy`` files."""
        return self.path if self.format == "npy" else self.path + ".parts"

    @property
    def bad_list(self) -> str:
        """The file that lists the videos that could not be read."""
        return os.path.join(self.path, "bad_videos.txt") if self.format == "npy" \
            else self.path + ".bad_videos.txt"

    def part(self, vid: str, tokens: bool = False) -> str:
        return os.path.join(self.parts, vid + (TOKENS_SUFFIX if tokens else "") + ".npy")

    def done(self, vid: str) -> bool:
        # The pooled file is written last: it marks a finished video.
        return os.path.isfile(self.part(vid))


def extract(fm: FeatureModel, videos: VideoSet, out: Output, batch_size: int = 30,
            num_workers: int = 2, log_every: int = 10,
            amp_dtype: Optional[torch.dtype] = None) -> Dict[str, Any]:
    """Features of every video not yet written, this process's share of them when a process
    group is up (video ``i`` of those left goes to rank ``i % world``); rank 0 then lists the
    unreadable videos and assembles a single-file output.

    Args:
        fm: the network and its view settings.
        videos: what to extract.
        out: where.
        batch_size: clips per forward pass (whole videos: at least one video's views).
        num_workers: decoding processes.
        log_every: batches between progress lines (clips/s, ETA).
        amp_dtype: autocast dtype, None for float32.

    Returns:
        ``{"videos", "written", "skipped", "bad", "bad_paths", "output", "dim"}`` (the same on
        every rank).

    Raises:
        ConfigError: the output holds features of other settings.
    """
    rank, world = get_rank(), get_world_size()
    settings = _settings(fm, out)
    earlier = _earlier_ids(out, settings) if rank == 0 else set()
    if rank == 0:
        make_dirs(out.parts)
        _check_settings(os.path.join(out.parts, SETTINGS_FILE), settings)
    # Rank 0 decides what is left, before anyone writes: every rank takes its share of one list.
    todo = broadcast_from_main(
        [i for i, vid in enumerate(videos.ids) if vid not in earlier and not out.done(vid)])
    mine = todo[rank::world]
    logger.info("%d of %d videos to extract (%d already written), %d views each, %d on this "
                "rank", len(todo), len(videos.ids), len(videos.ids) - len(todo),
                fm.data.test_views, len(mine))
    bad = _extract_share(fm, videos, mine, out, batch_size, num_workers, log_every, amp_dtype)
    bad_all = sorted({p for part in all_gather_object(bad) for p in part}) \
        if world > 1 else sorted(bad)
    barrier()
    dim = None
    if rank == 0:
        dim = _finish(videos, out, bad_all, earlier, settings)
    dim = broadcast_from_main(dim)
    summary = {"videos": len(videos.ids), "written": len(todo) - len(bad_all),
               "skipped": len(videos.ids) - len(todo), "bad": len(bad_all),
               "bad_paths": bad_all, "output": out.path, "dim": dim}
    if bad_all:
        logger.warning("%d of %d videos could not be read; listed in %s", len(bad_all),
                       len(videos.ids), out.bad_list)
    return summary


def _extract_share(fm: FeatureModel, videos: VideoSet, indices: Sequence[int], out: Output,
                   batch_size: int, num_workers: int, log_every: int,
                   amp_dtype: Optional[torch.dtype]) -> List[str]:
    """Extract and write the videos ``indices``; returns the paths that could not be read."""
    if not indices:
        return []
    records = [VideoRecord(videos.paths[i], (videos.labels or [0] * len(videos.paths))[i],
                           i + 1) for i in indices]
    dataset = VideoClsDataset(records, "test", fm.data, videos.source)
    per_batch = max(1, batch_size // dataset.num_views)
    device = next(fm.model.parameters()).device
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=per_batch, shuffle=False, num_workers=min(num_workers, len(records)),
        collate_fn=collate_eval, pin_memory=device.type == "cuda",
        worker_init_fn=seed_worker if num_workers > 0 else None)
    progress = utils.MetricLogger(delimiter="  ")
    bad: List[str] = []
    with torch.inference_mode(), folded_for_inference(fm.model), utils.autocast(device, amp_dtype):
        for views, labels, items, bad_paths in progress.log_every(loader, log_every, "Features:"):
            B, V = views.shape[:2]
            pooled, tokens = clip_features(fm.model, normalize_video(views.flatten(0, 1).to(device)),
                                           out.tokens)
            progress.count_clips(B * V)
            pooled = pooled.float().view(B, V, -1)
            tokens = None if tokens is None else tokens.float().view(B, V, *tokens.shape[1:])
            if not out.per_view:
                pooled = pooled.mean(1)
                tokens = None if tokens is None else tokens.mean(1)
            bad_iter = iter(bad_paths)
            for j, (label, item) in enumerate(zip(labels.tolist(), items.tolist())):
                if label < 0:
                    bad.append(next(bad_iter, records[item].path))
                    continue
                vid = videos.ids[indices[item]]
                if tokens is not None:
                    _save(out.part(vid, tokens=True), tokens[j].cpu().numpy())
                _save(out.part(vid), pooled[j].cpu().numpy())
    return bad


def _save(path: str, array: np.ndarray) -> None:
    make_dirs(os.path.dirname(path))
    with atomic_file(path, "wb") as f:
        np.save(f, array)


# ------------------------------------------------------------------------------ settings
def _settings(fm: FeatureModel, out: Output) -> Dict[str, Any]:
    """What the features depend on; an output is only resumed with the same."""
    d = fm.data
    return {"checkpoint": os.path.abspath(fm.checkpoint), "kind": fm.kind,
            "pooling": fm.pooling, "tokens": out.tokens, "per_view": out.per_view,
            "views": f"{d.test_num_segment}x{d.test_num_crop}",
            "clip": f"{d.num_frames}x{d.input_size}x{d.input_size}, sampling rate "
                    f"{d.sampling_rate}, short side {d.short_side_size}, {d.data_set}"}


def _check_settings(path: str, settings: Mapping[str, Any]) -> None:
    """Write the settings next to the parts, or refuse parts of other settings."""
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            _same_settings(json.load(f), settings, os.path.dirname(path))
        return
    with atomic_file(path) as f:
        json.dump(settings, f, indent=1)


def _same_settings(found: Mapping[str, Any], settings: Mapping[str, Any], where: str) -> None:
    differ = [f"{k}: {found.get(k)!r} there, {v!r} now" for k, v in settings.items()
              if found.get(k) != v]
    if differ:
        raise ConfigError(f"{where} holds features of other settings ({'; '.join(differ)}): "
                          f"write to another --output, or remove it to start afresh")


def _earlier_ids(out: Output, settings: Mapping[str, Any]) -> set:
    """The videos of an earlier single file at ``out.path`` (its settings must be these)."""
    if out.format == "npy" or not os.path.isfile(out.path):
        return set()
    with _open_single(out.path, out.format) as table:
        _same_settings(json.loads(table["settings"]), settings, out.path)
        return set(table["videos"])


# ------------------------------------------------------------------------------ finishing
def _finish(videos: VideoSet, out: Output, bad: Sequence[str], earlier: set,
            settings: Mapping[str, Any]) -> Optional[int]:
    """Rank 0: list the bad videos; assemble a single file. Returns the feature width."""
    with atomic_file(out.bad_list) as f:
        f.writelines(p + "\n" for p in bad)
    if out.format == "npy":
        first = next((vid for vid in videos.ids if out.done(vid)), None)
        return None if first is None else int(np.load(out.part(first)).shape[-1])
    rows = [i for i, vid in enumerate(videos.ids) if vid in earlier or out.done(vid)]
    dim = _write_single(videos, rows, out, earlier, settings)
    shutil.rmtree(out.parts)
    return dim


def _write_single(videos: VideoSet, rows: Sequence[int], out: Output, earlier: set,
                  settings: Mapping[str, Any]) -> Optional[int]:
    """Write ``out.path`` (``npz`` or ``h5``) from the parts and the earlier file, atomically:
    ``features`` (M, D) or (M, V, D), ``tokens`` with ``--tokens``, ``videos`` (the ids),
    ``labels`` for a list file, ``settings`` (JSON)."""
    ids = [videos.ids[i] for i in rows]
    old = _open_single(out.path, out.format) if earlier else None
    old_row = {vid: k for k, vid in enumerate(old["videos"])} if old is not None else {}

    def load(vid: str, tokens: bool) -> np.ndarray:
        if vid in old_row and not out.done(vid):
            return np.asarray(old["tokens" if tokens else "features"][old_row[vid]])
        return np.load(out.part(vid, tokens))

    dim = int(load(ids[0], False).shape[-1]) if ids else None
    tmp = temporary_path(out.path)
    try:
        with writing(out.path):
            columns = {"videos": np.array(ids, dtype=object if out.format == "h5" else str)}
            if videos.labels is not None:
                columns["labels"] = np.array([videos.labels[i] for i in rows], dtype=np.int64)
            if out.format == "npz":
                arrays = {"features": np.stack([load(v, False) for v in ids]) if ids else
                          np.zeros((0, 0), np.float32), **columns,
                          "settings": np.array(json.dumps(settings))}
                if out.tokens and ids:
                    arrays["tokens"] = np.stack([load(v, True) for v in ids])
                with open(tmp, "wb") as f:
                    np.savez(f, **arrays)
            else:
                _write_h5(tmp, ids, columns, load, out.tokens, settings)
            os.replace(tmp, out.path)
    finally:
        if old is not None:
            old.close()
        if os.path.exists(tmp):
            os.remove(tmp)
    return dim


def _write_h5(path: str, ids: Sequence[str], columns: Mapping[str, np.ndarray], load: Any,
              tokens: bool, settings: Mapping[str, Any]) -> None:
    """HDF5: the same keys as the ``.npz``, written row by row (the tokens of a large set
    need not fit in memory)."""
    # lazy: h5py is needed only for --format h5
    import h5py
    with h5py.File(path, "w") as f:
        f.attrs["settings"] = json.dumps(settings)
        f.create_dataset("videos", data=columns["videos"], dtype=h5py.string_dtype())
        if "labels" in columns:
            f.create_dataset("labels", data=columns["labels"])
        for key, want in (("features", True), ("tokens", tokens)):
            if not want or not ids:
                continue
            first = load(ids[0], key == "tokens")
            table = f.create_dataset(key, shape=(len(ids), *first.shape), dtype=np.float32)
            for k, vid in enumerate(ids):
                table[k] = first if k == 0 else load(vid, key == "tokens")


class _Single:
    """An ``.npz`` or HDF5 feature file opened for reading: ``table[key]`` (rows indexable),
    ``"settings"`` the JSON string; a context manager that closes it."""

    def __init__(self, path: str, fmt: str) -> None:
        self.fmt = fmt
        if fmt == "npz":
            self.file = np.load(path, allow_pickle=False)
            self.cache: Dict[str, np.ndarray] = {}
        else:
            # lazy: h5py is needed only for --format h5
            import h5py
            self.file = h5py.File(path, "r")

    def __getitem__(self, key: str) -> Any:
        if self.fmt == "npz":
            if key not in self.cache:
                value = self.file[key]
                self.cache[key] = value.item() if key == "settings" else value
            return self.cache[key]
        if key == "settings":
            return self.file.attrs["settings"]
        if key == "videos":
            return [v.decode() if isinstance(v, bytes) else str(v) for v in self.file[key][()]]
        return self.file[key]

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> "_Single":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _open_single(path: str, fmt: str) -> _Single:
    return _Single(path, fmt)


def read_features(path: str) -> Dict[str, Any]:
    """An ``.npz`` or ``.h5`` feature file as ``{"features", "videos", "settings", ["labels",
    "tokens"]}`` in memory (for tests and small sets)."""
    fmt = "h5" if path.endswith((".h5", ".hdf5")) else "npz"
    with _open_single(path, fmt) as table:
        keys = table.file.files if fmt == "npz" else list(table.file.keys())
        out = {k: (table[k] if k == "videos" else np.asarray(table[k])) for k in keys
               if k != "settings"}
        out["videos"] = [str(v) for v in out["videos"]]
        out["settings"] = json.loads(table["settings"])
    return out

