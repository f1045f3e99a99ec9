"""Foreign weights: every published layout loads into the one backbone (docs/FORMATS.md).

Formats recognised by their keys:

1. VideoMAE pre-training (``encoder.*``, ``decoder.*``, ``encoder_to_decoder.*``, ``mask_token``),
   also with a ``backbone.`` prefix; decoder keys are dropped.
2. VideoMAE fine-tuned (backbone names without prefix, ``fc_norm``/``norm``, ``head``).
3. The original APT code (VideoMAE names plus ``prompt_embeddings_k/v``, ``prompt_scale``, with the
   mean-pool norm called ``head_norm``).
4. Hugging Face ``transformers`` VideoMAE folders (``config.json`` + safetensors or ``.bin``).
5. DeepSpeed checkpoints (``mp_rank_00_model_states.pt``, key ``module``) and this project's own
   (a frozen-backbone one names its backbone file, which is loaded first).

Files are read by ``models.serialization.torch_load`` (``weights_only``, the allow-list, a
description of files that are no checkpoint).
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn

from .method_state import verify_backbone
from .serialization import DS_MODEL_FILE, CheckpointError, torch_load
from .vit import interpolate_pos_embed

logger = logging.getLogger(__name__)

StateDict = Dict[str, torch.Tensor]

_DROPPED_PREFIXES = ("decoder.", "encoder_to_decoder.", "mask_token", "decoder_pos_embed")
_ENCODER_PREFIXES = ("patch_embed.", "blocks.", "pos_embed")


@dataclass
class LoadReport:
    """What ``load_pretrained`` did: keys loaded, keys of the file dropped, model keys missing."""

    source: str
    format: str
    loaded: List[str] = field(default_factory=list)
    dropped: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)

    def summary(self) -> str:
        def head(keys: List[str]) -> str:
            return ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
        return (f"loaded {len(self.loaded)} tensors from {self.source} ({self.format}); "
                f"dropped {len(self.dropped)}: [{head(self.dropped)}]; "
                f"missing {len(self.missing)}: [{head(self.missing)}]")

# --- Hugging Face transformers VideoMAE ------------------------------------------------------
def _hf_layer_map(i: int) -> List[Tuple[str, str]]:
    src = f"videomae.encoder.layer.{i}."
    dst = f"blocks.{i}."
    return [
        (src + "attention.attention.q_bias", dst + "attn.q_bias"),
        (src + "attention.attention.v_bias", dst + "attn.v_bias"),
        (src + "attention.output.dense.weight", dst + "attn.proj.weight"),
        (src + "attention.output.dense.bias", dst + "attn.proj.bias"),
        (src + "intermediate.dense.weight", dst + "mlp.fc1.weight"),
        (src + "intermediate.dense.bias", dst + "mlp.fc1.bias"),
        (src + "output.dense.weight", dst + "mlp.fc2.weight"),
        (src + "output.dense.bias", dst + "mlp.fc2.bias"),
        (src + "layernorm_before.weight", dst + "norm1.weight"),
        (src + "layernorm_before.bias", dst + "norm1.bias"),
        (src + "layernorm_after.weight", dst + "norm2.weight"),
        (src + "layernorm_after.bias", dst + "norm2.bias"),
    ]


def convert_hf_videomae(sd: Mapping[str, torch.Tensor]) -> Tuple[StateDict, List[str]]:
    """Map ``transformers`` VideoMAE names onto this backbone; returns (state dict, unused keys)."""
    out: StateDict = {}
    used = set()

    def take(src: str, dst: str) -> None:
        if src in sd:
            out[dst] = sd[src]
            used.add(src)

    take("videomae.embeddings.patch_embeddings.projection.weight", "patch_embed.proj.weight")
    take("videomae.embeddings.patch_embeddings.projection.bias", "patch_embed.proj.bias")
    layers = sorted({int(k.split(".")[3]) for k in sd if k.startswith("videomae.encoder.layer.")})
    for i in layers:
        src = f"videomae.encoder.layer.{i}.attention.attention."
        names = [src + n + ".weight" for n in ("query", "key", "value")]
        if all(n in sd for n in names):  # HF keeps q, k, v apart; VideoMAE fuses them in qkv
            out[f"blocks.{i}.attn.qkv.weight"] = torch.cat([sd[n] for n in names], dim=0)
            used.update(names)
        for s, d in _hf_layer_map(i):
            take(s, d)
    for suffix in ("weight", "bias"):
        take(f"fc_norm.{suffix}", f"fc_norm.{suffix}")
        take(f"videomae.layernorm.{suffix}", f"norm.{suffix}")
        take(f"classifier.{suffix}", f"head.{suffix}")
    return out, [k for k in sd if k not in used]


def read_hf_folder(path: str) -> Tuple[StateDict, List[str], dict]:
    """A Hugging Face VideoMAE folder: (weights in this backbone's names, unused keys, its
    config.json)."""
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    st = os.path.join(path, "model.safetensors")
    if os.path.exists(st):
        # lazy: safetensors is needed only for Hugging Face folders
        from safetensors.torch import load_file
        sd = load_file(st)
    else:
        binary = os.path.join(path, "pytorch_model.bin")
        if not os.path.exists(binary):
            raise CheckpointError(f"{path} has config.json but neither model.safetensors nor "
                                  f"pytorch_model.bin")
        sd = torch_load(binary)
    converted, unused = convert_hf_videomae(sd)
    return converted, unused, config


def _deepspeed_file(path: str) -> Optional[str]:
    """The model-states file of a DeepSpeed checkpoint folder (or its ``latest`` tag)."""
    direct = os.path.join(path, DS_MODEL_FILE)
    if os.path.exists(direct):
        return direct
    latest = os.path.join(path, "latest")
    if os.path.exists(latest):
        with open(latest) as f:
            tagged = os.path.join(path, f.read().strip(), DS_MODEL_FILE)
        if os.path.exists(tagged):
            return tagged
    return None


# --- generic state dicts ---------------------------------------------------------------------
def select_state_dict(obj: Any, model_key: str = "model|module",
                      source: str = "<state dict>") -> Tuple[StateDict, str]:
    """Pick the weights out of a checkpoint dict by the first of ``model_key`` ('a|b') present.

    Args:
        obj: the loaded checkpoint (a dict holding the weights, or the state dict itself).
        model_key: ``--model_key``.
        source: the file, for the message.

    Raises:
        CheckpointError: no weights; the message names the file, the keys found and the flags.
    """
    if isinstance(obj, Mapping):
        for key in model_key.split("|"):
            if key and key in obj and isinstance(obj[key], Mapping):
                return dict(obj[key]), key
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj), ""
    found = f"keys found: {sorted(map(str, obj))[:10]}" if isinstance(obj, Mapping) else \
        f"it holds a {type(obj).__name__}, not a dict"
    raise CheckpointError(f"--finetune {source}: no weights under any of the keys {model_key!r} "
                          f"({found}); pass a model checkpoint, or name the key that holds the "
                          f"weights with --model_key")


def normalise_keys(sd: Mapping[str, torch.Tensor], model_prefix: str = "") -> Tuple[StateDict, List[str], str]:
    """Rename any known layout to this backbone's names; returns (state dict, dropped, format)."""
    sd = {k[len(model_prefix):] if model_prefix and k.startswith(model_prefix) else k: v
          for k, v in sd.items()}
    if any(k.startswith("module.") for k in sd):  # DistributedDataParallel wrapper
        sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    dropped: List[str] = []
    fmt = "videomae-finetune"
    if any(k.startswith("videomae.") for k in sd):
        sd, dropped = convert_hf_videomae(sd)
        return sd, dropped, "hf-videomae"
    for prefix in ("encoder.", "backbone."):
        if any(k.startswith(prefix) for k in sd):
            fmt = "videomae-pretrain"
            renamed: StateDict = {}
            for k, v in sd.items():
                if k.startswith(prefix):
                    renamed[k[len(prefix):]] = v
                elif k.startswith(_DROPPED_PREFIXES) or k in ("mask_token",):
                    dropped.append(k)
                else:
                    renamed[k] = v
            sd = renamed
    if any(k.startswith("prompt_embeddings_") or k.startswith("head_norm.") for k in sd):
        fmt = "apt"
    sd = {("fc_norm." + k[len("head_norm."):] if k.startswith("head_norm.") else k): v
          for k, v in sd.items()}
    return sd, dropped, fmt


