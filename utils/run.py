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
from .outputs import atomic_file, make_dirs, remove_stale_temporaries, writing
from .runlock import output_dir_locked


@contextlib.contextmanager
def started_run(run: Any, force_group: bool = False) -> Iterator[DistState]:
    """Set up logging and the process group; make ``--output_dir``, hold its run lock and log
    to its ``run.log`` (rank 0); remove temporary files that killed runs left there; refuse a
    ``--resume`` file that does not exist. Releases the lock and tears the group down on exit.

    Args:
        run: ``RunConfig`` (``output_dir``, ``resume``, ``device`` and the launcher flags).
        force_group: a one-process group even without a launcher (DeepSpeed).

    Raises:
        RunLockError: another run is using ``--output_dir``.
        OutputWriteError: ``--output_dir`` cannot be made or written.
    """
    setup_logging(rank=int(os.environ.get("RANK", "0")))
    state = init_distributed_mode(run, force=force_group)
    try:
        with output_dir_locked(run.output_dir, state):
            log_file = os.path.join(run.output_dir, "run.log") if run.output_dir else None
            setup_logging(state.rank, log_file)
            if run.output_dir and state.rank == 0:  # the lock is ours: no live run writes here
                remove_stale_temporaries(run.output_dir)
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
            make_dirs(tensorboard_dir)
            with writing(tensorboard_dir):
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
        """Write ``obj`` to ``name`` in the output folder, replacing the previous file only
        once the new one is complete."""
        if self.output_dir:
            with atomic_file(os.path.join(self.output_dir, name)) as f:
                json.dump(obj, f, indent=2)
