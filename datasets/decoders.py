"""Video readers behind one small interface: ``len(reader)`` and ``reader.get_batch(indices)``.

Three sources are supported (docs/DATA.md): decord (default), PyAV (``--video_backend pyav``) and
frame folders (a directory of ``img_%05d.jpg`` files). Every reader returns RGB ``uint8`` arrays
of shape ``(T, H, W, 3)``. Any failure to open or decode is raised as :class:`VideoDecodeError`,
which carries the path and a short reason, so the dataset can log, count and replace the video.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from typing import Callable, List, Optional, Sequence, Union

import av
import numpy as np
from av.video.reformatter import VideoReformatter
from PIL import Image

from utils.config import VIDEO_BACKENDS

logger = logging.getLogger(__name__)

BACKENDS = VIDEO_BACKENDS  # --video_backend choices, declared in utils/config.py
# Paths already reported as decoded by the PyAV fallback (one warning per path and process).
_FALLBACK_WARNED: set = set()
# Fast JPEG decoder of frame folders, loaded on first use (see _jpeg_decoder); False: unavailable.
_DECODE_JPEG: Union[None, bool, Callable[[bytes], np.ndarray]] = None

# A frame folder holds files named like img_00001.jpg (the mmaction/VideoMAE convention).
_FRAME_FILE_RE = re.compile(r"^img_(\d+)\.(jpg|jpeg|png)$", re.IGNORECASE)


class VideoDecodeError(RuntimeError):
    """A video that cannot be used: missing, empty, unreadable, truncated or too short.

    Args:
        path: the file or folder that failed.
        reason: a short human-readable cause.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class VideoReader:
    """Base class: index checking and de-duplication shared by all backends.

    Subclasses implement ``__len__`` and ``_read_sorted(unique_sorted_indices)``.
    """

    path: str

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def _read_sorted(self, indices: List[int]) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def get_batch(self, indices: Sequence[int]) -> np.ndarray:
        """Decode the given frames.

        Args:
            indices: frame indices in ``[0, len(self))``, in any order, repeats allowed.

        Returns:
            uint8 array ``(len(indices), H, W, 3)`` in the order of ``indices``.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size == 0:
            raise ValueError(f"{self.path}: get_batch needs at least one frame index")
        n = len(self)
        if idx.min() < 0 or idx.max() >= n:
            raise VideoDecodeError(
                self.path, f"frame index out of range [0, {n}): min {idx.min()}, max {idx.max()}")
        # Decode each distinct frame once, in increasing order (cheapest for every backend),
        # then expand back to the requested order and repeats.
        uniq, inverse = np.unique(idx, return_inverse=True)
        frames = self._read_sorted([int(i) for i in uniq])
        if frames.shape[0] != len(uniq):
            raise VideoDecodeError(
                self.path, f"decoder returned {frames.shape[0]} frames for {len(uniq)} requested")
        return frames[inverse]


class DecordReader(VideoReader):
    """decord ``VideoReader`` with one thread (one decoder thread per DataLoader worker).

    Args:
        path: video file.
    """

    def __init__(self, path: str) -> None:
        import decord  # imported lazily so the PyAV backend works without decord

        self.path = path
        # decord reports failures as DECORDError, RuntimeError ("Error reading ...") or
        # IndexError (indices past its frame count).
        self._errors = (decord.DECORDError, RuntimeError, IndexError, ValueError)
        try:
            self._vr = decord.VideoReader(path, num_threads=1, ctx=decord.cpu(0))
            self._len = len(self._vr)
        except self._errors as exc:
            raise VideoDecodeError(path, f"decord cannot open it ({_short(exc)})") from exc

    def __len__(self) -> int:
        return self._len

    def _read_sorted(self, indices: List[int]) -> np.ndarray:
        try:
            # seek(0) first as VideoMAE does: it resets decord's internal position, avoiding
            # slow or failing backward seeks on some files after a previous read.
            self._vr.seek(0)
            return self._vr.get_batch(indices).asnumpy()
        except self._errors as exc:
            reason = _short(exc)
        # decord also fails on some valid files (e.g. decord2 3.4 cannot copy frames whose width
        # is 16, 24, 32, 48, 96 or 144 pixels): retry once with PyAV before calling it bad.
        try:
            frames = PyAVReader(self.path)._read_sorted(indices)
        except VideoDecodeError as exc:
            raise VideoDecodeError(self.path, f"decord failed to decode frames ({reason}); "
                                              f"PyAV fallback: {exc.reason}") from exc
        if self.path not in _FALLBACK_WARNED:
            _FALLBACK_WARNED.add(self.path)
            logger.warning("%s: decord failed (%s); decoded with PyAV instead", self.path, reason)
        return frames


class PyAVReader(VideoReader):
    """PyAV reader that decodes sequentially from the start, up to the last requested frame.

    The amount of work is bounded: at most ``max(indices) + 1`` frames are decoded and the
    demuxer stops at end of file, so a damaged file cannot make it loop.

    Args:
        path: video file.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._av = av
        try:
            with av.open(path) as container:
                if not container.streams.video:
                    raise VideoDecodeError(path, "no video stream")
                stream = container.streams.video[0]
                n = int(stream.frames or 0)
                if n <= 0:
                    # Some containers (webm/mkv) do not store a frame count: count the packets
                    # (demuxing only, no decoding; bounded by the file size).
                    n = sum(1 for p in container.demux(stream) if p.size > 0)
        except VideoDecodeError:
            raise
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise VideoDecodeError(path, f"PyAV cannot open it ({_short(exc)})") from exc
        self._len = n

    def __len__(self) -> int:
        return self._len

    def _read_sorted(self, indices: List[int]) -> np.ndarray:
        av = self._av

        # One reformatter for the whole clip reuses its swscale context (frame.to_ndarray would
        # build a new one per frame, about 2.5x slower); the conversion is the same.
        rgb = VideoReformatter()
        wanted = set(indices)
        last = indices[-1]
        out: List[np.ndarray] = []
        decoded = 0
        try:
            with av.open(self.path) as container:
                stream = container.streams.video[0]
                stream.thread_count = 1  # one thread per worker, as for decord
                size = {}
                for frame in container.decode(stream):
                    if decoded in wanted:
                        # All frames at the first wanted frame's size, in case the stream
                        # changes resolution midway (decord scales to a fixed size as well).
                        size = size or {"width": frame.width, "height": frame.height}
                        # threads=1: swscale's default (0) starts a thread per core in every
                        # DataLoader worker, oversubscribing the CPUs.
                        out.append(rgb.reformat(frame, format="rgb24", threads=1,
                                                **size).to_ndarray())
                    decoded += 1
                    if decoded > last:
                        break
        except (av.FFmpegError, OSError, ValueError) as exc:
            if decoded <= last:
                raise VideoDecodeError(
                    self.path, f"truncated or corrupt: decoding stopped after {decoded} of "
                               f"{len(self)} frames ({_short(exc)})") from exc
        if decoded <= last:
            raise VideoDecodeError(
                self.path, f"truncated: only {decoded} of {len(self)} frames could be decoded")
        return np.stack(out)