def infer_grid(num_tokens: int, target: Tuple[int, int, int]) -> Tuple[int, int, int]:
    """Guess the (t, h, w) grid of a learnable table of ``num_tokens`` rows (square frames).

    Among the factorisations t * s * s, take the one whose time/space ratio is closest to the
    model's (checkpoints are usually the same clip shape at another resolution or length).
    """
    want = math.log(target[0] / target[1])
    candidates = []
    for t in range(1, num_tokens + 1):
        if num_tokens % t:
            continue
        s = math.isqrt(num_tokens // t)
        if s * s == num_tokens // t:
            candidates.append((abs(math.log(t / s) - want), abs(t - target[0]), t, s))
    if not candidates:
        raise CheckpointError(f"cannot infer the token grid of a position table with {num_tokens} rows")
    *_, t, s = min(candidates)
    return t, s, s


def _missing_backbone_keys(model: nn.Module, keys) -> List[str]:
    """Backbone tensors of ``model`` absent from ``keys`` (tensors a method added never count)."""
    method = getattr(model, "transfer", None)
    added = method.owned_names if method is not None else set()
    return [k for k in model.state_dict()
            if k.startswith(_ENCODER_PREFIXES) and k not in keys and k not in added]


def load_state_dict_into(model: nn.Module, sd: Mapping[str, torch.Tensor], source: str,
                         fmt: str, dropped: Optional[List[str]] = None,
                         require_backbone: bool = True) -> LoadReport:
    """Load already-normalised weights; the shared tail of every format.

    Keys the model lacks are dropped (reported); a head whose class count differs is dropped; a
    learnable position table of another grid is interpolated; any other shape mismatch, and any
    backbone key the file lacks, is an error naming the keys.
    """
    report = LoadReport(source=source, format=fmt, dropped=list(dropped or []))
    own = model.state_dict()
    sd = dict(sd)
    if "pos_embed" in sd:
        if getattr(model, "pos_embed", None) is None:
            report.dropped.append("pos_embed")  # fixed sin-cos model: the table is not a weight
            del sd["pos_embed"]
        elif sd["pos_embed"].shape != own["pos_embed"].shape:
            src_grid = infer_grid(sd["pos_embed"].shape[1], model.grid)
            logger.info("interpolating pos_embed of %s from grid %s to %s", source, src_grid,
                        model.grid)
            sd["pos_embed"] = interpolate_pos_embed(sd["pos_embed"], src_grid, model.grid)
    mismatched = []
    for key in list(sd):
        if key not in own:
            report.dropped.append(key)
            del sd[key]
        elif sd[key].shape != own[key].shape:
            if key.startswith("head."):
                logger.info("dropping %s from %s: shape %s does not fit the model's %s "
                            "(another class count)", key, source, tuple(sd[key].shape),
                            tuple(own[key].shape))
                report.dropped.append(key)
                del sd[key]
            else:
                mismatched.append(f"{key}: file {tuple(sd[key].shape)} vs model {tuple(own[key].shape)}")
    if mismatched:
        raise CheckpointError(f"{source}: {len(mismatched)} tensors do not fit the model "
                              f"(wrong --model or input size?): " + "; ".join(mismatched[:10]))
    missing_backbone = _missing_backbone_keys(model, sd) if require_backbone else []
    if missing_backbone:
        raise CheckpointError(f"{source} lacks {len(missing_backbone)} backbone tensors the model "
                              f"needs: {', '.join(missing_backbone[:10])}")
    model.load_state_dict(sd, strict=False)
    report.loaded = sorted(sd)
    report.missing = [k for k in own if k not in sd]
    logger.info(report.summary())
    return report


def load_pretrained(model: nn.Module, path_or_state_dict: Union[str, Mapping[str, Any]],
                    model_key: str = "model|module", model_prefix: str = "",
                    unsafe: bool = False) -> LoadReport:
    """Load a VideoMAE / APT / Hugging Face / DeepSpeed / project checkpoint into ``model``.

    Args:
        model: a ``VisionTransformer`` (any transfer type).
        path_or_state_dict: a file, a Hugging Face folder, a DeepSpeed folder, or an in-memory
            checkpoint dict / state dict.
        model_key: '|'-separated keys under which the weights may sit (VideoMAE: 'model|module').
        model_prefix: a prefix to strip from every key first.
        unsafe: permit full unpickling (only for trusted files).

    Returns:
        A ``LoadReport`` listing loaded, dropped and missing keys.
    """
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        path = os.fspath(path_or_state_dict)
        if not os.path.exists(path):
            raise FileNotFoundError(f"checkpoint not found: {path}")
        if os.path.isdir(path):
            if os.path.exists(os.path.join(path, "config.json")):
                sd, unused, config = read_hf_folder(path)
                set_layer_norm_eps(model, config.get("layer_norm_eps"), path)
                return load_state_dict_into(model, sd, path, "hf-videomae", unused)
            ds = _deepspeed_file(path)
            if ds is None:
                raise CheckpointError(f"{path} is a folder but neither a Hugging Face model "
                                      f"(config.json) nor a DeepSpeed checkpoint")
            path = ds
        obj = torch_load(path, unsafe=unsafe)
        source = path
    else:
        obj, source = path_or_state_dict, "<state dict>"
    sd, _ = select_state_dict(obj, model_key, source)
    if isinstance(obj, Mapping) and "transfer_type" in obj and "backbone" in obj:
        return _load_project_checkpoint(model, obj, sd, source, unsafe)
    sd, dropped, fmt = normalise_keys(sd, model_prefix)
    return load_state_dict_into(model, sd, source, fmt, dropped)


def _load_project_checkpoint(model: nn.Module, obj: Mapping[str, Any], sd: StateDict,
                             source: str, unsafe: bool) -> LoadReport:
    """This project's format (docs/FORMATS.md, 'Training checkpoints'). A frozen-backbone
    checkpoint holds only the trained tensors, so the backbone it names is loaded first (its
    sha256 checked), then those tensors."""
    needs_backbone = bool(_missing_backbone_keys(model, sd))
    base: Optional[LoadReport] = None
    if needs_backbone:
        ref = obj.get("backbone") or {}
        path = ref.get("path")
        if not path:
            raise CheckpointError(f"{source} holds only the trained tensors of a "
                                  f"'{obj.get('transfer_type')}' model and names no backbone file")
        if not os.path.exists(path):
            raise CheckpointError(f"{source} was trained on the backbone {path}, which does not "
                                  f"exist here; load that backbone first (--finetune) and this "
                                  f"file with --resume")
        verify_backbone(ref, source)
        base = load_pretrained(model, path, unsafe=unsafe)
    # The backbone is in place now (loaded above, or held by the file itself).
    report = load_state_dict_into(model, sd, source, "project",
                                  base.dropped if base else [], require_backbone=False)
    if base is not None:  # one report for both files
        report.loaded = sorted(set(base.loaded) | set(report.loaded))
        report.missing = [k for k in report.missing if k not in report.loaded]
    return report


def set_layer_norm_eps(model: nn.Module, eps: Optional[float], path: str) -> None:
    """HF configs may use another LayerNorm eps (1e-12); use theirs so outputs match exactly
    (None: leave the model's)."""
    if eps is None:
        return
    changed = 0
    for m in model.modules():
        if isinstance(m, nn.LayerNorm) and m.eps != eps:
            m.eps = eps
            changed += 1
    if changed:
        logger.info("%s: set LayerNorm eps to %g as its config.json says (%d norms)", path, eps,
                    changed)
