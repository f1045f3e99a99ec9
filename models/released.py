"""Released checkpoints as trained runs: VideoMAE's fine-tuned ``.pth`` files and Hugging Face
``VideoMAEForVideoClassification`` folders, read as a training checkpoint of this project.

A released classifier is a whole fine-tuned network, so it becomes an ``end2end`` run: every
tensor, renamed to this backbone's names (:mod:`models.pretrained` reads both layouts), with
the flags that define its tensors inferred from the file (docs/FORMATS.md, 'Released
classifiers'):

- ``--model`` from the width and depth of the weights and the patch size (plus the head count
  of a Hugging Face config), matched to the registered variants (``models.vit.VIT_VARIANTS``);
- ``--tubelet_size`` and the patch from ``patch_embed.proj.weight`` (dim, 3, tubelet, p, p);
- ``--use_mean_pooling`` from ``fc_norm.*`` (mean pooling) or ``norm.*`` (first token);
- ``--use_learnable_pos_emb`` from a ``pos_embed`` tensor;
- the class count from ``head.weight`` (Hugging Face: ``classifier.weight``, checked against
  ``id2label``), the class names from ``id2label``;
- the clip shape (``--num_frames``, ``--input_size``) from ``config.json``, from VideoMAE's
  saved flags (``args``), or from a learnable ``pos_embed``; a ``.pth`` without either does not
  record it (its fixed sin-cos table fits any clip): the command line's flags say it.

:func:`read_trained_checkpoint` is the one reader of "a checkpoint with a classifier" behind
``runs.load_run`` and ``run_class_apt.py --eval``; :func:`read_source` also returns the weights
of a file without a classifier (a pre-trained backbone) for the feature extractor.
"""
from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn

from utils.config import DATASET_NUM_CLASSES, ConfigError

from .pretrained import (infer_grid, normalise_keys, read_hf_folder, select_state_dict,
                         set_layer_norm_eps)
from .run_checkpoints import (as_run_checkpoint, find_run_checkpoint, is_run_checkpoint,
                              load_named_file)
from .serialization import CheckpointError
from .vit import VIT_VARIANTS

logger = logging.getLogger(__name__)

StateDict = Dict[str, torch.Tensor]

# The key of a converted checkpoint that says where it came from (and what was inferred).
RELEASED_KEY = "released"
# The tensors of a fine-tuned VideoMAE ViT, in this backbone's names.
_MODEL_PREFIXES = ("patch_embed.", "blocks.", "pos_embed", "norm.", "fc_norm.", "head.")
# VideoMAE's saved flags that say how it was evaluated; the same names here.
_EVAL_FLAGS = ("num_frames", "input_size", "sampling_rate", "short_side_size",
               "test_num_segment", "test_num_crop")


@dataclass
class ForeignWeights:
    """The weights of a released file or folder, in this backbone's names, and what they say
    about the network.

    Args:
        source: the file or Hugging Face folder.
        format: ``hf-videomae``, ``videomae-finetune``, ``videomae-pretrain`` or ``apt``.
        state: the tensors, renamed (those of no fine-tuned ViT left out, see ``dropped``).
        flags: the flags the weights fix (``model``, ``tubelet_size``, ``use_mean_pooling``,
            ``use_learnable_pos_emb``; the clip shape and eval flags where recorded).
        how: flag -> where it was read from (for the log and the docs).
        num_classes: rows of the classifier, None without one (a pre-trained backbone).
        class_names: Hugging Face ``id2label`` in label order, or None.
        layer_norm_eps: the LayerNorm eps of a Hugging Face config, or None (the model's).
        dropped: keys of the file that are no tensor of the network.
    """

    source: str
    format: str
    state: StateDict
    flags: Dict[str, Any]
    how: Dict[str, str]
    num_classes: Optional[int] = None
    class_names: Optional[List[str]] = None
    layer_norm_eps: Optional[float] = None
    dropped: List[str] = field(default_factory=list)

    def run_checkpoint(self) -> Dict[str, Any]:
        """These weights as a training checkpoint of an ``end2end`` run (docs/FORMATS.md,
        'Training checkpoints'), its ``args`` the inferred flags and the class count; the
        ``released`` entry says where it came from."""
        if self.num_classes is None:
            raise CheckpointError(f"{self.source}: no classifier to make a run of")
        data_set = self.flags.get("data_set")
        args = {**self.flags, "transfer_type": "end2end", "nb_classes": self.num_classes,
                "data_set": data_set if DATASET_NUM_CLASSES.get(data_set) == self.num_classes
                else "custom"}
        return {"model": self.state, "transfer_type": "end2end", "args": args,
                "backbone": {"path": None, "sha256": None}, "epoch": None, "best_acc": None,
                "model_ema": None, "source": self.source,
                RELEASED_KEY: {"format": self.format, "how": dict(self.how),
                               "class_names": self.class_names,
                               "layer_norm_eps": self.layer_norm_eps}}


