"""Extract every frame of videos into folders of JPEG files, the frame-folder input of
docs/DATA.md ('Frame folders'): video ``a/b.mp4`` becomes ``OUT/a/b/img_00001.jpg``, ...

Training reads a few frames per video (e.g. 16 of 300); from a frame folder only those files are
read and decoded, instead of decoding the video up to the last needed frame.

Usage::

    # a list file (<path> <label> lines); writes a list of the folders with the same labels
    python tools/extract_frames.py --list lists/k400/train.csv --data_root /data/k400/videos \
        --out /data/k400/frames --out_list /data/k400/frames/train.csv --short_side 320 --workers 8
    # every mp4/avi/webm/mkv file under a folder
    python tools/extract_frames.py --videos /data/my_videos --out /data/my_frames

Each folder is written as ``<folder>.partial`` and renamed when complete, so an interrupted run
leaves no folder that looks finished; a rerun skips the finished folders and redoes the rest.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import av
from av.video.reformatter import VideoReformatter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # entry point

from datasets.listfile import parse_list_file  # noqa: E402

logger = logging.getLogger(__name__)

VIDEO_EXTS = (".mp4", ".avi", ".webm", ".mkv")
PARTIAL = ".partial"  # suffix of a folder still being written


@dataclass
class Result:
    """Outcome of one video: ``reason`` is None on success."""

    video: str
    frames: int = 0
    bytes: int = 0
    seconds: float = 0.0  # duration of the video (frames / frame rate); 0 when unknown
    reason: Optional[str] = None


def output_size(width: int, height: int, short_side: int) -> Tuple[int, int]:
    """Frame size after scaling the short side to ``short_side``, keeping the aspect ratio.

    Args:
        width: source width.
        height: source height.
        short_side: target short side; 0 keeps the source size, and smaller frames are never
            upscaled.

    Returns:
        ``(width, height)``.
    """
    short = min(width, height)
    if short_side <= 0 or short <= short_side:
        return width, height
    scale = short_side / short
    if width <= height:
        return short_side, max(1, round(height * scale))
    return max(1, round(width * scale)), short_side


def extract_video(video: str, folder: str, short_side: int = 0, quality: int = 90) -> Result:
    """Decode every frame of ``video`` into ``folder/img_%05d.jpg`` (1-based).

    The frames go to ``folder + '.partial'`` first (an old one, left by an interrupted run, is
    removed), which is renamed to ``folder`` only once every frame is written.

    Args:
        video: video file.
        folder: output folder (must not exist yet).
        short_side: scale the short side to this many pixels (0 = source size; never upscales).
        quality: JPEG quality (1-100).

    Returns:
        A :class:`Result`; decoding and writing errors are returned in ``reason``, not raised.
    """
    tmp = folder + PARTIAL
    result = Result(video)
    try:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)
        os.makedirs(tmp)
        with av.open(video) as container:
            if not container.streams.video:
                raise ValueError("no video stream")
            stream = container.streams.video[0]
            stream.thread_count = 1  # one core per worker process
            rate = stream.average_rate or stream.guessed_rate
            claimed = int(stream.frames or 0)  # 0 where the container stores no count (webm)
            # One reformatter reuses its swscale context across frames (as datasets/decoders.py);
            # the size is fixed from the first frame, as the readers do if the size changes.
            rgb, size = VideoReformatter(), None
            for frame in container.decode(stream):
                if size is None:
                    size = output_size(frame.width, frame.height, short_side)
                # threads=1: swscale would otherwise use every core in each worker.
                image = rgb.reformat(frame, format="rgb24", width=size[0], height=size[1],
                                     interpolation="BILINEAR", threads=1).to_image()
                path = os.path.join(tmp, f"img_{result.frames + 1:05d}.jpg")
                image.save(path, format="JPEG", quality=quality)
                result.frames += 1
                result.bytes += os.path.getsize(path)
        if result.frames == 0:
            raise ValueError("no frames decoded")
        if result.frames < claimed:  # a cut file: decoding ends early without an error
            raise ValueError(f"truncated: the stream header claims {claimed} frames")
        result.seconds = float(result.frames / rate) if rate else 0.0
        os.rename(tmp, folder)
    except (av.FFmpegError, OSError, ValueError) as exc:
        # A video that stops decoding midway fails too (as for the video readers): its folder
        # would be taken for the whole video.
        after = f" (after {result.frames} frames)" if result.frames else ""
        result.reason = f"{type(exc).__name__}: {exc}{after}".replace("\n", " ")
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def list_jobs(list_path: Optional[str], videos_dir: Optional[str], data_root: str
              ) -> Tuple[List[Tuple[str, int]], Dict[str, str]]:
    """The videos to extract and their folder names.

    Args:
        list_path: a list file (``<path> <label>`` lines, docs/FORMATS.md), or None.
        videos_dir: a folder searched recursively for mp4/avi/webm/mkv files, or None.
        data_root: prefix of the list's relative paths ('' = the list file's folder).

    Returns:
        ``(entries, folder_of)``: ``(video, label)`` per list line in order (label -1 for
        ``videos_dir``), and video -> folder path relative to the output folder (the video's
        path relative to the list's base or ``videos_dir``, without extension; a list path
        outside the base is mirrored by its absolute path).
    """
    entries: List[Tuple[str, int]] = []
    if list_path is not None:
        base = data_root or os.path.dirname(os.path.abspath(list_path))
        # A video listed twice is extracted once and its lines mirrored as given: the run that
        # reads the mirrored list is the one that checks it for duplicates.
        for rec in parse_list_file(list_path, nb_classes=sys.maxsize, data_root=data_root,
                                   allow_duplicates=True):
            entries.append((rec.path, rec.label))
    else:
        base = videos_dir
        for dirpath, dirs, files in os.walk(videos_dir):
            dirs.sort()
            entries += [(os.path.join(dirpath, f), -1) for f in sorted(files)
                        if f.lower().endswith(VIDEO_EXTS)]
    folder_of: Dict[str, str] = {}
    for video, _label in entries:
        rel = os.path.relpath(os.path.abspath(video), os.path.abspath(base))
        if rel == os.pardir or rel.startswith(os.pardir + os.sep):
            rel = os.path.abspath(video).lstrip(os.sep)
        folder_of[video] = os.path.splitext(rel)[0]
    return entries, folder_of


def _check_unique(folder_of: Dict[str, str]) -> None:
    """Two different videos (``a/b.mp4`` and ``a/b.avi``) must not share a folder."""
    seen: Dict[str, str] = {}
    for video, folder in folder_of.items():
        if folder in seen:
            raise ValueError(f"{seen[folder]} and {video} would both be extracted to {folder}/; "
                             f"rename one of them")
        seen[folder] = video


def _write_list(path: str, entries: Iterable[Tuple[str, int]], folder_of: Dict[str, str]) -> None:
    """Same lines as the input list, each path replaced by its folder (relative to --out)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + PARTIAL
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(f"{folder_of[video]} {label}\n" for video, label in entries)
    os.replace(tmp, path)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m{seconds % 60:02d}s"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns 0 when every video was extracted, 1 otherwise."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--list", help="list file of '<path> <label>' lines (docs/FORMATS.md)")
    src.add_argument("--videos", help="folder searched recursively for mp4/avi/webm/mkv files")
    p.add_argument("--data_root", default="",
                   help="prefix of the list's relative paths (default: the list file's folder)")
    p.add_argument("--out", required=True, help="output folder; video a/b.mp4 -> OUT/a/b/")
    p.add_argument("--out_list", default=None,
                   help="with --list: write the same lines with the folders as paths, relative to "
                        "--out (put it in --out, or train with --data_root OUT)")
    p.add_argument("--short_side", type=int, default=0,
                   help="scale frames so the short side is N pixels (0: source size; never "
                        "upscales)")
    p.add_argument("--quality", type=int, default=90,
                   help="JPEG quality 1-100 (default 90: on synthetic h264 videos the mean error "
                        "is 0.7 grey levels, 0.6 at 95 for 1.7x the bytes, 0.9 at 75 with edge "
                        "ringing up to 64 levels)")
    p.add_argument("--workers", type=int, default=1, help="processes, one decoding thread each")
    p.add_argument("--log_interval", type=float, default=10.0,
                   help="seconds between progress lines")
    a = p.parse_args(argv)
    if a.short_side < 0:
        p.error(f"--short_side must be >= 0, got {a.short_side}")
    if not 1 <= a.quality <= 100:
        p.error(f"--quality must be in [1, 100], got {a.quality}")
    if a.workers < 1:
        p.error(f"--workers must be >= 1, got {a.workers}")
    if a.out_list and not a.list:
        p.error("--out_list needs --list (a list file to copy the labels from)")
    if a.list and not os.path.isfile(a.list):
        p.error(f"--list {a.list}: file not found")
    if a.videos and not os.path.isdir(a.videos):
        p.error(f"--videos {a.videos}: not a folder")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        entries, folder_of = list_jobs(a.list, a.videos, a.data_root)
        _check_unique(folder_of)
    except ValueError as exc:  # ListFileError is a ValueError and names the file and line
        logger.error("%s", exc)
        return 2

    jobs, skipped = [], 0
    for video, folder in folder_of.items():  # each video once, even when listed twice
        out = os.path.join(a.out, folder)
        if os.path.isdir(out):
            skipped += 1  # finished by an earlier run (only complete folders get this name)
        else:
            os.makedirs(os.path.dirname(out), exist_ok=True)
            jobs.append((video, out, a.short_side, a.quality))
    logger.info("%d videos: %d to extract, %d already done (skipped), %d workers",
                len(folder_of), len(jobs), skipped, a.workers)

    done, frames, nbytes, seconds, failed = 0, 0, 0, 0.0, []
    start = last_log = time.time()
    pool = ProcessPoolExecutor(a.workers) if a.workers > 1 else None
    try:
        # Results in completion order, so one slow video does not hold back the progress lines.
        if pool:
            futures = [pool.submit(extract_video, *job) for job in jobs]
            results = (f.result() for f in as_completed(futures))
        else:
            results = (extract_video(*job) for job in jobs)
        for k, r in enumerate(results, start=1):
            if r.reason is None:
                done += 1
                frames, nbytes, seconds = frames + r.frames, nbytes + r.bytes, seconds + r.seconds
            else:
                failed.append(r)
                logger.warning("failed: %s: %s", r.video, r.reason)
            now = time.time()
            if now - last_log >= a.log_interval or k == len(jobs):
                last_log, rate = now, k / max(now - start, 1e-9)
                logger.info("%d/%d videos (%d failed), %.2f videos/s, %.0f frames/s, ETA %s",
                            k, len(jobs), len(failed), rate, frames / max(now - start, 1e-9),
                            _duration((len(jobs) - k) / rate))
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)  # on Ctrl-C, do not start the queued videos

    if a.out_list:
        _write_list(a.out_list, entries, folder_of)
        logger.info("wrote %s (%d lines, paths relative to %s)", a.out_list, len(entries), a.out)
    per_hour = f"{nbytes / 1e6 / (seconds / 3600):.0f} MB per hour of video" if seconds else "n/a"
    logger.info("done %d, skipped %d, failed %d videos; %d frames, %.1f MB written (%s, over "
                "%s of video) in %s", done, skipped, len(failed), frames, nbytes / 1e6, per_hour,
                _duration(seconds), _duration(time.time() - start))
    for r in failed:
        logger.error("not extracted: %s: %s", r.video, r.reason)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
