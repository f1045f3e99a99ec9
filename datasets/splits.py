"""Lists from your own videos: a class-per-folder tree, seeded stratified splits, K-shot subsets
(``tools/build_lists.py folder`` and ``shots``; docs/DATASET.md, 'Your own videos').

* :func:`scan_class_folders`: ``ROOT/<class>/.../<video>`` -> the videos of each class (class
  names sorted, so the label map is stable), the files that are not videos counted apart.
* :func:`stratified_split`: each class's videos cut into train/val/test by ``ratios``.
* :func:`k_shot`: exactly K training videos of every class.

Both draws are seeded per class (``numpy.random.default_rng([seed, label, stream])``): the same
seed and the same videos give the same lists whatever order the disk lists them in, and the
K-shot sets of one seed are nested (the K videos of a class are the first K of one seeded
permutation, so the 1-shot video is in the 2-shot set, and so on).

Why not scikit-learn's ``train_test_split(stratify=...)``: it cuts two ways, so three splits need
two calls, and its allocation keeps the split totals exact rather than each class: on 3000
random trees (2-14 classes of 5-39 videos, train shares 0.5-0.8) a class's train count was up
to 1.8 videos from its share. Here every class gets ``floor`` or ``ceil`` of its share in every
split, the videos left after the floors going first to a split that would get none of the class,
then to the splits furthest behind their share of the classes allocated so far, which keeps the
split totals near their shares too (docs/DATASET.md gives the measured distance). A K-shot draw takes exactly K per
class, which stratified splitters (proportional by design) do not do.
"""
from __future__ import annotations

import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .listfile import is_video_file

logger = logging.getLogger(__name__)

Entry = Tuple[str, int]  # (path as written in a list, label)
SPLITS = ("train", "val", "test")
# Files named in one message; the rest are counted.
SHOWN = 5
# Independent random streams of one seed and class.
_SPLIT_STREAM, _SHOTS_STREAM = 0, 1


class FolderTreeError(ValueError):
    """A class-per-folder tree, split or K-shot request that cannot give usable lists; the
    message names the folder, the class and the counts."""


@dataclass
class ClassTree:
    """The videos of a class-per-folder tree.

    Args:
        root: the folder scanned.
        classes: class folder names, sorted (label = position).
        videos: class name -> its videos' paths relative to ``root`` ('/'-separated), sorted.
        non_video: paths (relative to ``root``) of files under class folders that are not
            videos by their extension (``datasets.listfile.VIDEO_EXTENSIONS``).
        outside: paths of files directly in ``root``, which belong to no class.
        hidden: hidden folders (names starting with '.') left out, relative to ``root``.
    """

    root: str
    classes: List[str]
    videos: Dict[str, List[str]]
    non_video: List[str] = field(default_factory=list)
    outside: List[str] = field(default_factory=list)
    hidden: List[str] = field(default_factory=list)

    def entries(self) -> List[Entry]:
        """``(path, label)`` of every video, in class then path order."""
        return [(p, label) for label, c in enumerate(self.classes) for p in self.videos[c]]

    def report(self) -> None:
        """Log what was found and, counted and named, everything that was not taken."""
        total = sum(len(v) for v in self.videos.values())
        logger.info("%s: %d videos in %d classes (%d to %d per class)", self.root, total,
                    len(self.classes), min(len(v) for v in self.videos.values()),
                    max(len(v) for v in self.videos.values()))
        if self.non_video:
            kinds = Counter(os.path.splitext(p)[1].lower() or "(no extension)"
                            for p in self.non_video)
            logger.warning("%d files under the class folders are not videos and are left out "
                           "(%s): %s", len(self.non_video),
                           ", ".join(f"{n} {k}" for k, n in kinds.most_common()),
                           _shown(self.non_video))
        if self.outside:
            videos = sum(is_video_file(p) for p in self.outside)
            logger.warning("%d files directly in %s belong to no class folder and are left out "
                           "(%d of them videos): %s", len(self.outside), self.root, videos,
                           _shown(self.outside))
        if self.hidden:
            logger.warning("%d hidden folders left out: %s", len(self.hidden),
                           _shown(self.hidden))


def _shown(paths: Sequence[str]) -> str:
    more = len(paths) - SHOWN
    return ", ".join(paths[:SHOWN]) + (f" ... and {more} more" if more > 0 else "")


