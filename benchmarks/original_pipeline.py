"""Benchmark reference only: an original-style (VideoMAE ``kinetics.py``) per-frame PIL pipeline.

Not used by the project code. ``benchmarks/bench_data.py`` runs it side by side with our
pipeline (``datasets.build_dataset``) on the same files, so the speed-up is measured against the
work the original code does, written here from scratch after MCG-NJU/VideoMAE's
``VideoClsDataset`` (``kinetics.py``, ``video_transforms.py``, ``volume_transforms.py``,
``functional.py``, ``random_erasing.py``, ``rand_augment.py``).

Training item (``_aug_frame`` in the original), for one decoded video:

1. decode the frames of one random window of ``num_frames * sampling_rate`` frames (the
   original's ``np.linspace`` indices) with decord (``VideoReader(path, num_threads=1,
   ctx=cpu(0))``, ``seek(0)``, ``get_batch(...).asnumpy()``), PyAV (decoding sequentially from the
   start up to the last needed frame, ``frame.to_ndarray(format='rgb24')`` per kept frame) or a
   frame folder (``PIL.Image.open(...).convert('RGB')`` per frame);
2. for each of ``num_sample`` clips: ``ToPILImage`` per frame; timm RandAugment with one draw
   per clip applied to every PIL frame; ``ToTensor`` per frame; stack ``(T,C,H,W)`` -> permute
   ``(T,H,W,C)``; ``tensor_normalize`` (subtract mean, divide by std, new tensors); permute to
   ``(C,T,H,W)``; random resized crop (scale 0.08-1, ratio 3/4-4/3, ``random`` module) of the
   float clip resized with ``F.interpolate(mode='bilinear', align_corners=False)``; horizontal
   flip with probability 0.5; timm ``RandomErasing`` on the ``(T,C,H,W)`` view (one independent
   draw per frame).

Test "item": the original makes one dataset item per (temporal segment, spatial crop) view and
each item decodes the video itself. Per view: decode every ``sampling_rate``-th frame of the
whole video (the original's ``loadvideo_decord`` in test mode), resize every decoded frame so its
short side is ``short_side_size`` (the original's ``video_transforms.Resize`` on a list of NumPy
frames uses ``cv2.resize``; OpenCV is not installed in this project's environment, so this uses
PIL bilinear per frame, the original's own branch for PIL frames), cut this view's temporal chunk
and spatial crop, ``ClipToTensor`` (float64 buffer filled frame by frame, then float32 / 255,
``(C,T,H,W)``), normalise.

Departures (none changes the amount of work): the RandAugment fill colour is the ImageNet mean
(the original's modified copy of timm used grey 128); RandAugment reuses one clip's draws for
every frame by restoring the ``random``/``np.random`` states per frame (the original's modified
timm applied each drawn op to a list of images); random erasing is timm's (the original's copy
defaults to ``cube=True``: one box per clip with fresh noise in every frame); validation mode
is not implemented.
"""

from __future__ import annotations

import math
import os
import random
import time
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import av
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data import rand_augment_transform, str_to_pil_interp
from timm.data.random_erasing import RandomErasing
from torchvision import transforms

from utils.config import VIDEO_BACKENDS as BACKENDS

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class StageTimer:
    """Process CPU seconds per named stage, accumulated over calls (a quick profiler).

    Args:
        enabled: when False, :meth:`stage` costs one branch and records nothing.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.seconds: Dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the body of a ``with`` block under ``name``."""
        if not self.enabled:
            yield
            return
        t0 = time.process_time()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.process_time() - t0


