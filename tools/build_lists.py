"""Build ``train.csv`` / ``val.csv`` / ``test.csv`` list files from official split files, from a
class-per-folder tree of your own videos, and K-shot training lists.

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
    python tools/build_lists.py folder my_videos --out lists/mine --ratios 0.7,0.15,0.15 \
        --seed 0 --shots 1,2,4,8,16                  # my_videos/<class>/.../<video>
    python tools/build_lists.py shots lists/ucf101 --shots 1,2,4,8,16 --seed 0

``folder`` splits every class by ``--ratios`` (train,val,test) with ``--seed``; ``--shots K,...``
(there and in ``shots``, for any list folder) also writes ``OUT/<K>shot/`` with a training list
of exactly K videos per class (nested over K for one seed) and the val/test lists unchanged.
The draws are :mod:`datasets.splits`'.

Long on purpose: one command line with a sub-command per source (four official split formats,
a folder tree, K-shot lists of any of them) and the list writer they share.

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
import shutil
import sys
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from datasets.listfile import (CLASSES_FILE, VIDEO_EXTENSIONS, ListFileError,  # noqa: E402
                               read_class_names, read_list_lines)
from datasets.splits import (SPLITS, FolderTreeError, k_shot, parse_ratios,  # noqa: E402
                             scan_class_folders, split_summary, stratified_split)
from utils.config import ConfigError  # noqa: E402

logger = logging.getLogger(__name__)

Entry = Tuple[str, int]  # (relative path, label)


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
            if ext.lower() not in VIDEO_EXTENSIONS:
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
    with open(os.path.join(out_dir, CLASSES_FILE), "w", encoding="utf-8") as f:
        f.write("".join(f"{i} {name}\n" for i, name in enumerate(classes)))
    return written


def parse_shots(text: str) -> List[int]:
    """``--shots 1,2,4``: distinct K values >= 1, ascending.

    Raises:
        FolderTreeError: naming the flag and the value.
    """
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise FolderTreeError(f"--shots {text!r}: expected K or K,K,... (e.g. 1,2,4,8,16)") from None
    if not values or values[0] < 1:
        raise FolderTreeError(f"--shots {text!r}: every K must be >= 1")
    return values


def write_shots(out_dir: str, drawn: Dict[int, List[Entry]], others: Dict[str, Sequence[Entry]],
                classes: Sequence[str], video_root: str = "", ext: Optional[str] = None
                ) -> Dict[int, str]:
    """Write ``out_dir/<K>shot/`` for every K: ``train.csv`` from ``drawn[K]``
    (``datasets.splits.k_shot``), ``others`` (val, test) and ``classes.txt`` as for the full
    lists.

    Args:
        out_dir: parent folder of the ``<K>shot`` folders.
        drawn: K -> its training entries.
        others: the other lists (``val``, ``test``), the same in every folder.
        classes: class names in label order.
        video_root: as :func:`write_lists`.
        ext: as :func:`write_lists`.

    Returns:
        K -> its folder (a ``--data_path``).
    """
    folders = {}
    for k, chosen in drawn.items():
        folders[k] = os.path.join(out_dir, f"{k}shot")
        write_lists(folders[k], {"train": chosen, **others}, classes, video_root, ext)
    return folders


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description="Build list files from official split files, from a "
                                            "class-per-folder tree of videos, and K-shot lists.")
    sub = p.add_subparsers(dest="data_set", required=True)
    shots = argparse.ArgumentParser(add_help=False)
    shots.add_argument("--shots", default="", metavar="K[,K...]",
                       help="also write OUT/<K>shot/ for each K: a training list of exactly K "
                            "videos per class (seeded; nested: the 1-shot video is in the 2-shot "
                            "list, ...), val/test lists and classes.txt unchanged")
    shots.add_argument("--seed", type=int, default=0,
                       help="seed of the K-shot draws (folder: and of the split); default 0")
    common = argparse.ArgumentParser(add_help=False, parents=[shots])
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
    s = sub.add_parser("folder", parents=[common],
                       help="your own videos: ROOT/<class>/.../<video>, split per class")
    s.add_argument("root", metavar="ROOT",
                   help="one folder per class (sorted names give the labels), videos anywhere "
                        "below it; paths are written relative to ROOT (train with --data_root "
                        "ROOT, or --out ROOT)")
    s.add_argument("--ratios", default="0.7,0.15,0.15", metavar="TRAIN,VAL,TEST",
                   help="share of each class's videos in train, val and test (default "
                        "0.7,0.15,0.15); a share of 0 for val or test makes that list the "
                        "other's videos (as the official tools' val.csv = test.csv)")
    s = sub.add_parser("shots", parents=[shots],
                       help="K-shot training lists from a list folder (any data set)")
    s.add_argument("lists", metavar="LISTS",
                   help="folder with train.csv (and val.csv, test.csv, classes.txt: copied)")
    s.add_argument("--out", default=None, help="parent of the <K>shot folders (default: LISTS)")
    a = p.parse_args(argv)
    if a.data_set == "shots" and not a.shots:
        p.error("shots: --shots K[,K...] is required")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        _run(a)
    except (SplitFileError, FolderTreeError, ListFileError, ConfigError, OSError,
            json.JSONDecodeError) as exc:
        logger.error("%s", exc)
        return 2
    return 0


def _run(a: argparse.Namespace) -> None:
    shots = parse_shots(a.shots) if a.shots else []
    if a.data_set == "shots":
        _shots_of_lists(a.lists, a.out or a.lists, shots, a.seed)
        return
    if a.data_set in ("ucf101", "hmdb51"):
        fn = ucf101_entries if a.data_set == "ucf101" else hmdb51_entries
        entries, classes = fn(a.splits_dir, a.split)
        splits = {"train": entries["train"], "val": entries["test"], "test": entries["test"]}
    elif a.data_set == "ssv2":
        entries, classes = ssv2_entries(a.labels_dir)
        splits = {"train": entries["train"], "val": entries["validation"], "test": entries["validation"]}
    elif a.data_set == "folder":
        splits, classes = _folder_splits(a.root, parse_ratios(a.ratios), a.seed)
    else:
        entries, classes, missing = kinetics_entries(a.annotations_dir, a.video_dir)
        for kind, n in missing.items():
            if n:
                logger.warning("%s: %d annotated clips not found under %s (left out)", kind, n, a.video_dir)
        splits = {"train": entries["train"], "val": entries["validate"], "test": entries["validate"]}
    # Drawn (and refused if a class is too small) before anything is written.
    drawn = {k: k_shot(splits["train"], k, a.seed, classes, "the training split") for k in shots}
    write_lists(a.out, splits, classes, a.video_root, a.ext)
    logger.info("%d classes written to %s", len(classes), os.path.join(a.out, CLASSES_FILE))
    if drawn:
        write_shots(a.out, drawn, {"val": splits["val"], "test": splits["test"]}, classes,
                    a.video_root, a.ext)
        logger.info("K-shot folders %s (seed %d): --data_path %s", ",".join(map(str, shots)),
                    a.seed, os.path.join(a.out, "<K>shot"))
    if a.data_set == "folder" and not a.video_root:
        logger.info("train with --data_path %s --data_root %s (the paths are relative to it)",
                    a.out, os.path.abspath(a.root))


def _folder_splits(root: str, ratios: Tuple[float, float, float], seed: int
                   ) -> Tuple[Dict[str, List[Entry]], List[str]]:
    """The train/val/test entries of a class-per-folder tree, and its class names."""
    tree = scan_class_folders(root)
    tree.report()
    splits = stratified_split(tree.entries(), ratios, seed, tree.classes)
    for empty, other in (("val", "test"), ("test", "val")):
        if not splits[empty]:
            logger.info("--ratios gives %s no share: %s.csv lists the %s videos", empty, empty,
                        other)
            splits[empty] = splits[other]
    logger.info("seed %d, ratios %s: %s", seed, ",".join(f"{r:g}" for r in ratios),
                split_summary(splits, len(tree.classes)))
    return splits, tree.classes


def _shots_of_lists(lists: str, out: str, shots: Sequence[int], seed: int) -> None:
    """``shots``: K-shot folders from ``lists/train.csv``, the other files copied unchanged."""
    train_csv = os.path.join(lists, "train.csv")
    train = unique_entries(train_csv, [(path, label) for _, path, label in
                                       read_list_lines(train_csv)])
    if not train:
        raise ListFileError(f"{train_csv}: no videos listed")
    classes_txt = os.path.join(lists, CLASSES_FILE)
    count = max(label for _, label in train) + 1
    if os.path.isfile(classes_txt):
        count = max(count, len(read_class_names(classes_txt, None, CLASSES_FILE)))
        classes = read_class_names(classes_txt, count, CLASSES_FILE)
    else:
        logger.info("%s: none; classes are named by their label, and their count is the largest "
                    "label in %s plus one (%d)", classes_txt, train_csv, count)
        classes = [str(i) for i in range(count)]
    copied = [n for n in [f"{s}.csv" for s in SPLITS[1:]] + [CLASSES_FILE]
              if os.path.isfile(os.path.join(lists, n))]
    missing = sorted({"val.csv", "test.csv"} - set(copied))
    if missing:
        logger.warning("%s has no %s: the K-shot folders will not have them either", lists,
                       " or ".join(missing))
    drawn = {k: k_shot(train, k, seed, classes, train_csv) for k in shots}
    for k, chosen in drawn.items():
        folder = os.path.join(out, f"{k}shot")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "train.csv"), "w", encoding="utf-8") as f:
            f.write("".join(f"{path} {label}\n" for path, label in chosen))
        for name in copied:
            shutil.copyfile(os.path.join(lists, name), os.path.join(folder, name))
        logger.info("%s: %d videos (%d per class), %s copied", os.path.join(folder, "train.csv"),
                    len(chosen), k, ", ".join(copied) or "nothing else")
    logger.info("relative paths stay as in %s: train with the --data_root of the full lists (or "
                "--data_root %s when they had none)", train_csv, os.path.abspath(lists))


if __name__ == "__main__":
    sys.exit(main())