class FrameFolderReader(VideoReader):
    """A directory of ``img_%05d.jpg`` files; frame ``i`` is the i-th file in numeric order.

    Args:
        path: the directory.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            names = os.listdir(path)
        except OSError as exc:
            raise VideoDecodeError(path, f"cannot list frame folder ({_short(exc)})") from exc
        numbered = []
        for name in names:
            m = _FRAME_FILE_RE.match(name)
            if m:
                numbered.append((int(m.group(1)), name))
        numbered.sort()
        self._files = [os.path.join(path, name) for _, name in numbered]

    def __len__(self) -> int:
        return len(self._files)

    def _read_sorted(self, indices: List[int]) -> np.ndarray:
        decode_jpeg = _jpeg_decoder()
        with warnings.catch_warnings():
            # torchvision 0.29 marks its image decoders deprecated (DeprecationWarning per call).
            warnings.simplefilter("ignore", DeprecationWarning)
            frames = [self._read_frame(self._files[i], decode_jpeg) for i in indices]
        shapes = {f.shape for f in frames}
        if len(shapes) != 1:
            raise VideoDecodeError(self.path, f"frames have different sizes: {sorted(shapes)}")
        return np.stack(frames)

    def _read_frame(self, file: str, decode_jpeg: Optional[Callable[[bytes], np.ndarray]]
                    ) -> np.ndarray:
        if decode_jpeg is not None and not file.lower().endswith(".png"):
            try:
                with open(file, "rb") as f:
                    data = f.read()
            except OSError as exc:
                raise VideoDecodeError(self.path, f"cannot read {file} ({_short(exc)})") from exc
            try:
                return decode_jpeg(data)
            except RuntimeError:
                pass  # not a JPEG libjpeg-turbo reads (or corrupt): PIL decides, and names why

        try:
            with Image.open(file) as img:
                return np.asarray(img.convert("RGB"))
        except OSError as exc:
            raise VideoDecodeError(self.path, f"cannot read {file} ({_short(exc)})") from exc


def _jpeg_decoder() -> Optional[Callable[[bytes], np.ndarray]]:
    """torchvision's libjpeg-turbo ``decode_jpeg`` as ``bytes -> (H, W, 3) uint8``, or None.

    1.2-1.8x faster per frame than PIL's open + convert + asarray on one core (0.17-0.57 ms vs
    0.25-0.71 ms for synthetic 320x240 and 340x256 frames), and bit-identical to it on every
    JPEG we tried: both are libjpeg-turbo with the same IDCT and chroma upsampling
    (tests/test_data_frames.py checks it).
    """
    global _DECODE_JPEG
    if _DECODE_JPEG is None:
        try:  # lazily, and guarded: torchvision deprecates these decoders (0.29) and may drop them
            import torch
            from torchvision.io import ImageReadMode
            from torchvision.io import decode_jpeg as tv_decode_jpeg
        except ImportError:  # torchvision may drop these decoders (deprecated since 0.29)
            _DECODE_JPEG = False
        else:
            def decode(data: bytes) -> np.ndarray:
                # ImageReadMode.RGB: grey and CMYK JPEGs come back as RGB, as PIL's convert.
                tensor = tv_decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                                        mode=ImageReadMode.RGB)
                return tensor.permute(1, 2, 0).numpy()  # (H, W, 3) view; np.stack copies it

            _DECODE_JPEG = decode
    return _DECODE_JPEG or None


def check_video_file(path: str) -> None:
    """Refuse a missing or empty video file before any decoder sees it.

    Raises:
        VideoDecodeError: no such file, or 0 bytes.
    """
    if not os.path.exists(path):
        raise VideoDecodeError(path, "file not found")
    if os.path.getsize(path) == 0:
        # Checked before decoding: some decoders block or crash on empty input.
        raise VideoDecodeError(path, "empty file (0 bytes)")


def open_video(path: str, backend: str = "decord") -> VideoReader:
    """Open a video file or frame folder and check that it has at least one frame.

    Args:
        path: video file, or a directory of ``img_%05d.jpg`` frames.
        backend: ``'decord'`` or ``'pyav'`` (ignored for frame folders).

    Returns:
        A reader with ``len()`` and ``get_batch(indices)``.

    Raises:
        VideoDecodeError: missing, empty or unreadable input.
        ValueError: unknown backend.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown --video_backend {backend!r}; choose one of {BACKENDS}")
    if os.path.isdir(path):
        reader: VideoReader = FrameFolderReader(path)
    else:
        check_video_file(path)
        reader = DecordReader(path) if backend == "decord" else PyAVReader(path)
    if len(reader) <= 0:
        raise VideoDecodeError(path, "no frames")
    return reader


def _short(exc: BaseException, limit: int = 200) -> str:
    """One-line, length-limited description of an exception for log messages."""
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "..."
