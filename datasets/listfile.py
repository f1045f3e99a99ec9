"""Parsing of the ``train.csv`` / ``val.csv`` / ``test.csv`` list files (docs/FORMATS.md).

One video per line: ``<path> <label>``. Fields are separated by any run of spaces or a tab; the
label is the last field, so a path may itself contain spaces. Blank lines and lines starting with
``#`` are skipped. Relative paths are joined to ``data_root``; when ``data_root`` is empty they
are taken relative to the folder of the list file, so a data set folder (list files next to the
videos, as the synthetic generator writes it) can be moved as a whole.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Tuple


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
                    require_all_classes: bool = False) -> List[VideoRecord]:
    """Read and validate a list file.

    Args:
        list_path: the ``.csv`` list file.
        nb_classes: number of classes; every label must be in ``[0, nb_classes)``.
        data_root: prefix for relative paths ('' = the folder of the list file).
        require_all_classes: also require that every class in ``[0, nb_classes)`` occurs (used
            for the training list: a training set missing a class, or a wrong ``--nb_classes``,
            is a configuration error; validation/test lists may legitimately lack classes).

    Returns:
        The records, in file order.

    Raises:
        ListFileError: missing/empty file, unparsable line, label out of range, or class count
            mismatch; the message names the file and the line.
    """
    if not os.path.isfile(list_path):
        raise ListFileError(f"{list_path}: list file not found (expected under --data_path)")
    base = data_root if data_root else os.path.dirname(os.path.abspath(list_path))
    records: List[VideoRecord] = []
    first_line_of: Dict[int, int] = {}
    with open(list_path, "r", encoding="utf-8") as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            path, label = _split_line(line, list_path, lineno)
            if not 0 <= label < nb_classes:
                raise ListFileError(
                    f"{list_path}:{lineno}: label {label} out of range [0, {nb_classes}) "
                    f"(--nb_classes {nb_classes}): {line!r}")
            if not os.path.isabs(path):
                path = os.path.join(base, path)
            records.append(VideoRecord(path=path, label=label, line=lineno))
            first_line_of.setdefault(label, lineno)
    if not records:
        raise ListFileError(f"{list_path}: no videos listed")
    if require_all_classes and len(first_line_of) != nb_classes:
        missing = sorted(set(range(nb_classes)) - set(first_line_of))
        shown = ", ".join(str(m) for m in missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise ListFileError(
            f"{list_path}: {len(first_line_of)} distinct classes found but --nb_classes is "
            f"{nb_classes} (largest label {max(first_line_of)} on line "
            f"{first_line_of[max(first_line_of)]}); labels never used: {shown}")
    return records


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

