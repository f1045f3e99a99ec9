"""Parsing of the ``train.csv`` / ``val.csv`` / ``test.csv`` list files (docs/FORMATS.md).

One video per line: ``<path> <label>``. Fields are separated by any run of spaces or a tab; the
label is the last field, so a path may itself contain spaces. Blank lines and lines starting with
``#`` are skipped. Relative paths are joined to ``data_root``; when ``data_root`` is empty they
are taken relative to the folder of the list file, so a data set folder (list files next to the
videos, as the synthetic generator writes it) can be moved as a whole.

A UTF-8 byte-order mark (editors on Windows write one) is dropped. A video listed twice (the same
resolved path, with the same label or a conflicting one) is an error naming both lines, unless
``allow_duplicates`` (``--allow_duplicates``): then the lines are kept and one warning counts them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from utils.config import ConfigError

logger = logging.getLogger(__name__)

# Repeated lines named in one message; the rest are counted.
SHOWN_DUPLICATES = 5
# The label map the list-file tools write next to the lists: "<label> <name>" lines.
CLASSES_FILE = "classes.txt"
# Containers that count as videos when a folder is searched (case-insensitive): FFmpeg reads
# them all, through decord or PyAV. A file named in a list is read whatever its extension.
VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".flv",
                    ".wmv", ".3gp", ".ogv")


class ListFileError(ValueError):
    """A list file that cannot be used; the message names the file (and line where known)."""


@dataclass(frozen=True)
class VideoRecord:
    """One line of a list file.

    Args:
        path: resolved path of the video file or frame folder.
        label: class index.
        line: 1-based line number in the list file (for error messages).
    """

    path: str
    label: int
    line: int


def parse_list_file(list_path: str, nb_classes: int, data_root: str = "",
                    require_all_classes: bool = False,
                    allow_duplicates: bool = False) -> List[VideoRecord]:
    """Read and validate a list file.

    Args:
        list_path: the ``.csv`` list file.
        nb_classes: number of classes; every label must be in ``[0, nb_classes)``.
        data_root: prefix for relative paths ('' = the folder of the list file).
        require_all_classes: also require that every class in ``[0, nb_classes)`` occurs (used
            for the training list: a training set missing a class, or a wrong ``--nb_classes``,
            is a configuration error; validation/test lists may legitimately lack classes).
        allow_duplicates: keep a video listed more than once (``--allow_duplicates``) with a
            warning; by default that is an error.

    Returns:
        The records, in file order.

    Raises:
        ListFileError: missing/empty file, unparsable line, label out of range, class count
            mismatch, or a video listed twice; the message names the file and the lines.
    """
    base = data_root if data_root else os.path.dirname(os.path.abspath(list_path))
    records: List[VideoRecord] = []
    first_line_of: Dict[int, int] = {}
    for lineno, path, label in read_list_lines(list_path):
        if not 0 <= label < nb_classes:
            raise ListFileError(
                f"{list_path}:{lineno}: label {label} out of range [0, {nb_classes}) "
                f"(--nb_classes {nb_classes}): {path} {label}")
        if not os.path.isabs(path):
            path = os.path.join(base, path)
        records.append(VideoRecord(path=path, label=label, line=lineno))
        first_line_of.setdefault(label, lineno)
    if not records:
        raise ListFileError(f"{list_path}: no videos listed")
    check_duplicates(records, list_path, allow_duplicates)
    if require_all_classes and len(first_line_of) != nb_classes:
        missing = sorted(set(range(nb_classes)) - set(first_line_of))
        shown = ", ".join(str(m) for m in missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise ListFileError(
            f"{list_path}: {len(first_line_of)} distinct classes found but --nb_classes is "
            f"{nb_classes} (largest label {max(first_line_of)} on line "
            f"{first_line_of[max(first_line_of)]}); labels never used: {shown}")
    return records


def read_list_lines(list_path: str) -> Iterator[Tuple[int, str, int]]:
    """The lines of a list file as written: ``(line number, path, label)``, the path not yet
    joined to any root (tools that rewrite lists keep it so).

    Args:
        list_path: the ``.csv`` list file.

    Raises:
        ListFileError: the file is missing or a line does not parse (naming file and line).
    """
    if not os.path.isfile(list_path):
        raise ListFileError(f"{list_path}: list file not found (expected under --data_path)")
    # utf-8-sig: a byte-order mark would otherwise become part of the first path.
    with open(list_path, "r", encoding="utf-8-sig") as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            path, label = _split_line(line, list_path, lineno)
            yield lineno, path, label


def read_class_names(path: str, num_classes: Optional[int] = None,
                     flag: str = "--class_names") -> List[str]:
    """Class names from ``<label> <name>`` lines (the ``classes.txt`` the list-file tools
    write; a name may hold spaces). Labels without a line are named by their index.

    Args:
        path: the file.
        num_classes: the class count; None: one more than the largest label in the file.
        flag: the flag or file role named in the messages.

    Raises:
        FileNotFoundError: no such file.
        ConfigError: a line without a label in ``[0, num_classes)``, naming file and line.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{flag} {path}: no such file")
    given: Dict[int, str] = {}
    with open(path, encoding="utf-8-sig") as f:  # a byte-order mark is not part of line 1
        for lineno, raw in enumerate(f, start=1):
            parts = raw.strip().split(None, 1)
            if not parts:
                continue
            if (len(parts) != 2 or not parts[0].isdigit()
                    or (num_classes is not None and int(parts[0]) >= num_classes)):
                limit = "" if num_classes is None else f" in [0, {num_classes})"
                raise ConfigError(f"{path}:{lineno}: expected '<label> <name>' with a label"
                                  f"{limit}, got {raw.strip()!r}")
            given[int(parts[0])] = parts[1]
    count = (max(given) + 1 if given else 0) if num_classes is None else num_classes
    return [given.get(i, str(i)) for i in range(count)]


