"""This project's run checkpoints on disk: their layout, finding one in a run folder, reading it.

A checkpoint is a dict of tensors and plain types only (it loads with ``weights_only=True``)::

    {"model": the kept tensors (models.method_state.trainable_state_dict), "optimizer",
     "scaler", "epoch": last finished epoch, "step": optimizer steps done, "args": the run's
     flags, "transfer_type", "backbone": {"path", "sha256"} of --finetune, "best_acc",
     "model_ema": EMA of the kept tensors or None}

Plain runs write ``checkpoint-<tag>.pth`` (tag: epoch number, ``best`` or ``last``); DeepSpeed
runs write the engine's own folders ``checkpoint-<tag>/`` (``mp_rank_00_model_states.pt`` holds
``module`` plus the same keys). Writing them, and resuming a run's training from them, is
``engine_checkpoints.TrainingCheckpoints``; the search here serves ``--auto_resume``, ``--eval``
and the tools (predict, export), which all name a checkpoint or a run folder.
"""
from __future__ import annotations

import logging
import os
import re
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar

from .serialization import DS_MODEL_FILE, CheckpointError, UnreadableCheckpointError, torch_load

logger = logging.getLogger(__name__)

Loaded = TypeVar("Loaded")

_TAG_RE = re.compile(r"^checkpoint-(\d+)(\.pth)?$")


def _epoch_of(name: str) -> Optional[int]:
    m = _TAG_RE.match(name)
    return int(m.group(1)) if m else None


def is_checkpoint(path: str) -> bool:
    """True for a checkpoint file, or a DeepSpeed checkpoint folder (one holding its model file)."""
    return os.path.isfile(path) or os.path.isfile(os.path.join(path, DS_MODEL_FILE))


def resume_candidates(output_dir: str) -> List[str]:
    """Checkpoints to auto-resume from in ``output_dir``, newest first: ``checkpoint-last``
    (file or DeepSpeed folder, or its ``.old`` left by a crash mid-rename), then by epoch.
    Temporary files are never taken."""
    if not output_dir or not os.path.isdir(output_dir):
        return []
    last = [os.path.join(output_dir, n) for n in
            ("checkpoint-last.pth", "checkpoint-last", "checkpoint-last.old")]
    numbered = sorted(((e, n) for n in os.listdir(output_dir)
                       if (e := _epoch_of(n)) is not None), reverse=True)
    return [p for p in last + [os.path.join(output_dir, n) for _, n in numbered]
            if is_checkpoint(p)]


def find_resume_checkpoint(output_dir: str) -> Optional[str]:
    """The newest checkpoint in ``output_dir`` (``resume_candidates``), or None. The file is not
    read: ``load_newest_readable`` also skips one that cannot be loaded."""
    candidates = resume_candidates(output_dir)
    return candidates[0] if candidates else None


# A run folder's best checkpoint: the file of plain runs, the folder of DeepSpeed runs.
BEST_NAMES = ("checkpoint-best.pth", "checkpoint-best")