# ----------------------------------------------------------------------------- decoding
def load_frames(path: str, backend: str, pick: Callable[[int], Sequence[int]]) -> np.ndarray:
    """Open a video, choose frame indices from its frame count, decode them.

    Args:
        path: video file or frame folder (``img_00001.jpg``, ...).
        backend: 'decord' or 'pyav' (ignored for frame folders).
        pick: frame count -> 0-based indices (any order, repeats allowed).

    Returns:
        uint8 ``(len(indices), H, W, 3)``.
    """
    if os.path.isdir(path):
        indices = pick(sum(1 for name in os.listdir(path) if name.startswith("img_")))
        frames = []
        for i in indices:
            with Image.open(os.path.join(path, f"img_{int(i) + 1:05d}.jpg")) as img:
                frames.append(np.asarray(img.convert("RGB")))
        return np.stack(frames)
    if backend == "decord":
        # decord has no wheels on some platforms; the pyav backend works without it
        from decord import VideoReader, cpu
        vr = VideoReader(path, num_threads=1, ctx=cpu(0))
        indices = pick(len(vr))
        vr.seek(0)
        return vr.get_batch(list(indices)).asnumpy()
    if backend != "pyav":
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    with av.open(path) as container:
        stream = container.streams.video[0]
        n = int(stream.frames or 0)
        if n <= 0:  # webm/mkv store no frame count: count the packets (demuxing only)
            n = sum(1 for p in container.demux(stream) if p.size > 0)
    indices = [int(i) for i in pick(n)]
    wanted, last = set(indices), max(indices)
    kept: Dict[int, np.ndarray] = {}
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1  # one decoder thread per worker, as decord's num_threads=1
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                kept[i] = frame.to_ndarray(format="rgb24")
            if i >= last:
                break
    if len(kept) != len(wanted):
        raise RuntimeError(f"{path}: decoded {len(kept)} of {len(wanted)} wanted frames")
    return np.stack([kept[i] for i in indices])


