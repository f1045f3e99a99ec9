"""Rebuild a trained fine-tuning run: the one way from a run folder or checkpoint to its model.

:func:`load_run` reads a training checkpoint of ``run_class_apt.py`` (or the one a run folder
points to, ``find_run_checkpoint``), or a released classifier (VideoMAE's fine-tuned ``.pth``, a
Hugging Face ``VideoMAEForVideoClassification`` folder: ``models.released`` reads it as the
checkpoint of an ``end2end`` run, its flags inferred from the weights), makes its settings from
the flags it saved over the declared defaults (``FinetuneConfig.from_checkpoint``: no command
line is parsed), builds the network, loads the backbone it was trained on and its trained
tensors, and names its classes (``classes.txt`` next to its list files, or the checkpoint's
``id2label``). ``prediction.py`` (``tools/predict.py``), ``engine_for_features.py``,
``prompt_analysis.py`` and ``tools/export.py`` call it; ``run_class_apt.py --eval`` builds its
model with the same steps (:func:`build_model`, :func:`load_weights`); ``tools/compare_runs.py``
and ``models.multitask`` make the settings the same way (``FinetuneConfig.from_args`` of the
saved flags, ``FinetuneConfig.from_checkpoint``).

This module sits beside ``engine.py``: it imports ``models`` and ``utils``, and the scripts and
tools import it.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch

import utils
from models import load_method_state, load_pretrained, parameter_counts, trains_whole_model
from models.factory import create_model_from_config
from models.config import FinetuneConfig
from models.method_state import check_backbone
from models.released import (apply_released, check_class_count, read_trained_checkpoint,
                             released_info)
from models.run_checkpoints import load_newest_readable, read_checkpoint
from utils.config import CLIP_AT_LEAST_ONE, ConfigError, RunConfig

logger = logging.getLogger(__name__)

# Flags of how a clip is tested, which ``--eval`` takes from its command line.
TEST_FLAGS = ("sampling_rate", "short_side_size", "test_num_segment", "test_num_crop")
# The class names a data folder carries ("<label> <name>" lines, written by tools/build_lists.py).
CLASSES_FILE = "classes.txt"


@dataclass
class LoadedRun:
    """A trained run, rebuilt.

    Args:
        model: the trained network on the requested device (not folded; in train mode as
            built: call ``eval()`` for inference).
        config: its settings (``FinetuneConfig.from_checkpoint``).
        label_names: one name per class (class indices where no names are found).
        checkpoint: the checkpoint file or DeepSpeed folder read.
        ckpt: its contents.
        backbone_path: the backbone file loaded (None where the checkpoint holds every tensor).
        counts: the parameter counts (``models.parameter_counts``).
    """

    model: torch.nn.Module
    config: FinetuneConfig
    label_names: List[str]
    checkpoint: str
    ckpt: Dict[str, Any]
    backbone_path: Optional[str]
    counts: Dict[str, int]


def load_run(source: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu", *,
             overrides: Optional[Mapping[str, Any]] = None, finetune: str = "",
             unsafe_load: bool = False, class_names: str = "",
             flag: str = "--resume") -> LoadedRun:
    """The trained model of a run, as ``run_class_apt.py --eval`` builds it.

    Args:
        source: a run's ``--output_dir`` (its best checkpoint, else the newest), a
            ``checkpoint-*.pth`` file, a DeepSpeed ``checkpoint-*/`` folder, a released
            VideoMAE fine-tuned ``.pth`` or a Hugging Face classification folder.
        device: where the model goes.
        overrides: flag name -> value over the saved flags (``num_frames``,
            ``test_num_crop``, ``data_set``, ...; None values are left out). A released
            checkpoint's class count is its own: an ``nb_classes`` that disagrees is refused.
        finetune: the backbone file, when the one the checkpoint recorded is gone.
        unsafe_load: allow full unpickling of a checkpoint you trust.
        class_names: a ``<label> <name>`` file ('': ``classes.txt`` next to the run's lists).
        flag: the flag that named ``source``, for messages.

    Raises:
        FileNotFoundError: no such run or checkpoint, or its backbone is gone and no
            ``finetune`` was given.
        CheckpointError: an unreadable checkpoint, or another backbone than it was trained on.
        ConfigError: not a fine-tuning checkpoint (a pre-trained backbone), a names file that
            does not fit, or a class count that disagrees with a released checkpoint's.
    """
    path, ckpt = read_trained_checkpoint(source, flag, unsafe_load)
    return rebuild_run(path, ckpt, device, overrides=overrides, finetune=finetune,
                       unsafe_load=unsafe_load, class_names=class_names)


def rebuild_run(path: str, ckpt: Dict[str, Any], device: Union[str, torch.device] = "cpu", *,
                overrides: Optional[Mapping[str, Any]] = None, finetune: str = "",
                unsafe_load: bool = False, class_names: str = "") -> LoadedRun:
    """:func:`load_run` of a checkpoint already read (``models.released.read_source`` /
    ``read_trained_checkpoint``), with the same arguments."""
    if released_info(ckpt) is not None:
        check_class_count(ckpt, (overrides or {}).get("nb_classes"), path)
    cfg = FinetuneConfig.from_checkpoint(ckpt, path, overrides, finetune, unsafe_load)
    if released_info(ckpt) is not None:
        _log_clip_shape(ckpt, path, cfg, overrides or {})
    model = build_model(cfg)
    backbone_path, counts = load_weights(cfg, model, torch.device(device), ckpt, path)
    names = read_class_names(class_names, cfg.model.num_classes) if class_names \
        else checkpoint_class_names(cfg, ckpt)
    return LoadedRun(model, cfg, names, path, ckpt, backbone_path, counts)


def _log_clip_shape(ckpt: Mapping[str, Any], path: str, cfg: FinetuneConfig,
                    given: Mapping[str, Any]) -> None:
    """Say where the clip shape of a released checkpoint comes from when it does not record
    it (a VideoMAE ``.pth`` without saved flags and with the fixed sin-cos table).

    Args:
        given: the clip flags given for it (None: not given).
    """
    unknown = [k for k in ("num_frames", "input_size") if k not in ckpt["args"]]
    if unknown:
        logger.warning("%s does not record its clip shape: using %s (%s; pass %s if it was "
                       "trained on other clips)", path,
                       " ".join(f"--{k} {getattr(cfg.data, k)}" for k in unknown),
                       "as given" if all(given.get(k) is not None for k in unknown)
                       else "the defaults", " / ".join(f"--{k}" for k in unknown))


# ------------------------------------------------------------------------------ the model
def build_model(cfg: FinetuneConfig) -> torch.nn.Module:
    """The network of the settings, with its initial tensors seeded by ``--seed`` (the same
    on every rank). Builds from the settings only: bad transfer flags fail here, before any
    data or weights are read."""
    utils.seed_everything(cfg.run.seed)
    return create_model_from_config(cfg.model)


def load_backbone(cfg: FinetuneConfig, model: torch.nn.Module,
                  eval_ckpt: Optional[Dict[str, Any]], eval_path: str = "") -> Optional[str]:
    """Load ``--finetune`` (or, for a trained checkpoint without it, the backbone the checkpoint
    names); returns the file loaded."""
    method, source = model.transfer, cfg.backbone
    if not method.loads_pretrained:
        if source.finetune:
            logger.warning("--transfer_type %s trains from scratch: --finetune %s is ignored",
                           method.name, source.finetune)
        return None
    path = source.finetune
    if eval_ckpt is not None and trains_whole_model(model):
        return None  # the checkpoint holds every tensor
    if not path and eval_ckpt is not None:
        path = (eval_ckpt.get("backbone") or {}).get("path")
        if path and not os.path.exists(path):
            raise FileNotFoundError(f"{eval_path} was trained on the backbone {path}, which is "
                                    f"no longer there: pass it with --finetune")
        if path:
            logger.info("loading the backbone recorded in %s: %s", eval_path, path)
    if not path:
        logger.warning("no --finetune checkpoint: the %s backbone keeps its random "
                       "initialisation", cfg.model.model)
        return None
    report = load_pretrained(model, path, model_key=source.model_key,
                             model_prefix=source.model_prefix, unsafe=cfg.run.unsafe_load)
    logger.info("backbone: %s", report.summary())
    return path


def load_weights(cfg: FinetuneConfig, model: torch.nn.Module, device: torch.device,
                 eval_ckpt: Optional[Dict[str, Any]] = None, eval_path: str = ""
                 ) -> Tuple[Optional[str], Dict[str, int]]:
    """Load the backbone into ``model`` (and, for a trained checkpoint, its tensors, after
    checking it was trained on that backbone), then move the model to ``device``.

    Args:
        cfg: the settings (``--finetune`` and how to read it).
        model: from :func:`build_model`.
        device: where the model runs.
        eval_ckpt: a read training checkpoint to apply, or None.
        eval_path: its path, for messages.

    Returns:
        The backbone file loaded (None when none was) and the parameter counts.
    """
    backbone_path = load_backbone(cfg, model, eval_ckpt, eval_path)
    if eval_ckpt is not None:
        check_backbone(eval_ckpt, backbone_path, eval_path)
        load_method_state(model, eval_ckpt)
        apply_released(model, eval_ckpt)
        logger.info("evaluating %s (epoch %s)", eval_path, eval_ckpt.get("epoch"))
    model.to(device)
    counts = parameter_counts(model)
    logger.info("model %s, transfer type %s: %d parameters, %d trainable (%.3f%%)",
                cfg.model.model, model.transfer, counts["params"], counts["trainable_params"],
                100.0 * counts["trainable_params"] / max(counts["params"], 1))
    return backbone_path, counts


def find_eval_checkpoint(run: RunConfig) -> Tuple[str, Dict[str, Any]]:
    """``--eval``: the checkpoint to evaluate (``--resume``, else with ``--auto_resume`` the
    newest readable one of ``--output_dir``), read; returns its path and contents.

    Raises:
        FileNotFoundError: ``--resume`` names no file.
        ConfigError: no checkpoint to evaluate (the untrained model never is).
    """
    found = None
    if run.resume:
        if not os.path.exists(run.resume):
            raise FileNotFoundError(f"--resume {run.resume}: no such checkpoint")
        found = read_trained_checkpoint(run.resume, "--resume", run.unsafe_load)
    elif run.auto_resume:  # the newest readable one; unreadable newer ones are named
        found = load_newest_readable(run.output_dir,
                                     lambda p: read_checkpoint(p, unsafe=run.unsafe_load))
    if found is None:
        where = f"no checkpoint-last or checkpoint-N in --output_dir {run.output_dir!r}" \
            if run.output_dir and run.auto_resume else "no --resume given"
        raise ConfigError(f"--eval needs a trained checkpoint to evaluate ({where}); pass "
                          f"--resume PATH. The untrained model is never evaluated.")
    return found


def read_eval_checkpoint(cfg: FinetuneConfig,
                         found: Optional[Tuple[str, Dict[str, Any]]] = None
                         ) -> Tuple[str, Dict[str, Any], FinetuneConfig]:
    """``--eval``: find and read the checkpoint to evaluate; returns its path, its contents and
    the settings with the checkpoint's architecture (the command line's, where it differs, are
    overruled with a warning). A released classifier also gives its class count (a
    ``--nb_classes`` that disagrees is refused) and, where it records it, its clip shape.

    Args:
        cfg: the run's settings.
        found: the checkpoint already read by :func:`find_eval_checkpoint` (path, contents).
    """
    if found is None:
        found = find_eval_checkpoint(cfg.run)
    path, ckpt = found
    if released_info(ckpt) is not None:
        return path, ckpt, released_eval_config(cfg, ckpt, path)
    saved = ckpt.get("args") or {}
    model_cfg, changes = cfg.model.with_architecture(saved)
    for change in changes:
        logger.warning("--eval: using the checkpoint's %s", change)
    # The clip shape stays the command line's (testing at another size is a study one may
    # want), but a shape left at the defaults is the common slip: say so.
    other = [f"--{k} {getattr(cfg.data, k)} (trained with {saved[k]})"
             for k in CLIP_AT_LEAST_ONE if k in saved and saved[k] != getattr(cfg.data, k)]
    if other:
        logger.warning("--eval: %s was trained on other clips; testing with %s. Pass the "
                       "run's flags to test as it was trained", path, ", ".join(other))
    return path, ckpt, dataclasses.replace(cfg, model=model_cfg)


def released_eval_config(cfg: FinetuneConfig, ckpt: Dict[str, Any], path: str
                         ) -> FinetuneConfig:
    """The ``--eval`` settings of a released classifier: the command line's, with the flags the
    checkpoint fixes (architecture, class count, the clip shape where recorded: a different
    command-line value is overruled with a warning) and the command line's ``--data_set``
    sampling (a named set of another class count is read as ``custom``, dense sampling).

    Raises:
        ConfigError: ``--nb_classes`` disagrees with the checkpoint's class count, or a
            segment-sampled ``--data_set`` (SSV2) of another class count.
    """
    saved = ckpt["args"]
    check_class_count(ckpt, cfg.flags.get("nb_classes"), path)
    for name in ("num_frames", "input_size"):
        if name in saved and cfg.flags.get(name) not in (None, saved[name]):
            logger.warning("--eval: using %s's --%s %s (command line: %s)", path, name,
                           saved[name], cfg.flags[name])
    # The test settings (views, sampling rate, short side) stay the command line's.
    fixed = {k: v for k, v in saved.items() if k not in TEST_FLAGS}
    new = FinetuneConfig.from_args({**cfg.flags, **fixed, "data_set": "custom"})
    _log_clip_shape(ckpt, path, new, cfg.flags)
    data_set, nb = cfg.data.data_set, int(saved["nb_classes"])
    if data_set != "custom" and cfg.data.nb_classes != nb:
        if cfg.data.segment_sampling:
            raise ConfigError(f"--data_set {data_set} has {cfg.data.nb_classes} classes but "
                              f"{path} has {nb}: pass the data set it was fine-tuned on")
        logger.warning("--data_set %s has %d classes, %s has %d: evaluating as --data_set "
                       "custom --nb_classes %d (the same dense sampling)", data_set,
                       cfg.data.nb_classes, path, nb, nb)
        data_set = "custom"
    names = checkpoint_class_names(new, ckpt)
    logger.info("--eval: %d classes: %s", nb, ", ".join(names[:10]) +
                (f", ... ({nb} in all)" if nb > 10 else ""))
    return dataclasses.replace(new, data=dataclasses.replace(new.data, data_set=data_set))


# ------------------------------------------------------------------------------ class names
def read_class_names(path: str, num_classes: int, flag: str = "--class_names") -> List[str]:
    """Class names from ``<label> <name>`` lines (the ``classes.txt`` the list-file tools
    write; a name may hold spaces). Labels without a line are named by their index.

    Raises:
        FileNotFoundError: no such file.
        ConfigError: a line without a label in ``[0, num_classes)``, naming file and line.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{flag} {path}: no such file")
    names = [str(i) for i in range(num_classes)]
    with open(path, encoding="utf-8-sig") as f:  # a byte-order mark is not part of line 1
        for lineno, raw in enumerate(f, start=1):
            parts = raw.strip().split(None, 1)
            if not parts:
                continue
            if len(parts) != 2 or not parts[0].isdigit() or int(parts[0]) >= num_classes:
                raise ConfigError(f"{path}:{lineno}: expected '<label> <name>' with a label in "
                                  f"[0, {num_classes}) (the checkpoint's class count), got "
                                  f"{raw.strip()!r}; pass the right file with --class_names")
            names[int(parts[0])] = parts[1]
    return names


def checkpoint_class_names(cfg: FinetuneConfig, ckpt: Mapping[str, Any]) -> List[str]:
    """The names a released checkpoint carries (Hugging Face ``id2label``), else
    :func:`default_class_names`."""
    names = (released_info(ckpt) or {}).get("class_names")
    if names:
        logger.info("class names from %s (id2label)", ckpt.get("source"))
        return list(names)
    return default_class_names(cfg)


def default_class_names(cfg: FinetuneConfig) -> List[str]:
    """Names from ``classes.txt`` next to the run's list files (``--data_path``, then
    ``--eval_data_path``); class indices when there is none."""
    for root in (cfg.data.data_path, cfg.data.eval_data_path):
        if not root:
            continue
        folder = root if os.path.isdir(root) else os.path.dirname(root)
        path = os.path.join(folder, CLASSES_FILE)
        if os.path.isfile(path):
            logger.info("class names from %s", path)
            return read_class_names(path, cfg.model.num_classes, CLASSES_FILE)
    logger.info("no %s next to the checkpoint's list files (--data_path %s): classes are shown "
                "by index; --class_names FILE names them", CLASSES_FILE, cfg.data.data_path)
    return [str(i) for i in range(cfg.model.num_classes)]
