"""Sliding windows over a long video, each frame decoded once (``tools/predict.py --window``).

* :class:`FrameStream` decodes a video file with PyAV in presentation order and gives each
  frame its time in seconds from the container's timestamps (``pts * time_base``, relative to
  the first frame), so a variable-frame-rate video is cut where its frames really are.
* :class:`SlidingWindows` holds the frames of at most one window (plus one frame) and closes
  window ``k`` (``[k * stride, k * stride + window)`` seconds) as soon as a frame at or past its
  end arrives. At the end of the video the windows that fit are closed; when the last one ends
  before the video does, one more window ends at the video's end; a video shorter than one
  window is one window, the whole video (logged).
* :class:`WindowBatches` turns the closed windows of one video into batches shaped as the
  engine's test loader's, ``(views (B, V, 3, T, S, S) uint8, labels, indices, bad_paths)``:
  each window is tested as the test tests a video whose frames are the window's frames
  (``VideoClsDataset.test_segments`` / ``test_views``: the temporal views of
  ``--test_num_segment``, ``--test_num_crop`` spatial crops), so ``engine_eval.final_test`` and
  the multi-task loop score them unchanged.

Memory is bounded by the window, not the video: the decoded frames of one window (converted to
RGB only when a clip uses them, once), and the clips of one batch of windows.
"""
from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Deque, Iterator, List, Optional, Tuple

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter

from utils.config import DataConfig

from .decoders import VideoDecodeError, _short, check_video_file
from .listfile import VideoRecord
from .transforms import stack_clips
from .video_dataset import VideoClsDataset

logger = logging.getLogger(__name__)

# Timestamps are compared with this tolerance (seconds): window bounds are sums of float
# strides (3 * 0.1 != 0.3) and frame times are exact fractions of the container's time base.
EPS = 1e-6


@dataclass(frozen=True)
class Window:
    """One window of a video.

    Args:
        index: its position in the video's timeline (0, 1, ...).
        start: its first second (from the video's first frame).
        end: the second it ends at (excluded).
        num_frames: the video frames inside it.
    """

    index: int
    start: float
    end: float
    num_frames: int


@dataclass(eq=False)
class TimedFrame:
    """A decoded frame and its time; its RGB pixels are made on first use, once.

    Args:
        index: its position in the video (decode order = presentation order).
        time: seconds from the video's first frame.
        frame: PyAV's frame (the decoder's own pixel format).
        to_rgb: the stream's conversion to uint8 ``(H, W, 3)`` RGB.
    """

    index: int
    time: float
    frame: Optional[av.VideoFrame]
    to_rgb: Callable[[av.VideoFrame], np.ndarray] = field(repr=False)
    _rgb: Optional[np.ndarray] = field(default=None, repr=False)

    def rgb(self) -> np.ndarray:
        """uint8 ``(H, W, 3)``; the decoder's frame is released once converted."""
        if self._rgb is None:
            self._rgb = self.to_rgb(self.frame)
            self.frame = None
        return self._rgb