# ----------------------------------------------------------------------------- sampling
def train_indices(num_video_frames: int, num_frames: int, sampling_rate: int) -> np.ndarray:
    """The original's training indices (``loadvideo_decord`` with one segment)."""
    converted_len = num_frames * sampling_rate
    seg_len = num_video_frames
    if seg_len <= converted_len:
        index = np.linspace(0, seg_len, num=seg_len // sampling_rate)
        index = np.concatenate((index, np.ones(num_frames - seg_len // sampling_rate) * seg_len))
        return np.clip(index, 0, seg_len - 1).astype(np.int64)
    end_idx = np.random.randint(converted_len, seg_len)
    str_idx = end_idx - converted_len
    index = np.linspace(str_idx, end_idx, num=num_frames)
    return np.clip(index, str_idx, end_idx - 1).astype(np.int64)


def test_grid_indices(num_video_frames: int, num_frames: int, sampling_rate: int) -> List[int]:
    """The original's test-mode decode: every ``sampling_rate``-th frame, padded to a clip."""
    all_index = list(range(0, num_video_frames, sampling_rate))
    while len(all_index) < num_frames:
        all_index.append(all_index[-1])
    return all_index


def resize_sizes(height: int, width: int, short_side: int) -> Tuple[int, int]:
    """The original's ``get_resize_sizes``: (new_h, new_w), long side truncated with ``int``."""
    if width < height:
        return int(short_side * height / width), short_side
    return short_side, int(short_side * width / height)


# ----------------------------------------------------------------------------- transforms
def _crop_params(height: int, width: int, scale: Tuple[float, float],
                 ratio: Tuple[float, float]) -> Tuple[int, int, int, int]:
    """The original's ``_get_param_spatial_crop`` (``random`` module, log-uniform ratio)."""
    area = height * width
    for _ in range(10):
        target_area = random.uniform(*scale) * area
        aspect = math.exp(random.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return random.randint(0, height - h), random.randint(0, width - w), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def tensor_normalize(tensor: torch.Tensor, mean: Sequence[float],
                     std: Sequence[float]) -> torch.Tensor:
    """The original's ``tensor_normalize``: out-of-place ``(x - mean) / std`` on the last dim."""
    if tensor.dtype == torch.uint8:
        tensor = tensor.float() / 255.0
    return (tensor - torch.tensor(mean)) / torch.tensor(std)


class OriginalStyleDataset:
    """VideoMAE ``VideoClsDataset``-style items for 'train' and 'test' (see the module docstring).

    Args:
        paths: video files or frame folders.
        labels: one label per path.
        mode: 'train' (one item per video: a list of ``num_sample`` clips) or 'test' (one item
            per video and view, ``len = videos * test_num_segment * test_num_crop``).
        backend: 'decord' or 'pyav' for video files.
        num_frames: frames per clip.
        sampling_rate: frame distance.
        input_size: training crop size.
        short_side_size: test resize of the short side (also the test crop size, as originally).
        test_num_segment: temporal test views (>= 2: the original divides by ``n - 1``).
        test_num_crop: spatial test views (>= 2, same reason).
        num_sample: augmented clips per decoded training video.
        aa: timm RandAugment string, or None.
        train_interpolation: RandAugment interpolation ('bicubic', 'bilinear').
        reprob: random erasing probability (0: off).
        flip: random horizontal flip in training.
        timer: optional per-stage timer.
    """

    def __init__(self, paths: Sequence[str], labels: Sequence[int], mode: str,
                 backend: str = "decord", num_frames: int = 16, sampling_rate: int = 4,
                 input_size: int = 224, short_side_size: int = 224, test_num_segment: int = 5,
                 test_num_crop: int = 3, num_sample: int = 2,
                 aa: Optional[str] = "rand-m4-n2-mstd0.2-inc1",
                 train_interpolation: str = "bicubic", reprob: float = 0.25, flip: bool = True,
                 timer: Optional[StageTimer] = None) -> None:
        if mode not in ("train", "test"):
            raise ValueError(f"mode must be 'train' or 'test', got {mode!r}")
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
        if mode == "test" and (test_num_segment < 2 or test_num_crop < 2):
            raise ValueError("the original test views need test_num_segment and test_num_crop >= 2")
        self.paths, self.labels = list(paths), list(labels)
        self.mode, self.backend = mode, backend
        self.num_frames, self.sampling_rate = num_frames, sampling_rate
        self.input_size, self.short_side_size = input_size, short_side_size
        self.test_num_segment, self.test_num_crop = test_num_segment, test_num_crop
        self.num_sample, self.flip = num_sample, flip
        self.timer = timer or StageTimer(enabled=False)
        self.rand_augment = None
        if mode == "train" and aa:
            hparams = {"translate_const": int(input_size * 0.45),
                       "img_mean": tuple(int(round(255 * m)) for m in MEAN),
                       "interpolation": str_to_pil_interp(train_interpolation)}
            self.rand_augment = rand_augment_transform(aa, hparams)
        self.erase = None
        if mode == "train" and reprob > 0:
            self.erase = RandomErasing(reprob, mode="pixel", max_count=1, num_splits=1,
                                       device="cpu")
        self._to_pil, self._to_tensor = transforms.ToPILImage(), transforms.ToTensor()

    def __len__(self) -> int:
        if self.mode == "train":
            return len(self.paths)
        return len(self.paths) * self.test_num_segment * self.test_num_crop

    def view_index(self, video: int, segment: int, crop: int) -> int:
        """Item index of a test view (the original orders items segment, crop, video)."""
        return (segment * self.test_num_crop + crop) * len(self.paths) + video

    def __getitem__(self, index: int):
        if self.mode == "train":
            return self._train_item(index)
        return self._test_item(index)

    # ------------------------------------------------------------------------- training
    def _train_item(self, index: int) -> Tuple[List[torch.Tensor], List[int], List[int], dict]:
        path = self.paths[index]
        with self.timer.stage("decode"):
            buffer = load_frames(path, self.backend, lambda n: train_indices(
                n, self.num_frames, self.sampling_rate))
        clips = [self._aug_frame(buffer) for _ in range(self.num_sample)]
        return clips, [self.labels[index]] * self.num_sample, [index] * self.num_sample, {}

    def _aug_frame(self, buffer: np.ndarray) -> torch.Tensor:
        t = self.timer
        with t.stage("to_pil"):
            images = [self._to_pil(frame) for frame in buffer]
        if self.rand_augment is not None:
            with t.stage("randaugment"):
                # One draw per clip: every frame replays the generators' states of the first.
                py_state, np_state = random.getstate(), np.random.get_state()
                out = []
                for i, img in enumerate(images):
                    if i > 0:
                        random.setstate(py_state)
                        np.random.set_state(np_state)
                    out.append(self.rand_augment(img))
                images = out
        with t.stage("to_tensor"):
            x = torch.stack([self._to_tensor(img) for img in images])  # T C H W
            x = x.permute(0, 2, 3, 1)  # T H W C
        with t.stage("normalize"):
            x = tensor_normalize(x, MEAN, STD).permute(3, 0, 1, 2)  # C T H W
        with t.stage("crop_resize"):
            top, left, h, w = _crop_params(x.shape[2], x.shape[3], (0.08, 1.0), (0.75, 1.3333))
            x = F.interpolate(x[:, :, top:top + h, left:left + w],
                              size=(self.input_size, self.input_size), mode="bilinear",
                              align_corners=False)
        with t.stage("flip"):
            if self.flip and np.random.uniform() < 0.5:
                x = x.flip(-1)
        if self.erase is not None:
            with t.stage("erase"):
                x = self.erase(x.permute(1, 0, 2, 3)).permute(1, 0, 2, 3)  # per frame (T,C,H,W)
        return x

    # ------------------------------------------------------------------------- test
    def _test_item(self, index: int) -> Tuple[torch.Tensor, int, str, int, int]:
        video = index % len(self.paths)
        chunk_nb, split_nb = divmod(index // len(self.paths), self.test_num_crop)
        path = self.paths[video]
        t = self.timer
        with t.stage("decode"):
            buffer = load_frames(path, self.backend, lambda n: test_grid_indices(
                n, self.num_frames, self.sampling_rate))
        with t.stage("resize"):
            height, width = buffer.shape[1:3]
            if min(height, width) != self.short_side_size:  # the original skips matching clips
                new_h, new_w = resize_sizes(height, width, self.short_side_size)
                buffer = np.stack([
                    np.asarray(Image.fromarray(f).resize((new_w, new_h), Image.BILINEAR))
                    for f in buffer])
        with t.stage("crop"):
            s = self.short_side_size
            spatial_step = (max(buffer.shape[1], buffer.shape[2]) - s) / (self.test_num_crop - 1)
            temporal_step = max(
                (buffer.shape[0] - self.num_frames) / (self.test_num_segment - 1), 0)
            t0, s0 = int(chunk_nb * temporal_step), int(split_nb * spatial_step)
            if buffer.shape[1] >= buffer.shape[2]:
                buffer = buffer[t0:t0 + self.num_frames, s0:s0 + s, :, :]
            else:
                buffer = buffer[t0:t0 + self.num_frames, :, s0:s0 + s, :]
        with t.stage("to_tensor"):
            clip = clip_to_tensor(buffer)
        with t.stage("normalize"):
            # video_transforms.Normalize: clone, then in-place subtract and divide.
            clip = clip.clone()
            clip.sub_(torch.tensor(MEAN)[:, None, None, None])
            clip.div_(torch.tensor(STD)[:, None, None, None])
        name = os.path.splitext(os.path.basename(path.rstrip("/")))[0]
        return clip, self.labels[video], name, chunk_nb, split_nb


def clip_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """The original's ``ClipToTensor``: uint8 ``(T,H,W,C)`` -> float32 ``(C,T,H,W)`` in [0, 1]
    through a float64 buffer filled frame by frame."""
    t, h, w, c = frames.shape
    np_clip = np.zeros([c, t, h, w])
    for i, img in enumerate(frames):
        np_clip[:, i, :, :] = img.transpose(2, 0, 1)
    return torch.div(torch.from_numpy(np_clip).float(), 255)