def find_run_checkpoint(path: str, flag: str = "--resume") -> str:
    """The checkpoint a user means by ``path``: itself when it is a checkpoint file or a DeepSpeed
    checkpoint folder; for a run's output folder, its best checkpoint if it has one, else the
    newest (``resume_candidates``). The choice is logged.

    Args:
        path: a checkpoint, or a run's ``--output_dir``.
        flag: the flag that named it, for messages.

    Raises:
        FileNotFoundError: ``path`` does not exist, or is a folder without any checkpoint (the
            message names the folder and the names looked for).
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"{flag} {path}: no such checkpoint or run folder")
    if not os.path.isdir(path) or is_checkpoint(path):
        return path
    best = [p for p in (os.path.join(path, n) for n in BEST_NAMES) if is_checkpoint(p)]
    found = best[0] if best else find_resume_checkpoint(path)
    if found is None:
        raise FileNotFoundError(
            f"{flag} {path}: no checkpoint in this run folder (looked for checkpoint-best.pth, "
            f"checkpoint-best/, checkpoint-last.pth, checkpoint-last/ and checkpoint-<N>.pth or "
            f"checkpoint-<N>/ with {DS_MODEL_FILE})")
    logger.info("%s %s: using %s (%s)", flag, path, found,
                "its best checkpoint" if best else "no best checkpoint; the newest")
    return found


def load_newest_readable(output_dir: str, load: Callable[[str], Loaded]
                         ) -> Optional[Tuple[str, Loaded]]:
    """``(path, load(path))`` for the newest checkpoint in ``output_dir`` that ``load`` can read.

    A crash, a full disk or an interrupted copy can leave ``checkpoint-last`` unreadable while an
    older ``checkpoint-N`` is intact; resuming from that one loses a few epochs instead of the
    run. Each candidate is read once, and the object is returned, so a big file is not read again
    to load it. Unreadable newer files are named in one warning together with the one taken.

    Returns:
        None when ``output_dir`` holds no checkpoint.

    Raises:
        CheckpointError: there are checkpoints but none can be read; the message lists each file
            and why it failed.
    """
    failed: List[str] = []
    for path in resume_candidates(output_dir):
        try:
            loaded = load(path)
        # torch_load turns any bad content into a CheckpointError; read_checkpoint raises
        # ValueError for a dict of another layout; OSError: no permission, I/O error, removed.
        except (CheckpointError, ValueError, OSError) as err:
            failed.append(_why_unreadable(err, path))
            continue
        if failed:
            logger.warning("auto-resume: skipping unreadable %s; resuming from %s instead",
                           "; ".join(failed), path)
        return path, loaded
    if failed:
        raise CheckpointError(f"--auto_resume: no readable checkpoint in {output_dir}; tried "
                              f"{'; '.join(failed)}. Move the damaged files away, pass --resume "
                              f"PATH, or start afresh with --no_auto_resume or another "
                              f"--output_dir")
    return None


def _why_unreadable(err: BaseException, path: str) -> str:
    """``<file> (<reason>)`` of a failed read, brief: one line of the message."""
    # UnreadableCheckpointError names the file itself (for a DeepSpeed folder: the file in it)
    # and keeps the reason apart; other errors are summed up by their first line.
    reason = getattr(err, "reason", None) or \
        f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]}"
    return f"{getattr(err, 'path', None) or path} ({reason})"


def read_named_checkpoint(path: str, flag: str, unsafe: bool = False) -> Dict[str, Any]:
    """``read_checkpoint`` of a file the user named (``--resume``): an unreadable one is an
    error that names the flag (an older checkpoint is never taken in its place)."""
    file, obj = load_named_file(path, flag, unsafe)
    return as_run_checkpoint(obj, file)


def load_named_file(path: str, flag: str, unsafe: bool = False) -> Tuple[str, Any]:
    """``(file read, its contents)`` of a checkpoint file or DeepSpeed folder the user named,
    whatever its layout; an unreadable file is an error that names the flag."""
    file = model_file(path)
    try:
        return file, torch_load(file, unsafe=unsafe)
    except UnreadableCheckpointError as err:
        raise CheckpointError(f"{flag} {err}") from err


def model_file(path: str) -> str:
    """The file that holds the weights: ``path`` itself, or a DeepSpeed folder's model file."""
    if not os.path.isdir(path):
        return path
    file = os.path.join(path, DS_MODEL_FILE)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{path} is a folder without {DS_MODEL_FILE}: not a "
                                f"DeepSpeed checkpoint of this project")
    return file


def read_checkpoint(path: str, unsafe: bool = False) -> Dict[str, Any]:
    """Load a checkpoint of this project (file, or DeepSpeed folder/file) as a dict with
    ``model`` (and ``deepspeed`` for DeepSpeed's layout, ``source`` = the file read)."""
    file = model_file(path)
    return as_run_checkpoint(torch_load(file, unsafe=unsafe), file)


def is_run_checkpoint(obj: Any) -> bool:
    """True for the contents of a training checkpoint of this project (plain or DeepSpeed):
    they name their ``transfer_type``; VideoMAE's and other foreign files do not."""
    return isinstance(obj, dict) and "transfer_type" in obj and ("model" in obj or "module" in obj)


def as_run_checkpoint(obj: Any, path: str) -> Dict[str, Any]:
    """The contents of checkpoint file ``path`` in the plain layout: the weights under
    ``model`` (DeepSpeed's ``module`` moved there, ``deepspeed`` set), ``source`` = ``path``.

    Raises:
        ValueError: no ``model`` or ``module`` dict.
    """
    if not isinstance(obj, dict) or ("model" not in obj and "module" not in obj):
        raise ValueError(f"{path} is not a checkpoint of this project (no 'model' or 'module')")
    if "model" not in obj:  # DeepSpeed layout: the module under 'module', client keys on top
        obj = dict(obj)
        obj["model"] = obj.pop("module")
        obj["deepspeed"] = True
    obj["source"] = path
    return obj