class FrameStream:
    """The frames of one video file, decoded once, in order, with their times.

    After a full iteration ``duration`` is the video's length in seconds (the last frame's time
    plus its duration) and ``decoded`` the number of frames decoded.

    Args:
        path: the video file.
    """

    def __init__(self, path: str) -> None:
        check_video_file(path)
        self.path = path
        self.decoded = 0
        self.duration = 0.0
        self.expected_duration: Optional[float] = None  # the container's claim, for the ETA
        self.average_rate: Optional[float] = None

    def __iter__(self) -> Iterator[TimedFrame]:
        try:
            container = av.open(self.path)
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise VideoDecodeError(self.path, f"PyAV cannot open it ({_short(exc)})") from exc
        with container:
            if not container.streams.video:
                raise VideoDecodeError(self.path, "no video stream")
            stream = container.streams.video[0]
            # One process decodes: let FFmpeg use its frame threads (the loaders' one thread per
            # worker is for many workers at once).
            stream.thread_type = "AUTO"
            self.average_rate = float(stream.average_rate) if stream.average_rate else None
            if stream.duration is not None and stream.time_base is not None:
                self.expected_duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                self.expected_duration = container.duration / av.time_base
            yield from self._decode(container, stream)

    def _decode(self, container: av.container.InputContainer, stream: av.video.VideoStream
                ) -> Iterator[TimedFrame]:
        # One reformatter reuses its swscale context, every frame at the first frame's size
        # (as datasets.decoders.PyAVReader: a stream may change resolution midway).
        reformatter, size = VideoReformatter(), {}

        def to_rgb(frame: av.VideoFrame) -> np.ndarray:
            return reformatter.reformat(frame, format="rgb24", threads=1, **size).to_ndarray()

        step = 1.0 / self.average_rate if self.average_rate else None
        first: Optional[float] = None
        last_time, last_length = 0.0, step or 0.0
        try:
            for frame in container.decode(stream):
                size = size or {"width": frame.width, "height": frame.height}
                if frame.time is None:  # no timestamp: one frame period after the previous one
                    if step is None:
                        raise VideoDecodeError(self.path, "frames without timestamps and no "
                                                          "frame rate")
                    time = last_time + step if self.decoded else 0.0
                else:
                    first = float(frame.time) if first is None else first
                    time = float(frame.time) - first
                if frame.duration and frame.time_base is not None:
                    last_length = float(frame.duration * frame.time_base)
                elif self.decoded:
                    last_length = step or max(time - last_time, 0.0)
                self.decoded += 1
                last_time = time
                yield TimedFrame(self.decoded - 1, time, frame, to_rgb)
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise VideoDecodeError(self.path, f"decoding stopped at {last_time:.3f} s after "
                                              f"{self.decoded} frames ({_short(exc)})") from exc
        if not self.decoded:
            raise VideoDecodeError(self.path, "no frames")
        self.duration = last_time + last_length


class SlidingWindows:
    """Windows of ``window`` seconds every ``stride`` seconds over frames pushed in time order.

    Args:
        window: the window's length in seconds (> 0).
        stride: seconds between window starts (> 0).
    """

    def __init__(self, window: float, stride: float) -> None:
        if not window > 0 or not stride > 0:
            raise ValueError(f"window ({window}) and stride ({stride}) must be > 0 seconds")
        self.window, self.stride = window, stride
        self.frames: Deque[TimedFrame] = deque()
        self.closed = 0          # windows of the stride grid closed so far
        self.max_held = 0        # the most frames held at once (bounded by the window)
        self.empty = 0           # grid windows with no frame (a gap longer than the window)
        self.out_of_order = 0    # frames whose time went backwards (kept in decode order)
        self._emitted: List[Window] = []

    def _grid(self, k: int) -> Tuple[float, float]:
        start = k * self.stride
        return start, start + self.window

    def _close(self, start: float, end: float) -> Optional[Tuple[Window, List[TimedFrame]]]:
        inside = [f for f in self.frames if start - EPS <= f.time < end - EPS]
        if not inside:
            self.empty += 1
            return None
        window = Window(len(self._emitted), start, end, len(inside))
        self._emitted.append(window)
        return window, inside

    def push(self, frame: TimedFrame) -> List[Tuple[Window, List[TimedFrame]]]:
        """Add the next frame; returns the windows it closes, with their frames."""
        if self.frames and frame.time < self.frames[-1].time:
            self.out_of_order += 1
        done = []
        while frame.time >= self._grid(self.closed)[1] - EPS:  # a frame at or past its end
            closed = self._close(*self._grid(self.closed))
            self.closed += 1
            if closed:
                done.append(closed)
        self.frames.append(frame)
        # Every window still open starts after frame.time - window (it has not ended), and so
        # does the one that may end at the video's end: older frames are never used again.
        while self.frames[0].time < frame.time - self.window - EPS:
            self.frames.popleft()
        self.max_held = max(self.max_held, len(self.frames))
        return done

    def finish(self, duration: float) -> List[Tuple[Window, List[TimedFrame]]]:
        """The windows left once the video of ``duration`` seconds has ended: those of the
        grid that fit, then one ending at the video's end if the last one ends before it (a
        video shorter than one window: the whole video)."""
        done = []
        while self._grid(self.closed)[1] <= duration + EPS:
            closed = self._close(*self._grid(self.closed))
            self.closed += 1
            if closed:
                done.append(closed)
        last_end = self._emitted[-1].end if self._emitted else 0.0
        if not self._emitted and self.frames:
            logger.warning("the video is %.3f s long, shorter than one window (%.3f s): "
                           "one window, the whole video", duration, self.window)
            done.append(self._close(0.0, duration + EPS))
        elif last_end < duration - EPS:
            tail = self._close(max(duration - self.window, 0.0), duration + EPS)
            if tail:
                done.append(tail)
        self.frames.clear()
        return [(w if w.end <= duration else Window(w.index, w.start, duration, w.num_frames),
                 frames) for w, frames in done]