# ------------------------------------------------------------------------------ reading
def is_hf_folder(path: str) -> bool:
    """A Hugging Face model folder (``config.json`` inside)."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json"))


def read_source(source: Union[str, os.PathLike], flag: str = "--resume", unsafe: bool = False
                ) -> Tuple[str, Union[Dict[str, Any], ForeignWeights]]:
    """Read what ``source`` names: a training checkpoint of this project (a file, DeepSpeed
    folder or run folder: its best, else newest, checkpoint) as its contents, anything else
    (released classifiers, pre-trained backbones) as :class:`ForeignWeights`.

    Returns:
        ``(the file or folder read, contents)``.

    Raises:
        FileNotFoundError: no such file or folder, or a run folder without checkpoints.
        CheckpointError: unreadable, or no VideoMAE ViT in it.
    """
    source = os.fspath(source)
    if is_hf_folder(source):
        return source, read_hf_weights(source)
    path = find_run_checkpoint(source, flag)
    file, obj = load_named_file(path, flag, unsafe)
    if is_run_checkpoint(obj):
        return path, as_run_checkpoint(obj, file)
    return file, weights_of(obj, file, flag)


def read_trained_checkpoint(source: Union[str, os.PathLike], flag: str = "--resume",
                            unsafe: bool = False) -> Tuple[str, Dict[str, Any]]:
    """A checkpoint with a classifier as a training checkpoint's contents (a released one
    converted by :meth:`ForeignWeights.run_checkpoint`).

    Raises:
        ConfigError: a file without a classifier (a pre-trained backbone), naming the flag.
    """
    path, found = read_source(source, flag, unsafe)
    if not isinstance(found, ForeignWeights):
        return path, found
    if found.num_classes is None:
        raise ConfigError(
            f"{flag} {path}: not a checkpoint of run_class_apt.py, nor a fine-tuned VideoMAE "
            f"classifier (no head.weight / classifier.weight; it reads as a {found.format} "
            f"backbone): a pre-trained backbone has no classifier; pass it with --finetune")
    ckpt = found.run_checkpoint()
    logger.info("%s %s: a released %s classifier: %s", flag, path, found.format,
                describe(found))
    return path, ckpt


def weights_of(obj: Any, path: str, flag: str = "--resume") -> ForeignWeights:
    """The network a loaded foreign checkpoint holds (weights under ``model`` or ``module``,
    or a plain state dict; any layout ``models.load_pretrained`` reads).

    Raises:
        CheckpointError: no weights, or a ViT of no registered variant.
        ConfigError: weights of no VideoMAE ViT (no patch embedding).
    """
    sd, _ = select_state_dict(obj, "model|module", path)
    sd, dropped, fmt = normalise_keys(sd)
    if "patch_embed.proj.weight" not in sd:
        raise ConfigError(f"{flag} {path}: not a checkpoint of run_class_apt.py, nor a VideoMAE "
                          f"ViT (no patch embedding among its {len(sd)} weights: "
                          f"{', '.join(sorted(sd)[:6]) or 'none'})")
    saved = obj.get("args") if isinstance(obj, Mapping) else None
    saved = dict(vars(saved) if isinstance(saved, argparse.Namespace) else saved or {})
    flags, how = infer_flags(sd, path)
    for name in _EVAL_FLAGS:
        if isinstance(saved.get(name), int) and name not in flags:
            flags[name] = saved[name]
            how[name] = "its saved flags ('args')"
    if saved.get("data_set") in DATASET_NUM_CLASSES:
        flags["data_set"] = saved["data_set"]
    state, unused = _network_tensors(sd)
    weights = ForeignWeights(path, fmt, state, flags, how, _head_rows(state, path),
                             dropped=dropped + unused)
    _clip_from_pos_embed(weights)
    return weights


def read_hf_weights(folder: str) -> ForeignWeights:
    """A Hugging Face VideoMAE folder (a ``VideoMAEForVideoClassification`` or a backbone).

    Raises:
        CheckpointError: not a VideoMAE config, an architecture no registered variant has,
            or ``id2label`` of another size than the classifier.
    """
    sd, unused, config = read_hf_folder(folder)
    where = os.path.join(folder, "config.json")
    if config.get("model_type", "videomae") != "videomae":
        raise CheckpointError(f"{where}: model_type {config.get('model_type')!r}; only "
                              f"VideoMAE folders are read")
    mlp = config.get("intermediate_size", 4 * config.get("hidden_size", 0))
    if mlp != 4 * config.get("hidden_size", 0) or not config.get("qkv_bias", True) \
            or config.get("num_channels", 3) != 3 or config.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(f"{where}: intermediate_size {mlp}, qkv_bias "
                              f"{config.get('qkv_bias')}, num_channels "
                              f"{config.get('num_channels')}, hidden_act "
                              f"{config.get('hidden_act')!r}: the backbone has an MLP of 4x the "
                              f"width, q/v biases, 3 channels and exact GELU")
    flags, how = infer_flags(sd, folder, heads=config.get("num_attention_heads"))
    for name, key in (("num_frames", "num_frames"), ("input_size", "image_size"),
                      ("tubelet_size", "tubelet_size"), ("use_mean_pooling", "use_mean_pooling")):
        if key in config:
            if name in flags and flags[name] != config[key]:
                raise CheckpointError(f"{where}: {key} {config[key]!r} but the weights say "
                                      f"{flags[name]!r} ({how[name]})")
            flags[name], how[name] = config[key], f"config.json {key}"
    state, rest = _network_tensors(sd)
    rows = _head_rows(state, folder)
    names = _id2label(config, rows, where)
    return ForeignWeights(folder, "hf-videomae", state, flags, how, rows, names,
                          config.get("layer_norm_eps"), unused + rest)


def infer_flags(sd: Mapping[str, torch.Tensor], source: str,
                heads: Optional[int] = None) -> Tuple[Dict[str, Any], Dict[str, str]]:
    """The flags the tensors (in this backbone's names) fix, and where each was read.

    Args:
        sd: the weights.
        source: the file, for messages.
        heads: the attention head count where the file says it (Hugging Face's config); the
            weights do not (one fused qkv matrix whatever the count).

    Raises:
        CheckpointError: no patch embedding, layer scale, or shapes no registered variant has.
    """
    proj = sd.get("patch_embed.proj.weight")
    if proj is None or proj.ndim != 5 or proj.shape[1] != 3 or proj.shape[3] != proj.shape[4]:
        shape = None if proj is None else tuple(proj.shape)
        raise CheckpointError(f"{source}: no VideoMAE patch embedding (patch_embed.proj.weight "
                              f"of shape (dim, 3, tubelet, patch, patch); found {shape})")
    dim, tubelet, patch = int(proj.shape[0]), int(proj.shape[2]), int(proj.shape[3])
    blocks = {int(k.split(".")[1]) for k in sd if k.startswith("blocks.")}
    depth = max(blocks) + 1 if blocks else 0
    if any(".gamma_1" in k for k in sd):
        raise CheckpointError(f"{source}: its blocks have layer scale (gamma_1/gamma_2, "
                              f"VideoMAE's init_values > 0), which the fine-tuning model does "
                              f"not build")
    fits = [name for name, (d, n, h, p) in VIT_VARIANTS.items()
            if (d, n, p) == (dim, depth, patch) and heads in (None, h)]
    if not fits:
        known = "; ".join(f"{n} (dim {d}, depth {b}, heads {h}, patch {p})"
                          for n, (d, b, h, p) in VIT_VARIANTS.items())
        raise CheckpointError(f"{source}: a ViT of width {dim}, depth {depth}, patch {patch}"
                              f"{f', {heads} heads' if heads else ''} is no registered variant "
                              f"(models/vit.py VIT_VARIANTS: {known})")
    shape = f"patch_embed.proj.weight {tuple(proj.shape)}"
    flags: Dict[str, Any] = {"model": fits[0], "tubelet_size": tubelet,
                             "use_learnable_pos_emb": "pos_embed" in sd}
    how = {"model": f"{shape}, {depth} blocks" + (f", {heads} heads" if heads else ""),
           "tubelet_size": shape,
           "use_learnable_pos_emb": "a pos_embed tensor" if "pos_embed" in sd
           else "no pos_embed tensor (fixed sin-cos table)"}
    if "fc_norm.weight" in sd:
        flags["use_mean_pooling"], how["use_mean_pooling"] = True, "fc_norm.weight"
    elif "norm.weight" in sd:
        flags["use_mean_pooling"], how["use_mean_pooling"] = False, "norm.weight (no fc_norm)"
    return flags, how


def describe(weights: ForeignWeights) -> str:
    """One line: the inferred flags, where from, and the classes."""
    flags = ", ".join(f"--{k} {v} ({weights.how.get(k, 'saved')})"
                      for k, v in weights.flags.items() if k != "data_set")
    names = weights.class_names or []
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    return (f"{weights.num_classes} classes{f' ({shown})' if names else ''}; {flags}"
            + ("" if "num_frames" in weights.flags else
               "; the clip shape is not recorded: --num_frames and --input_size say it"))


# ------------------------------------------------------------------------------ checks
def released_info(ckpt: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """The ``released`` entry of a converted checkpoint, None for this project's own."""
    return ckpt.get(RELEASED_KEY)


def check_class_count(ckpt: Mapping[str, Any], requested: Optional[int], path: str,
                      flag: str = "--nb_classes") -> None:
    """Refuse a class count that disagrees with a released classifier's head.

    Raises:
        ConfigError: naming the file and both numbers.
    """
    found = int(ckpt["args"]["nb_classes"])
    if requested is not None and int(requested) != found:
        raise ConfigError(f"{flag} {requested} disagrees with {path}, whose classifier has "
                          f"{found} classes: the class count of a released checkpoint is its "
                          f"own (leave {flag} out, or pass {found})")


def apply_released(model: nn.Module, ckpt: Mapping[str, Any]) -> None:
    """What a released checkpoint needs beyond its tensors (a Hugging Face config's LayerNorm
    eps); nothing for this project's checkpoints."""
    info = released_info(ckpt)
    if info is not None:
        set_layer_norm_eps(model, info.get("layer_norm_eps"), str(ckpt.get("source")))


# ------------------------------------------------------------------------------ helpers
def _network_tensors(sd: Mapping[str, torch.Tensor]) -> Tuple[StateDict, List[str]]:
    """The tensors a fine-tuned ViT has, and the names of the others (logged)."""
    keep = {k: v for k, v in sd.items() if k.startswith(_MODEL_PREFIXES)}
    rest = [k for k in sd if k not in keep]
    if rest:
        logger.info("leaving out %d tensors that are no part of the network: %s", len(rest),
                    ", ".join(rest[:8]))
    return keep, rest


def _head_rows(state: Mapping[str, torch.Tensor], source: str) -> Optional[int]:
    head = state.get("head.weight")
    if head is None:
        return None
    if head.ndim != 2 or "head.bias" not in state:
        raise CheckpointError(f"{source}: head.weight {tuple(head.shape)} without head.bias: "
                              f"not a linear classifier")
    return int(head.shape[0])


def _id2label(config: Mapping[str, Any], rows: Optional[int], where: str
              ) -> Optional[List[str]]:
    """``id2label`` in label order (its keys are strings in config.json)."""
    table = {int(k): str(v) for k, v in (config.get("id2label") or {}).items()}
    if rows is None or not table:
        return None
    if sorted(table) != list(range(rows)):
        raise CheckpointError(f"{where}: id2label has {len(table)} labels "
                              f"({min(table)}..{max(table)}) but the classifier has {rows} "
                              f"rows (classifier.weight)")
    return [table[i] for i in range(rows)]


def _clip_from_pos_embed(weights: ForeignWeights) -> None:
    """A learnable position table fixes frames x size: fill in what it fixes (checking what
    is already known against it)."""
    pos = weights.state.get("pos_embed")
    if pos is None:
        return
    flags = weights.flags
    patch = VIT_VARIANTS[flags["model"]][3]
    tokens = int(pos.shape[1])
    frames, size = flags.get("num_frames"), flags.get("input_size")
    if frames and size:
        grid = (frames // flags["tubelet_size"]) * (size // patch) ** 2
        if grid != tokens:
            raise CheckpointError(f"{weights.source}: pos_embed has {tokens} positions, but "
                                  f"--num_frames {frames} --input_size {size} make {grid}")
        return
    t, h, _ = infer_grid(tokens, (16 // flags["tubelet_size"], 224 // patch, 224 // patch))
    flags["num_frames"], flags["input_size"] = t * flags["tubelet_size"], h * patch
    for name in ("num_frames", "input_size"):
        weights.how[name] = f"pos_embed {tuple(pos.shape)} (square frames)"

