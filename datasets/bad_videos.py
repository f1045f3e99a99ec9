"""Counting bad videos per split and stopping the run past ``--max_bad_fraction``
(docs/DATA.md, 'Bad videos').

The datasets report the bad videos they met in each item (``bad_paths``); the engine feeds them,
batch by batch, to a :class:`BadVideoTracker`, which de-duplicates them and raises
:class:`TooManyBadVideos` once more than ``max_fraction`` of the split is bad.
"""

from __future__ import annotations

from typing import Dict, Iterable, List

# How many paths an error message or summary lists.
SHOWN_PATHS = 5


class TooManyBadVideos(RuntimeError):
    """More than ``--max_bad_fraction`` of a split could not be decoded."""


class BadVideoTracker:
    """Unique bad videos of one split.

    Args:
        split_name: 'train', 'val' or 'test' (used in messages).
        split_size: number of videos in the split.
        max_fraction: largest tolerated fraction of bad videos (``--max_bad_fraction``).
    """

    def __init__(self, split_name: str, split_size: int, max_fraction: float) -> None:
        if not 0.0 <= max_fraction <= 1.0:
            raise ValueError(f"--max_bad_fraction must be in [0, 1], got {max_fraction}")
        self.split_name = split_name
        self.split_size = int(split_size)
        self.max_fraction = float(max_fraction)
        self._paths: List[str] = []
        self._seen = set()

    @property
    def count(self) -> int:
        """Number of distinct bad videos seen so far."""
        return len(self._paths)

    @property
    def paths(self) -> List[str]:
        """Distinct bad paths, in the order they were first reported."""
        return list(self._paths)

    @property
    def limit(self) -> float:
        """Largest tolerated number of bad videos (``max_fraction * split_size``)."""
        return self.max_fraction * self.split_size

    def update(self, paths: Iterable[str]) -> None:
        """Record the bad paths reported by one batch.

        Args:
            paths: bad video paths (repeats are ignored).

        Raises:
            TooManyBadVideos: the number of distinct bad videos exceeds the limit.
        """
        new = False
        for p in paths:
            if p not in self._seen:
                self._seen.add(p)
                self._paths.append(p)
                new = True
        if new and self.count > self.limit:
            shown = "\n  ".join(self._paths[:SHOWN_PATHS])
            more = f"\n  ... and {self.count - SHOWN_PATHS} more" if self.count > SHOWN_PATHS else ""
            raise TooManyBadVideos(
                f"{self.count} bad videos in the {self.split_name} split of {self.split_size} "
                f"videos, more than --max_bad_fraction {self.max_fraction:g} allows "
                f"({self.limit:g}). First bad videos:\n  {shown}{more}\n"
                f"Fix or remove them from the {self.split_name} list file, or raise "
                f"--max_bad_fraction.")

    def summary(self) -> Dict[str, object]:
        """A JSON-friendly summary for the epoch log."""
        return {"split": self.split_name, "bad_videos": self.count, "split_size": self.split_size,
                "max_bad_fraction": self.max_fraction, "bad_paths": self._paths[:SHOWN_PATHS]}