def is_video_file(name: str) -> bool:
    """Whether a file name ends in one of :data:`VIDEO_EXTENSIONS` (case-insensitive)."""
    return name.lower().endswith(VIDEO_EXTENSIONS)


def find_videos(inputs: Sequence[str]) -> List[str]:
    """The videos named on a command line: each file as given (whatever its extension), each
    folder's video files (recursively, sorted); a video reached twice is taken once.

    Raises:
        FileNotFoundError: an input that does not exist, or a folder without video files.
    """
    found: List[str] = []
    for item in inputs:
        if os.path.isdir(item):
            found += find_video_files(item)
        elif os.path.exists(item):
            found.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such video file or folder")
    return list(dict.fromkeys(found))


def check_duplicates(records: Sequence[VideoRecord], list_path: str,
                     allow_duplicates: bool = False) -> None:
    """Refuse (or, with ``allow_duplicates``, warn once about) videos listed more than once.

    A repeated line silently weighs that video twice in every epoch (and counts it twice in
    the test); the same video with another label contradicts itself. Both are named with their
    line numbers. Paths are compared after ``os.path.normpath`` (``a/./b.mp4`` is ``a/b.mp4``).

    Args:
        records: the parsed lines (paths already resolved).
        list_path: the list file, for the message.
        allow_duplicates: ``--allow_duplicates``: keep them and log one warning.

    Raises:
        ListFileError: a video listed twice and ``allow_duplicates`` is False.
    """
    first: Dict[str, VideoRecord] = {}
    repeats: List[str] = []
    conflicts = 0
    for rec in records:
        seen = first.setdefault(os.path.normpath(rec.path), rec)
        if seen is rec:
            continue
        if seen.label != rec.label:
            conflicts += 1
            repeats.append(f"{list_path}:{rec.line}: {rec.path} has label {rec.label}, line "
                           f"{seen.line} gives it label {seen.label}")
        else:
            repeats.append(f"{list_path}:{rec.line}: {rec.path} repeats line {seen.line}")
    if not repeats:
        return
    counts = f"{len(repeats)} repeated line(s), {conflicts} with a conflicting label"
    if allow_duplicates:
        logger.warning("%s: %s, kept as listed (--allow_duplicates); first: %s", list_path,
                       counts, repeats[0])
        return
    more = len(repeats) - SHOWN_DUPLICATES
    raise ListFileError(
        f"{list_path}: videos listed more than once ({counts}): "
        + "; ".join(repeats[:SHOWN_DUPLICATES]) + (f"; ... and {more} more" if more > 0 else "")
        + ". Remove the repeated lines, or pass --allow_duplicates to keep them")


def _split_line(line: str, list_path: str, lineno: int) -> Tuple[str, int]:
    """Split ``<path><whitespace><label>`` with the label as the last field."""
    parts = line.rsplit(None, 1)  # None: any run of spaces/tabs
    if len(parts) != 2:
        raise ListFileError(
            f"{list_path}:{lineno}: expected '<path> <label>', got {line!r}")
    path, label_text = parts
    try:
        label = int(label_text)
    except ValueError:
        raise ListFileError(
            f"{list_path}:{lineno}: label {label_text!r} is not an integer "
            f"(expected '<path> <label>'): {line!r}") from None
    return path.strip(), label



def find_video_files(folder: str) -> List[str]:
    """The video files under ``folder`` (``VIDEO_EXTENSIONS``, any case), recursively, sorted.

    Raises:
        FileNotFoundError: no such folder, or no video file in it (naming the extensions).
    """
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder}: no such folder")
    found = sorted(os.path.join(root, name) for root, _, names in os.walk(folder)
                   for name in names if is_video_file(name))
    if not found:
        raise FileNotFoundError(f"{folder}: no video files in this folder "
                                f"({', '.join(e[1:] for e in VIDEO_EXTENSIONS)})")
    return found