def scan_class_folders(root: str) -> ClassTree:
    """Find the videos of ``ROOT/<class>/.../<video>``: each folder directly under ``root`` is a
    class, every video anywhere below it (symbolic links followed) one of its examples.

    Args:
        root: the tree's top folder.

    Returns:
        The classes (sorted names) and their videos; files that are not videos, files outside
        any class folder and hidden folders are counted in the result (:meth:`ClassTree.report`).

    Raises:
        FolderTreeError: ``root`` is not a folder, holds no class folder, or a class folder holds
            no video (every such class named, with what it holds instead).
    """
    if not os.path.isdir(root):
        raise FolderTreeError(f"{root}: not a folder (expected ROOT/<class>/<video>)")
    tree = ClassTree(root=root, classes=[], videos={})
    class_dirs = []
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if name.startswith("."):
            if os.path.isdir(path):
                tree.hidden.append(name)
            else:
                tree.outside.append(name)
        elif os.path.isdir(path):
            class_dirs.append(name)
        else:
            tree.outside.append(name)
    if not class_dirs:
        raise FolderTreeError(f"{root}: no class folders found (expected ROOT/<class>/<video>; "
                              f"{len(tree.outside)} files directly in it)")
    empty = []
    for cls in class_dirs:
        videos, others = [], []
        for dirpath, dirs, files in os.walk(os.path.join(root, cls), followlinks=True):
            rel_dir = os.path.relpath(dirpath, root)
            tree.hidden.extend(os.path.join(rel_dir, d) for d in sorted(dirs) if d.startswith("."))
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for f in sorted(files):
                rel = os.path.join(rel_dir, f).replace(os.sep, "/")
                (videos if is_video_file(f) else others).append(rel)
        if not videos:
            empty.append(f"{cls!r} ({len(others)} other files)" if others else repr(cls))
        tree.classes.append(cls)
        tree.videos[cls] = sorted(videos)
        tree.non_video.extend(others)
    if empty:
        raise FolderTreeError(f"{root}: {len(empty)} of {len(class_dirs)} class folders hold no "
                              f"video (extensions counted as videos: see VIDEO_EXTENSIONS): "
                              f"{', '.join(empty)}. Remove them or add videos")
    return tree


# ------------------------------------------------------------------------------ splits
def parse_ratios(text: str) -> Tuple[float, float, float]:
    """``--ratios train,val,test`` (e.g. ``0.7,0.15,0.15``): three shares >= 0 summing to 1, a
    positive train share and at least one positive evaluation share.

    Raises:
        FolderTreeError: naming the flag and the value.
    """
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise FolderTreeError(f"--ratios {text!r}: expected three numbers 'train,val,test', "
                              f"e.g. 0.7,0.15,0.15") from None
    if len(values) != 3 or not all(math.isfinite(v) and v >= 0 for v in values):
        raise FolderTreeError(f"--ratios {text!r}: expected three shares >= 0 'train,val,test', "
                              f"e.g. 0.7,0.15,0.15")
    if abs(sum(values) - 1.0) > 1e-6:
        raise FolderTreeError(f"--ratios {text!r}: the shares sum to {sum(values):g}, not 1")
    if values[0] == 0 or values[1] + values[2] == 0:
        raise FolderTreeError(f"--ratios {text!r}: train and at least one of val and test need "
                              f"a positive share")
    return values  # type: ignore[return-value]


def allocate(n: int, ratios: Sequence[float], given: Optional[Sequence[float]] = None
             ) -> List[int]:
    """Videos of a class of ``n`` in each split: ``floor(n * r)`` each, and the videos left one
    each to the splits whose share is not whole: those that would have none first, then those
    furthest behind their share.

    Args:
        n: the class's videos.
        ratios: the split shares (summing to 1).
        given: per split, how far its total is from its share of the classes allocated before
            (``allocated - share * videos``; default: none, so the largest remainders).

    Returns:
        Counts summing to ``n``, each ``floor`` or ``ceil`` of ``n * r``.
    """
    exact = [round(n * r, 9) for r in ratios]  # 0.7 * 10 is 7.000000000000001
    counts = [int(math.floor(e)) for e in exact]
    given = given or [0.0] * len(ratios)
    # What each split lacks of its share once this class's floors are in; a split that would
    # get none of the class's videos comes first, so that small classes reach every split.
    behind = [e - c - g for e, c, g in zip(exact, counts, given)]
    order = sorted((i for i in range(len(ratios)) if exact[i] > counts[i]),
                   key=lambda i: (counts[i] > 0, -round(behind[i], 9), i))
    for i in order[:n - sum(counts)]:
        counts[i] += 1
    return counts


def _min_class_size(ratios: Sequence[float]) -> int:
    """The fewest videos a class can have and still give every split of positive share one."""
    n = 1
    while min(c for c, r in zip(allocate(n, ratios), ratios) if r > 0) < 1:
        n += 1
    return n


