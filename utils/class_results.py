"""Per-class results of a test: per-class top-1, mean-class accuracy, the confusion matrix (CSV
and PNG) and the pairs of classes most often confused.

The final multi-view test (``engine.run_final_test``, training's and ``--eval``'s) writes them
next to its predictions; ``tools/compare_runs.py`` reads them back (``read_confusion_csv``).
The matrix is counted by scikit-learn's ``confusion_matrix``, the reference implementation
researchers already trust and compare against, rather than by counting written here. Formats:
docs/FORMATS.md, 'Per-class results'.
"""
from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from utils.outputs import atomic_file

CORNER = "true \\ predicted"  # the first cell of the confusion CSV
PER_CLASS_COLUMNS = ("class", "name", "videos", "correct", "top1", "most_confused_with",
                     "confused_videos")
# Above this many classes the PNG has no count in its cells, and above LABELLED_CLASSES its
# axes show every k-th class index instead of every name: both would be unreadable.
COUNTED_CLASSES = 30
LABELLED_CLASSES = 60


@dataclass(frozen=True)
class ConfusedPair:
    """Videos of class ``true`` predicted as ``predicted`` (another class)."""

    true: int
    predicted: int
    videos: int
    share: float  # percent of the true class's test videos


@dataclass(frozen=True)
class ClassResults:
    """The confusion matrix of a test and what follows from it.

    Args:
        matrix: ``(C, C)`` int64 counts; row = true class, column = predicted class.
        names: the ``C`` class names (the label map), or the indices as text.
    """

    matrix: np.ndarray
    names: Tuple[str, ...]

    def __post_init__(self) -> None:
        if self.matrix.ndim != 2 or self.matrix.shape[0] != self.matrix.shape[1]:
            raise ValueError(f"a confusion matrix is square, got shape {self.matrix.shape}")
        if len(self.names) != self.num_classes:
            raise ValueError(f"{len(self.names)} class names for {self.num_classes} classes")

    @classmethod
    def from_labels(cls, labels: Sequence[int], predicted: Sequence[int], num_classes: int,
                    names: Optional[Sequence[str]] = None) -> "ClassResults":
        """Count the matrix of ``labels`` (true classes) against ``predicted`` (top-1 classes).

        Args:
            labels / predicted: one class index per video, each in ``[0, num_classes)``.
            num_classes: ``C`` (classes without a test video keep an all-zero row).
            names: the class names (default: the indices).

        Raises:
            ValueError: a class index out of range (naming it), or lengths that differ.
        """
        true = np.asarray(labels, dtype=np.int64).reshape(-1)
        pred = np.asarray(predicted, dtype=np.int64).reshape(-1)
        if true.shape != pred.shape:
            raise ValueError(f"{true.size} labels but {pred.size} predictions")
        for what, values in (("label", true), ("predicted class", pred)):
            bad = values[(values < 0) | (values >= num_classes)]
            if bad.size:  # confusion_matrix would drop these videos without a word
                raise ValueError(f"{what} {int(bad[0])} out of range [0, {num_classes})")
        if true.size:
            # scikit-learn (and scipy under it) take ~1.5 s to import: only once a test is counted,
            # not at the start of every run.
            from sklearn.metrics import confusion_matrix
            matrix = confusion_matrix(true, pred, labels=np.arange(num_classes)).astype(np.int64)
        else:  # every video unreadable (scikit-learn refuses empty input)
            matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
        return cls(matrix, tuple(names) if names is not None else index_names(num_classes))

    def with_names(self, names: Sequence[str]) -> "ClassResults":
        """The same counts with ``names`` (one per class)."""
        return ClassResults(self.matrix, tuple(names))

    @property
    def num_classes(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def videos(self) -> np.ndarray:
        """Test videos per true class."""
        return self.matrix.sum(axis=1)

    @property
    def correct(self) -> np.ndarray:
        """Videos per class whose top-1 is their class."""
        return np.diag(self.matrix).copy()

    @property
    def total(self) -> int:
        return int(self.matrix.sum())

    def per_class_top1(self) -> np.ndarray:
        """Top-1 of each class in percent (its recall); NaN for a class without test videos."""
        videos = self.videos
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(videos > 0, self.correct * 100.0 / np.maximum(videos, 1), np.nan)

    def top1(self) -> float:
        """Top-1 over all videos in percent (0 without videos, as the merge reports)."""
        return float(np.trace(self.matrix)) * 100.0 / self.total if self.total else 0.0

    def mean_class_top1(self) -> float:
        """The mean of the per-class top-1 over the classes that have test videos (NaN if
        none): every class weighs the same however many test videos it has."""
        values = self.per_class_top1()
        tested = values[~np.isnan(values)]
        return float(tested.mean()) if tested.size else math.nan

    def confused_pairs(self, k: int = 10) -> List[ConfusedPair]:
        """The ``k`` most frequent confusions (off-diagonal cells), most videos first, then the
        larger share of the true class, then by class index."""
        off = self.matrix.copy()
        np.fill_diagonal(off, 0)
        true, pred = np.nonzero(off)
        videos = self.videos
        pairs = [ConfusedPair(int(t), int(p), int(off[t, p]), off[t, p] * 100.0 / videos[t])
                 for t, p in zip(true, pred)]
        pairs.sort(key=lambda c: (-c.videos, -c.share, c.true, c.predicted))
        return pairs[:k]

    def describe_confusions(self, k: int = 10) -> str:
        """The ``confused_pairs`` as one log text: ``true -> predicted: videos (share)``."""
        pairs = self.confused_pairs(k)
        if not pairs:
            return "no video was confused with another class"
        return "; ".join(f"{self.names[c.true]} -> {self.names[c.predicted]}: {c.videos} "
                         f"({c.share:.1f}% of {self.names[c.true]})" for c in pairs)


def index_names(num_classes: int) -> Tuple[str, ...]:
    """The class indices as names, for a run without a label map."""
    return tuple(str(i) for i in range(num_classes))


# -------------------------------------------------------------------------------------- files
def result_files(output_dir: str, prefix: str = "test") -> Tuple[str, str, str]:
    """The per-class CSV, confusion CSV and confusion PNG of a test: ``{prefix}_per_class.csv``,
    ``{prefix}_confusion.csv``, ``{prefix}_confusion.png`` (``test``, or ``test_ema`` for the
    EMA weights' test)."""
    return tuple(os.path.join(output_dir, f"{prefix}_{name}")  # type: ignore[return-value]
                 for name in ("per_class.csv", "confusion.csv", "confusion.png"))


def write_class_results(results: ClassResults, output_dir: str, prefix: str = "test",
                        title: str = "") -> Tuple[str, str, str]:
    """Write the per-class CSV, the confusion CSV and its PNG (atomically); returns the paths.

    Args:
        results: the test's counts and class names.
        output_dir: the run's output folder.
        prefix: ``test`` or ``test_ema`` (see ``result_files``).
        title: the PNG's first title line (what was tested).
    """
    per_class, confusion, png = result_files(output_dir, prefix)
    write_per_class_csv(results, per_class)
    write_confusion_csv(results, confusion)
    plot_confusion(results, png, title)
    return per_class, confusion, png


def write_per_class_csv(results: ClassResults, path: str) -> None:
    """One row per class: index, name, test videos, correct, top-1 in percent (empty without
    videos), and the class its videos were most often mistaken for with how many."""
    top1 = results.per_class_top1()
    off = results.matrix.copy()
    np.fill_diagonal(off, 0)
    with atomic_file(path, newline="") as f:
        writer = csv.writer(f)
        writer.writerow(PER_CLASS_COLUMNS)
        for c in range(results.num_classes):
            worst = int(off[c].argmax())  # the lowest index among equal counts
            confused = int(off[c, worst])
            writer.writerow([c, results.names[c], int(results.videos[c]),
                             int(results.correct[c]),
                             "" if math.isnan(top1[c]) else f"{top1[c]:.2f}",
                             results.names[worst] if confused else "", confused])


def write_confusion_csv(results: ClassResults, path: str) -> None:
    """The matrix with the class names as the first row and column (rows: true classes)."""
    with atomic_file(path, newline="") as f:
        writer = csv.writer(f)
        writer.writerow([CORNER, *results.names])
        for name, row in zip(results.names, results.matrix):
            writer.writerow([name, *(int(v) for v in row)])


def read_confusion_csv(path: str) -> ClassResults:
    """A ``{prefix}_confusion.csv`` read back.

    Raises:
        ValueError: not such a file, naming it and the line.
    """
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows or not rows[0] or rows[0][0] != CORNER:
        raise ValueError(f"{path}:1: not a confusion matrix (first cell {CORNER!r} expected)")
    names = rows[0][1:]
    body = [r for r in rows[1:] if r]
    if len(body) != len(names):
        raise ValueError(f"{path}: {len(names)} classes in the header but {len(body)} rows")
    matrix = np.zeros((len(names), len(names)), dtype=np.int64)
    for i, row in enumerate(body):
        if len(row) != len(names) + 1 or row[0] != names[i]:
            raise ValueError(f"{path}:{i + 2}: expected class {names[i]!r} and {len(names)} "
                             f"counts")
        try:
            matrix[i] = [int(v) for v in row[1:]]
        except ValueError as err:
            raise ValueError(f"{path}:{i + 2}: {err}") from err
    return ClassResults(matrix, tuple(names))


def plot_confusion(results: ClassResults, path: str, title: str = "") -> None:
    """The matrix as an image: each cell coloured by its share of the true class's videos (so
    rare and frequent classes compare; square-root scale), with the counts written in the cells up to
    ``COUNTED_CLASSES`` classes and the names on the axes up to ``LABELLED_CLASSES`` (above,
    every k-th class index; the names are in the CSV)."""
    import matplotlib  # lazily: slow to import, and only this figure needs it
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after the backend is chosen
    from matplotlib.colors import PowerNorm  # lazily, as matplotlib above

    n = results.num_classes
    videos = results.videos
    share = results.matrix / np.maximum(videos, 1)[:, None]
    side = float(min(max(4.5, 0.3 * n + 3.0), 16.0))  # inches: 8 classes ~5.5, 400 -> 16
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    # A square-root scale, so that the small shares of rare confusions stay visible.
    image = ax.imshow(share, cmap="Blues", norm=PowerNorm(0.5, vmin=0.0, vmax=1.0),
                      interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04,
                 label="share of the true class's test videos (square-root scale)")
    if n <= LABELLED_CLASSES:
        size = 8 if n <= 20 else 6
        ax.set_xticks(range(n), results.names, rotation=90, fontsize=size)
        ax.set_yticks(range(n), results.names, fontsize=size)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
    else:
        ticks = list(range(0, n, int(math.ceil(n / 20))))
        ax.set_xticks(ticks, [str(t) for t in ticks], fontsize=7)
        ax.set_yticks(ticks, [str(t) for t in ticks], fontsize=7)
        ax.set_xlabel("predicted class (index; names in the confusion CSV)")
        ax.set_ylabel("true class (index)")
    if n <= COUNTED_CLASSES:
        for t, p in zip(*np.nonzero(results.matrix)):
            ax.text(p, t, str(int(results.matrix[t, p])), ha="center", va="center",
                    fontsize=8 if n <= 15 else 6,
                    color="white" if share[t, p] > 0.5 else "black")
    summary = (f"top-1 {results.top1():.2f}%, mean-class {results.mean_class_top1():.2f}%, "
               f"{results.total} videos, {n} classes")
    ax.set_title(f"{title}\n{summary}" if title else summary, fontsize=9)
    fig.tight_layout()
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100 if n <= LABELLED_CLASSES else 150)
    plt.close(fig)

