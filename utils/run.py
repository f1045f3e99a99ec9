"""What every training script does around its loop, written once: start (logging, process group,
output folder), per-epoch seeding, the run's records (``log.txt``, TensorBoard, ``args.json``) and
counting unreadable videos over all ranks."""
from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Dict, Iterator, Optional

import numpy as np

from .dist import (DistState, all_gather_object, destroy_process_group, init_distributed_mode,
                   seed_everything)
from .logs import TensorboardLogger, append_json_line, setup_logging


@contextlib.contextmanager
def started_run(run: Any, force_group: bool = False) -> Iterator[DistState]:
    """Set up logging and the process group; make ``--output_dir`` and log to its ``run.log``
    (rank 0); refuse a ``--resume`` file that does not exist. Tears the group down on exit.

    Args:
        run: ``RunConfig`` (``output_dir``, ``resume``, ``device`` and the launcher flags).
        force_group: a one-process group even without a launcher (DeepSpeed).
    """
    setup_logging(rank=int(os.environ.get("RANK", "0")))
    state = init_distributed_mode(run, force=force_group)
    try:
        if run.output_dir:
            os.makedirs(run.output_dir, exist_ok=True)
        setup_logging(state.rank, os.path.join(run.output_dir, "run.log") if run.output_dir
                      else None)
        if run.resume and not os.path.exists(run.resume):
            raise FileNotFoundError(f"--resume {run.resume}: no such checkpoint")
        yield state
    finally:
        destroy_process_group(state)


def run_facts(state: DistState) -> Dict[str, Any]:
    """What the launcher decided, saved with the flags (VideoMAE's checkpoints carry these)."""
    return {"world_size": state.world_size, "distributed": state.distributed,
            "dist_backend": state.backend}


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of one epoch on one rank: a resumed run draws what an uninterrupted one would."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    seed_everything(epoch_seed(seed, epoch, rank))


def global_bad_count(tracker: Any) -> int:
    """Distinct unreadable videos seen by all ranks."""
    paths = set()
    for rank_paths in all_gather_object(list(tracker.paths)):
        paths.update(rank_paths)
    return len(paths)


class RunRecords:
    """The run's outputs on rank 0: ``log.txt`` (one JSON object per line), TensorBoard scalars
    and the flags as JSON; no-ops on other ranks and without ``--output_dir``.

    Args:
        output_dir: ``--output_dir`` ('' for none).
        tensorboard_dir: ``--log_dir`` or the output folder.
        rank: this process's rank.
    """

    def __init__(self, output_dir: str, tensorboard_dir: Optional[str], rank: int) -> None:
        self.output_dir = output_dir if rank == 0 else ""
        self.writer: Optional[TensorboardLogger] = None
        if rank == 0 and tensorboard_dir:
            os.makedirs(tensorboard_dir, exist_ok=True)
            self.writer = TensorboardLogger(tensorboard_dir)

    def log(self, record: Dict[str, Any]) -> None:
        if self.output_dir:
            append_json_line(os.path.join(self.output_dir, "log.txt"), record)

    def scalars(self, head: str, step: int, **values: Any) -> None:
        if self.writer is not None:
            self.writer.update(head=head, step=step, **values)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def write_json(self, name: str, obj: Dict[str, Any]) -> None:
        if self.output_dir:
            with open(os.path.join(self.output_dir, name), "w", encoding="utf-8") as f:
                json.dump(obj, f, indent=2)