class WindowBatches:
    """The windows of one video in batches shaped as the engine's test loader's.

    Iterating decodes the video once; afterwards ``windows`` lists the windows (batch item
    indices are positions in it), ``error`` says why decoding stopped early ('' when it did
    not; the windows closed before stay), ``frames_decoded`` and ``max_frames_held`` count.

    Args:
        path: the video file.
        config: the clip and view settings (``--num_frames``, ``--sampling_rate``,
            ``--test_num_segment``, ``--test_num_crop``, sizes, sampling).
        window: seconds per window.
        stride: seconds between window starts.
        windows_per_batch: windows per yielded batch (at least 1).
        stream: makes the frame source from the path (tests count decoded frames through it).
    """

    def __init__(self, path: str, config: DataConfig, window: float, stride: float,
                 windows_per_batch: int,
                 stream: Callable[[str], FrameStream] = FrameStream) -> None:
        self.path = path
        self.dataset = VideoClsDataset([VideoRecord(path=path, label=0, line=1)], "test",
                                       config, "--window")
        self.window, self.stride = window, stride
        self.windows_per_batch = max(1, windows_per_batch)
        self.make_stream = stream
        self.windows: List[Window] = []
        self.error = ""
        self.frames_decoded = 0
        self.max_frames_held = 0
        self.expected_duration: Optional[float] = None
        self.duration = 0.0

    def expected_windows(self, duration: Optional[float]) -> Optional[int]:
        """Windows of a video of ``duration`` seconds (None when unknown), for progress."""
        if duration is None:
            return None
        return max(1, math.floor((duration - self.window) / self.stride + EPS) + 1 +
                   (1 if (duration - self.window) % self.stride > EPS else 0))

    def views(self, frames: List[TimedFrame]) -> torch.Tensor:
        """A window's test views, ``(V, 3, T, S, S)`` uint8: the test's views of a video whose
        frames are the window's."""
        def read(pick: Callable[[int], np.ndarray]) -> np.ndarray:
            return np.stack([frames[int(i)].rgb() for i in pick(len(frames))])
        return self.dataset.test_views(self.dataset.test_segments(read))

    def _batch(self, items: List[Tuple[Window, torch.Tensor]]
               ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, List[str]]:
        views = stack_clips([v for _, v in items])
        indices = torch.tensor([w.index for w, _ in items], dtype=torch.long)
        return views, torch.zeros(len(items), dtype=torch.long), indices, []

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor, torch.Tensor, List[str]]]:
        slider = SlidingWindows(self.window, self.stride)
        pending: List[Tuple[Window, torch.Tensor]] = []
        stream: Optional[FrameStream] = None
        try:
            stream = self.make_stream(self.path)
            for frame in stream:
                self.expected_duration = stream.expected_duration
                for window, frames in slider.push(frame):
                    self.windows.append(window)
                    pending.append((window, self.views(frames)))
                    if len(pending) == self.windows_per_batch:
                        yield self._batch(pending)
                        pending = []
            self.duration = stream.duration
            for window, frames in slider.finish(stream.duration):
                self.windows.append(window)
                pending.append((window, self.views(frames)))
                if len(pending) == self.windows_per_batch:
                    yield self._batch(pending)
                    pending = []
        except VideoDecodeError as err:
            self.error = err.reason
            logger.warning("%s: %s%s", self.path, err.reason,
                           f" ({len(self.windows)} windows before it kept)" if self.windows else "")
        finally:
            self.frames_decoded = stream.decoded if stream is not None else 0
            self.max_frames_held = slider.max_held
        if pending:
            yield self._batch(pending)
        if slider.empty:
            logger.warning("%s: %d windows held no frame (a gap in the timestamps longer than "
                           "the window) and are left out", self.path, slider.empty)
        if slider.out_of_order:
            logger.warning("%s: %d frames had a time before the previous frame's",
                           self.path, slider.out_of_order)