def stratified_split(entries: Sequence[Entry], ratios: Sequence[float], seed: int,
                     class_names: Sequence[str]) -> Dict[str, List[Entry]]:
    """Cut each class's videos into train/val/test by ``ratios`` (see the module docstring).

    Args:
        entries: ``(path, label)`` of every video; labels in ``[0, len(class_names))``.
        ratios: train, val, test shares (:func:`parse_ratios`); a zero share gives no videos.
        seed: the draw's seed (>= 0).
        class_names: names for the messages, in label order.

    Returns:
        ``{'train': [...], 'val': [...], 'test': [...]}``, each sorted by label then path.

    Raises:
        FolderTreeError: a class too small for every split of positive share to get one of its
            videos (every such class named, with its count and the minimum).
    """
    by_class = _by_class(entries, len(class_names))
    out: Dict[str, List[Entry]] = {s: [] for s in SPLITS}
    ahead = [0.0] * len(SPLITS)  # per split: videos given minus its share of them so far
    short = []
    for label, paths in enumerate(by_class):
        counts = allocate(len(paths), ratios, ahead)
        if any(c == 0 and r > 0 for c, r in zip(counts, ratios)):
            short.append(f"class {label} {class_names[label]!r} has {len(paths)}")
            continue
        ahead = [a + c - r * len(paths) for a, c, r in zip(ahead, counts, ratios)]
        order = _rng(seed, label, _SPLIT_STREAM).permutation(len(paths))
        start = 0
        for split, c in zip(SPLITS, counts):
            out[split].extend((paths[i], label) for i in order[start:start + c])
            start += c
    if short:
        raise FolderTreeError(
            f"--ratios {','.join(f'{r:g}' for r in ratios)}: {len(short)} classes have too few "
            f"videos for one in every split (at least {_min_class_size(ratios)} needed): "
            f"{'; '.join(short)}. Add videos, merge or drop these classes, or change --ratios")
    return {s: sorted(v, key=lambda e: (e[1], e[0])) for s, v in out.items()}


def k_shot(entries: Sequence[Entry], shots: int, seed: int, class_names: Sequence[str],
           source: str = "the training split") -> List[Entry]:
    """Exactly ``shots`` videos of every class, drawn with ``seed`` (nested over ``shots``).

    Args:
        entries: ``(path, label)`` of the training videos, each path once.
        shots: K, videos per class (>= 1).
        seed: the draw's seed (>= 0); the same seed and entries give the same K-shot list.
        class_names: names for the messages, in label order (their count is the class count).
        source: what ``entries`` are, for the messages (e.g. the list file).

    Returns:
        The chosen entries, in the order of ``entries``.

    Raises:
        FolderTreeError: a class with fewer than ``shots`` videos (every such class named, with
            its count).
    """
    if shots < 1:
        raise FolderTreeError(f"--shots must be >= 1, got {shots}")
    by_class = _by_class(entries, len(class_names), source)
    short = [f"class {label} {class_names[label]!r} has {len(paths)}"
             for label, paths in enumerate(by_class) if len(paths) < shots]
    if short:
        raise FolderTreeError(f"--shots {shots}: {len(short)} classes have fewer than {shots} "
                              f"videos in {source}: {'; '.join(short)}")
    chosen = set()
    for label, paths in enumerate(by_class):
        order = _rng(seed, label, _SHOTS_STREAM).permutation(len(paths))
        chosen.update((paths[i], label) for i in order[:shots])
    return [e for e in entries if e in chosen]


def _by_class(entries: Sequence[Entry], num_classes: int, source: str = "the list"
              ) -> List[List[str]]:
    """Sorted paths per label (so the draws do not depend on the order entries came in)."""
    by_class: List[List[str]] = [[] for _ in range(num_classes)]
    for path, label in entries:
        if not 0 <= label < num_classes:
            raise FolderTreeError(f"{source}: {path} has label {label}, not in "
                                  f"[0, {num_classes})")
        by_class[label].append(path)
    return [sorted(p) for p in by_class]


def _rng(seed: int, label: int, stream: int) -> np.random.Generator:
    if seed < 0:
        raise FolderTreeError(f"--seed must be >= 0, got {seed}")
    return np.random.default_rng([seed, label, stream])


def counts_per_class(entries: Sequence[Entry], num_classes: int) -> List[int]:
    """Videos of each label in ``entries``."""
    counts = [0] * num_classes
    for _, label in entries:
        counts[label] += 1
    return counts


def split_summary(splits: Mapping[str, Sequence[Entry]], num_classes: int) -> str:
    """One line per split: its videos and the fewest and most of any class."""
    lines = []
    for split, entries in splits.items():
        c = counts_per_class(entries, num_classes)
        lines.append(f"{split}: {len(entries)} videos, {min(c)} to {max(c)} per class")
    return "; ".join(lines)
