"""Build ``train.csv`` / ``val.csv`` / ``test.csv`` list files from official split files.

Each line is ``<path> <label>``. Paths are written relative to the video folder unless
``--video_root`` is given (then they are prefixed with it); train with ``--data_root`` pointing
at the video folder when they are relative. ``classes.txt`` (``<label> <name>``) is written too.
As in VideoMAE, ``val.csv`` and ``test.csv`` hold the same videos (the official test or
validation split); evaluation differs only in the number of views.

Subcommands::

    python tools/build_lists.py ucf101 --splits_dir ucfTrainTestlist --split 1 --out lists/ucf101
    python tools/build_lists.py hmdb51 --splits_dir testTrainMulti_7030_splits --split 1 --out lists/hmdb51
    python tools/build_lists.py ssv2 --labels_dir labels --out lists/ssv2
    python tools/build_lists.py kinetics400 --annotations_dir k400/annotations \
        --video_dir k400/videos --out lists/k400     # paths relative to --video_dir

``--ext mp4`` rewrites the file extension (for re-encoded videos); ``--ext ''`` drops it (for
frame folders extracted next to the videos).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import re
import sys
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

logger = logging.getLogger(__name__)

Entry = Tuple[str, int]  # (relative path, label)
_VIDEO_EXTS = (".mp4", ".webm", ".mkv", ".avi", ".mov")


class SplitFileError(ValueError):
    """An official split file that does not parse; the message names the file and line."""


def _lines(path: str) -> Iterable[Tuple[int, str]]:
    """Non-empty stripped lines with 1-based numbers (official files use CRLF line ends)."""
    if not os.path.isfile(path):
        raise SplitFileError(f"{path}: file not found")
    with open(path, "r", encoding="utf-8-sig") as f:  # a byte-order mark is not part of line 1
        for lineno, raw in enumerate(f, start=1):
            line = raw.strip()
            if line:
                yield lineno, line


# ----------------------------------------------------------------------------- UCF101
def ucf101_entries(splits_dir: str, split: int = 1) -> Tuple[Dict[str, List[Entry]], List[str]]:
    """UCF101 from ``classInd.txt``, ``trainlist0N.txt`` and ``testlist0N.txt``.

    Args:
        splits_dir: folder of the official ``ucfTrainTestlist`` files.
        split: 1, 2 or 3.

    Returns:
        ``({'train': [...], 'test': [...]}, class_names)``; labels are classInd ids minus 1.
    """
    _check_split(split)
    class_ind = os.path.join(splits_dir, "classInd.txt")
    names: Dict[int, str] = {}
    for lineno, line in _lines(class_ind):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise SplitFileError(f"{class_ind}:{lineno}: expected '<id> <ClassName>', got {line!r}")
        names[int(parts[0]) - 1] = parts[1]
    if sorted(names) != list(range(len(names))):
        raise SplitFileError(f"{class_ind}: class ids are not 1..{len(names)}")
    # Case-insensitive: the files say 'HandStandPushups' where classInd says 'HandstandPushups'.
    by_name = {n.lower(): i for i, n in names.items()}
    out: Dict[str, List[Entry]] = {}
    for kind in ("train", "test"):
        path = os.path.join(splits_dir, f"{kind}list{split:02d}.txt")
        entries = []
        for lineno, line in _lines(path):
            parts = line.split()
            rel = parts[0]
            cls = rel.replace("\\", "/").split("/")[0].lower()
            if cls not in by_name:
                raise SplitFileError(f"{path}:{lineno}: class folder {cls!r} is not in {class_ind}")
            label = by_name[cls]
            if len(parts) > 1 and (not parts[1].isdigit() or int(parts[1]) - 1 != label):
                raise SplitFileError(f"{path}:{lineno}: label {parts[1]} does not match the class "
                                     f"folder {cls!r} (id {label + 1} in {class_ind})")
            entries.append((rel, label))
        out[kind] = entries
    return out, [names[i] for i in range(len(names))]


# ----------------------------------------------------------------------------- HMDB51
_HMDB_RE = re.compile(r"^(?P<cls>.+)_test_split(?P<split>\d)\.txt$")


def hmdb51_entries(splits_dir: str, split: int = 1) -> Tuple[Dict[str, List[Entry]], List[str]]:
    """HMDB51 from the 51 ``<class>_test_split<N>.txt`` files (``1`` = train, ``2`` = test,
    ``0`` = unused).

    Args:
        splits_dir: folder of the official ``testTrainMulti_7030_splits`` files.
        split: 1, 2 or 3.

    Returns:
        ``({'train': [...], 'test': [...]}, class_names)``; labels follow the sorted class names.
    """
    _check_split(split)
    files = {}
    for name in os.listdir(splits_dir):
        m = _HMDB_RE.match(name)
        if m and int(m.group("split")) == split:
            files[m.group("cls")] = os.path.join(splits_dir, name)
    if not files:
        raise SplitFileError(f"{splits_dir}: no '*_test_split{split}.txt' files")
    classes = sorted(files)
    out: Dict[str, List[Entry]] = {"train": [], "test": []}
    for label, cls in enumerate(classes):
        for lineno, line in _lines(files[cls]):
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise SplitFileError(f"{files[cls]}:{lineno}: expected '<video> <0|1|2>', got {line!r}")
            if parts[1] != "0":
                out["train" if parts[1] == "1" else "test"].append((f"{cls}/{parts[0]}", label))
    return out, classes


# ----------------------------------------------------------------------------- SSv2
def ssv2_entries(labels_dir: str, ext: str = "webm") -> Tuple[Dict[str, List[Entry]], List[str]]:
    """Something-Something-V2 from ``labels.json``, ``train.json`` and ``validation.json``.

    Args:
        labels_dir: folder of the official label files.
        ext: video file extension (the official videos are ``<id>.webm``).

    Returns:
        ``({'train': [...], 'validation': [...]}, class_names)``; the label of a video is the id
        that ``labels.json`` gives its template with the brackets removed.
    """
    labels_path = os.path.join(labels_dir, "labels.json")
    with open(labels_path, "r", encoding="utf-8-sig") as f:
        label_ids = {name: int(i) for name, i in json.load(f).items()}
    classes = [""] * len(label_ids)
    for name, i in label_ids.items():
        classes[i] = name
    out: Dict[str, List[Entry]] = {}
    for kind in ("train", "validation"):
        path = os.path.join(labels_dir, f"{kind}.json")
        with open(path, "r", encoding="utf-8-sig") as f:
            items = json.load(f)
        entries = []
        for k, item in enumerate(items):
            template = item.get("template", "").replace("[", "").replace("]", "")
            if template not in label_ids:
                raise SplitFileError(f"{path}: item {k} (id {item.get('id')}): template "
                                     f"{template!r} is not in {labels_path}")
            entries.append((f"{item['id']}.{ext}" if ext else str(item["id"]), label_ids[template]))
        out[kind] = entries
    return out, classes


# ----------------------------------------------------------------------------- Kinetics-400
def kinetics_entries(annotations_dir: str, video_dir: str
                     ) -> Tuple[Dict[str, List[Entry]], List[str], Dict[str, int]]:
    """Kinetics-400 from the official ``train.csv`` / ``validate.csv`` (CVDF: ``val.csv``) annotations
    (``label,youtube_id,time_start,time_end,split[,is_cc]``) and the videos found on disk.

    Videos are matched by file name ``<youtube_id>_<start:06d>_<end:06d>.<ext>`` (the layout of
    the common download scripts), or else by a name starting with the YouTube id, anywhere under
    ``video_dir``. Clips that are no longer downloadable are left out and counted.

    Args:
        annotations_dir: folder with ``train.csv`` and ``validate.csv`` or ``val.csv``.
        video_dir: folder searched (recursively) for the videos.

    Returns:
        ``(entries per split, class_names, missing per split)``; labels follow the sorted names.
    """
    found: Dict[str, str] = {}
    replacements: Dict[str, str] = {}
    for dirpath, dirs, filenames in os.walk(video_dir):
        dirs.sort()  # deterministic choice when a clip exists twice
        # The CVDF download has re-encoded copies of corrupted clips under replacement*/.
        target = replacements if "replacement" in os.path.relpath(dirpath, video_dir) else found
        for name in sorted(filenames):
            stem, ext = os.path.splitext(name)
            if ext.lower() not in _VIDEO_EXTS:
                continue
            rel = os.path.relpath(os.path.join(dirpath, name), video_dir)
            target.setdefault(stem, rel)
            target.setdefault(stem[:11], rel)  # YouTube ids have 11 characters
    found.update(replacements)
    rows: Dict[str, List[Dict[str, str]]] = {}
    for kind in ("train", "validate"):
        # The original release names the validation annotations validate.csv, CVDF val.csv.
        names = ("validate.csv", "val.csv") if kind == "validate" else ("train.csv",)
        paths = [os.path.join(annotations_dir, n) for n in names]
        path = next((q for q in paths if os.path.isfile(q)), None)
        if path is None:
            raise SplitFileError(f"{' or '.join(paths)}: file not found")
        with open(path, "r", encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            need = {"label", "youtube_id", "time_start", "time_end"}
            if not need <= set(reader.fieldnames or []):
                raise SplitFileError(f"{path}:1: header must contain {sorted(need)}, got {reader.fieldnames}")
            rows[kind] = [dict(r, _file=path) for r in reader]
    classes = sorted({r["label"] for r in rows["train"]})
    label_of = {c: i for i, c in enumerate(classes)}
    out: Dict[str, List[Entry]] = {}
    missing: Dict[str, int] = {}
    for kind, kind_rows in rows.items():
        entries, miss = [], 0
        for line, r in enumerate(kind_rows, start=2):
            if r["label"] not in label_of:
                raise SplitFileError(f"{r['_file']}:{line}: class {r['label']!r} "
                                     f"does not occur in train.csv")
            key = f"{r['youtube_id']}_{int(float(r['time_start'])):06d}_{int(float(r['time_end'])):06d}"
            rel = found.get(key) or found.get(r["youtube_id"])
            if rel is None:
                miss += 1
                continue
            entries.append((rel, label_of[r["label"]]))
        out[kind] = entries
        missing[kind] = miss
    return out, classes, missing


# ----------------------------------------------------------------------------- writing
def _check_split(split: int) -> None:
    if split not in (1, 2, 3):
        raise ValueError(f"--split must be 1, 2 or 3, got {split}")


def _with_ext(rel: str, ext: Optional[str]) -> str:
    if ext is None:
        return rel
    stem = os.path.splitext(rel)[0]
    return f"{stem}.{ext}" if ext else stem


def unique_entries(split: str, entries: Sequence[Entry]) -> List[Entry]:
    """``entries`` with each path once (the first line kept), since the training scripts refuse
    a list that names a video twice. Official split files have no repeats, but Kinetics clips
    matched by YouTube id alone, or ``--ext`` mapping ``a.avi`` and ``a.mp4`` to one name, can
    give some; they are dropped with one warning naming the first few.

    Args:
        split: the split's name, for the warning.
        entries: ``(path, label)`` as they will be written.
    """
    first: Dict[str, int] = {}
    kept: List[Entry] = []
    dropped: List[str] = []
    for path, label in entries:
        if path in first:
            dropped.append(f"{path} (label {label}; kept label {first[path]})")
            continue
        first[path] = label
        kept.append((path, label))
    if dropped:
        logger.warning("%s: %d repeated videos left out (each is listed once): %s%s", split,
                       len(dropped), "; ".join(dropped[:5]), " ..." if len(dropped) > 5 else "")
    return kept


def write_lists(out_dir: str, splits: Dict[str, List[Entry]], classes: Sequence[str],
                video_root: str = "", ext: Optional[str] = None) -> Dict[str, str]:
    """Write ``<split>.csv`` files and ``classes.txt``.

    Args:
        out_dir: output folder (the ``--data_path`` for training).
        splits: output split name (``train``/``val``/``test``) -> entries.
        classes: class names in label order.
        video_root: prefix joined to every path ('' keeps them relative).
        ext: new extension for every path (None keeps it, '' removes it).

    Returns:
        Split name -> written list file. A video named twice in a split is written once
        (``unique_entries``).
    """
    os.makedirs(out_dir, exist_ok=True)
    written = {}
    for split, entries in splits.items():
        path = os.path.join(out_dir, f"{split}.csv")
        entries = unique_entries(split, [(_with_ext(rel, ext), label) for rel, label in entries])
        with open(path, "w", encoding="utf-8") as f:
            for p, label in entries:
                f.write(f"{os.path.join(video_root, p) if video_root else p} {label}\n")
        written[split] = path
        logger.info("%s: %d videos", path, len(entries))
    with open(os.path.join(out_dir, "classes.txt"), "w", encoding="utf-8") as f:
        f.write("".join(f"{i} {name}\n" for i, name in enumerate(classes)))
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description="Build list files from official split files.")
    sub = p.add_subparsers(dest="data_set", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", required=True, help="output folder for train/val/test.csv")
    common.add_argument("--video_root", default="",
                        help="prefix for the paths (default: relative; train with --data_root)")
    common.add_argument("--ext", default=None,
                        help="replace the video extension (e.g. mp4); '' drops it (frame folders)")
    for name in ("ucf101", "hmdb51"):
        s = sub.add_parser(name, parents=[common])
        s.add_argument("--splits_dir", required=True, help="folder of the official split files")
        s.add_argument("--split", type=int, default=1, choices=(1, 2, 3))
    s = sub.add_parser("ssv2", parents=[common])
    s.add_argument("--labels_dir", required=True,
                   help="folder with labels.json, train.json, validation.json")
    s = sub.add_parser("kinetics400", parents=[common])
    s.add_argument("--annotations_dir", required=True,
                   help="folder with train.csv and validate.csv (or val.csv)")
    s.add_argument("--video_dir", required=True, help="folder searched for the downloaded videos")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        _run(a)
    except (SplitFileError, OSError, json.JSONDecodeError) as exc:
        logger.error("%s", exc)
        return 2
    return 0


def _run(a: argparse.Namespace) -> None:
    if a.data_set in ("ucf101", "hmdb51"):
        fn = ucf101_entries if a.data_set == "ucf101" else hmdb51_entries
        entries, classes = fn(a.splits_dir, a.split)
        splits = {"train": entries["train"], "val": entries["test"], "test": entries["test"]}
    elif a.data_set == "ssv2":
        entries, classes = ssv2_entries(a.labels_dir)
        splits = {"train": entries["train"], "val": entries["validation"], "test": entries["validation"]}
    else:
        entries, classes, missing = kinetics_entries(a.annotations_dir, a.video_dir)
        for kind, n in missing.items():
            if n:
                logger.warning("%s: %d annotated clips not found under %s (left out)", kind, n, a.video_dir)
        splits = {"train": entries["train"], "val": entries["validate"], "test": entries["validate"]}
    write_lists(a.out, splits, classes, a.video_root, a.ext)
    logger.info("%d classes written to %s", len(classes), os.path.join(a.out, "classes.txt"))


if __name__ == "__main__":
    sys.exit(main())
