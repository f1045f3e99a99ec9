"""Checkpoints, in two halves.

**Foreign weights** (``load_pretrained``): every published layout loads into the one backbone
(docs/FORMATS.md).

Formats recognised by their keys:

1. VideoMAE pre-training (``encoder.*``, ``decoder.*``, ``encoder_to_decoder.*``, ``mask_token``),
   also with a ``backbone.`` prefix; decoder keys are dropped.
2. VideoMAE fine-tuned (backbone names without prefix, ``fc_norm``/``norm``, ``head``).
3. The original APT code (VideoMAE names plus ``prompt_embeddings_k/v``, ``prompt_scale``, with the
   mean-pool norm called ``head_norm``).
4. Hugging Face ``transformers`` VideoMAE folders (``config.json`` + safetensors or ``.bin``).
5. DeepSpeed checkpoints (``mp_rank_00_model_states.pt``, key ``module``) and this project's own.

``torch.load`` runs with ``weights_only=True``; the only non-tensor classes VideoMAE files hold
(``argparse.Namespace`` and plain containers) are allow-listed. Anything else is refused with a
message naming ``--unsafe_load``, which permits full unpickling of a file the user trusts. A file
that is no complete PyTorch checkpoint (an HTML page from a failed download, an empty or
truncated file) is described instead: its size, first bytes and what it seems to be.

**This project's checkpoints** (``TrainingCheckpoints``, ``save_method``/``load_method``): a
frozen-backbone run keeps only what it trained (prompts, scales, adapters, LoRA factors,
``fc_norm``, ``head``) and a reference to the backbone file (path and sha256), a few MB instead of
the 300+ MB backbone; ``random``/``end2end`` and pre-training keep every tensor. A checkpoint is a
dict of tensors and plain types only (it loads with ``weights_only=True``)::

    {"model": the kept tensors, "optimizer", "scaler", "epoch": last finished epoch,
     "step": optimizer steps done, "args": the run's flags, "transfer_type",
     "backbone": {"path", "sha256"} of --finetune, "best_acc", "model_ema": EMA of the kept
     tensors or None}

Plain runs write ``checkpoint-<tag>.pth`` (tag: epoch number, ``best`` or ``last``) to a
temporary name first and rename it, so a crash mid-write never replaces a good file. DeepSpeed
runs write the engine's own folders ``checkpoint-<tag>/`` (``mp_rank_00_model_states.pt`` holds
``module`` plus the same keys); frozen parameters are left out, and the folder is written under
``<tag>.tmp`` then renamed.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import logging
import math
import os
import pickle
import pickletools
import re
import shutil
import zipfile
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, TypeVar, Union

import torch
import torch.distributed as dist
import torch.nn as nn

from utils.config import canonical_optimizer
from utils.dist import all_ranks_ok
from utils.outputs import OutputWriteError, atomic_file, writing

from .transfer import canonical_transfer_type
from .vit import interpolate_pos_embed

logger = logging.getLogger(__name__)

StateDict = Dict[str, torch.Tensor]
Loaded = TypeVar("Loaded")

# Classes that VideoMAE / APT / DeepSpeed checkpoints pickle besides tensors and builtins.
SAFE_GLOBALS = [argparse.Namespace]

_DROPPED_PREFIXES = ("decoder.", "encoder_to_decoder.", "mask_token", "decoder_pos_embed")
_ENCODER_PREFIXES = ("patch_embed.", "blocks.", "pos_embed")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded into the model; the message names the file and keys."""


class UnreadableCheckpointError(CheckpointError):
    """A file ``torch.load`` cannot read; ``reason`` says what the file is (size, first bytes)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path} cannot be loaded: {reason}")
        self.path = path
        self.reason = reason


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


def torch_load(path: str, unsafe: bool = False) -> Any:
    """``torch.load`` on CPU with ``weights_only=True`` and the VideoMAE allow-list.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnreadableCheckpointError: the file is no complete PyTorch checkpoint (the message says
            what it is instead).
        CheckpointError: a complete checkpoint whose pickle holds classes outside the allow-list
            (the message names ``--unsafe_load``).
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if unsafe:
        # Full unpickling runs whatever the bytes say: look at the file first, so garbage (an
        # HTML page, random bytes) is described instead of executed (or exhausting memory).
        problem = diagnose_file(path)
        if problem is not None:
            raise UnreadableCheckpointError(path, f"{problem}; {_describe_bytes(path)}")
        logger.warning("loading %s with full unpickling (--unsafe_load): only for trusted files",
                       path)
    try:
        if unsafe:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (MemoryError, IsADirectoryError, PermissionError):
        raise  # about the machine or the path, not the file's content: torch's message is clear
    except Exception as err:  # torch reports bad content as RuntimeError, OSError, EOFError, ...
        problem = diagnose_file(path)
        if problem is None and isinstance(err, pickle.UnpicklingError) and not unsafe:
            # A complete checkpoint whose pickle the weights_only unpickler refused: only here
            # can full unpickling help.
            raise CheckpointError(
                f"{path} holds objects that are not tensors or allow-listed types, so it was not "
                f"unpickled ({str(err).splitlines()[0]}). If you trust the file, pass "
                f"--unsafe_load (or unsafe=True) to permit full unpickling.") from err
        if problem is None:
            first_line = (str(err).splitlines() or [""])[0][:200]
            problem = f"corrupt PyTorch checkpoint ({type(err).__name__}: {first_line})"
        raise UnreadableCheckpointError(path, f"{problem}; {_describe_bytes(path)}") from err


_HEAD_BYTES = 48


def _describe_bytes(path: str) -> str:
    """Size and first bytes of a file, printable: ``1,234 bytes, starting b'<!DOCTYPE ...'``."""
    size = os.path.getsize(path)
    if size == 0:
        return "0 bytes"
    with open(path, "rb") as f:
        head = f.read(_HEAD_BYTES)
    return f"{size:,} bytes, starting {head!r}{'...' if size > len(head) else ''}"


def diagnose_file(path: str) -> Optional[str]:
    """What a file that ``torch.load`` failed on is, or None when it looks like a complete
    PyTorch checkpoint (zip archive with ``data.pkl``, or legacy pickles that end properly).

    Only the start of the file, a zip's directory and its ``data.pkl`` are read, never the
    tensor data.
    """
    with open(path, "rb") as f:
        head = f.read(512)
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if not head:
        return "empty file"
    if text.startswith(b"<!doctype html") or b"<html" in text:
        return "an HTML page, not a PyTorch checkpoint (a failed download?)"
    if text.startswith(b"version https://git-lfs"):
        return "a Git LFS pointer, not the checkpoint itself (run `git lfs pull`?)"
    if head.startswith(b"PK\x03\x04"):  # torch >= 1.6 writes zip archives
        return _zip_problem(path)
    if head[0] == 0x80:  # a pickle: torch < 1.6 wrote raw pickles
        return None if _legacy_pickles_complete(path) else \
            "truncated or corrupt PyTorch checkpoint (legacy pickle incomplete)"
    return "not a PyTorch checkpoint"


def _zip_problem(path: str) -> Optional[str]:
    """What is wrong with a zip file as a PyTorch checkpoint, or None: a complete archive whose
    ``data.pkl`` (small: tensors are separate entries) passes its CRC check."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:  # no end-of-archive directory: cut off or overwritten
        return "truncated or corrupt PyTorch checkpoint (zip archive incomplete)"
    except Exception:  # a garbled directory (undecodable names, bad offsets)
        return "corrupt PyTorch checkpoint (zip directory unreadable)"
    with archive:
        pickles = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
        if not pickles:
            return "a zip archive, not a PyTorch checkpoint (no data.pkl)"
        try:
            # torch does not check CRCs: a damaged pickle must not pass for a refused class
            archive.read(pickles[0])
        except Exception:  # a bad CRC or local header
            return "corrupt PyTorch checkpoint (data.pkl damaged)"
    return None


def _legacy_pickles_complete(path: str) -> bool:
    """Legacy torch files start with four pickles (magic number, protocol version, system info,
    the object) before the raw tensor bytes; all four must parse up to their STOP opcode.
    ``pickletools.genops`` only reads opcodes, it never builds objects."""
    with open(path, "rb") as f:
        try:
            for _ in range(4):
                for _ in pickletools.genops(f):
                    pass
        except Exception:  # genops raises ValueError on truncation, others on garbage
            return False
    return True


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


def _load_hf_folder(path: str) -> Tuple[StateDict, List[str], dict]:
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    st = os.path.join(path, "model.safetensors")
    if os.path.exists(st):
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
    direct = os.path.join(path, "mp_rank_00_model_states.pt")
    if os.path.exists(direct):
        return direct
    latest = os.path.join(path, "latest")
    if os.path.exists(latest):
        with open(latest) as f:
            tagged = os.path.join(path, f.read().strip(), "mp_rank_00_model_states.pt")
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


def _infer_grid(num_tokens: int, target: Tuple[int, int, int]) -> Tuple[int, int, int]:
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
            src_grid = _infer_grid(sd["pos_embed"].shape[1], model.grid)
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
                sd, unused, config = _load_hf_folder(path)
                _match_hf_layernorm_eps(model, config, path)
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


def _match_hf_layernorm_eps(model: nn.Module, config: dict, path: str) -> None:
    """HF configs may use another LayerNorm eps (1e-12); use theirs so outputs match exactly."""
    eps = config.get("layer_norm_eps")
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


# =============================================================================================
# This project's checkpoints
# =============================================================================================
DS_MODEL_FILE = "mp_rank_00_model_states.pt"
_TAG_RE = re.compile(r"^checkpoint-(\d+)(\.pth)?$")
_HASH_CACHE: Dict[tuple, str] = {}


def file_sha256(path: str) -> str:
    """sha256 of a file (or of the files of a folder, in sorted order); cached by size and mtime."""
    files = [path] if os.path.isfile(path) else sorted(
        os.path.join(root, f) for root, _, names in os.walk(path) for f in names)
    key = tuple((f, os.path.getsize(f), os.path.getmtime(f)) for f in files)
    if key not in _HASH_CACHE:
        digest = hashlib.sha256()
        for f in files:
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
        _HASH_CACHE[key] = digest.hexdigest()
    return _HASH_CACHE[key]


def backbone_reference(path: Optional[str]) -> Dict[str, Optional[str]]:
    """``{"path": ..., "sha256": ...}`` for a ``--finetune`` file (both None without one)."""
    if not path:
        return {"path": None, "sha256": None}
    return {"path": os.path.abspath(path), "sha256": file_sha256(path)}


def trains_whole_model(model: nn.Module) -> bool:
    method = getattr(model, "transfer", None)
    return method is None or method.trains_backbone


def trainable_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """Every tensor for whole-model types; otherwise only the parameters that train."""
    if trains_whole_model(model):
        return {k: v.detach().clone() for k, v in model.state_dict().items()}
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def save_method(path: str, model: nn.Module, backbone: Optional[Mapping[str, Any]] = None,
                **extra: Any) -> None:
    """Write ``{"model", "transfer_type", "backbone", ...extra}`` atomically (tmp + rename)."""
    method = getattr(model, "transfer", None)
    obj = {"model": trainable_state_dict(model),
           "transfer_type": method.name if method is not None else "end2end",
           "backbone": dict(backbone or {"path": None, "sha256": None}), **extra}
    atomic_torch_save(obj, path)


def verify_backbone(ref: Mapping[str, Any], source: str, path: Optional[str] = None) -> None:
    """Raise if a backbone file differs from the one a checkpoint was trained on.

    Args:
        ref: the checkpoint's ``backbone`` entry (``path``, ``sha256``).
        source: the checkpoint's name, for the message.
        path: the backbone file to check (e.g. ``--finetune``); default: the recorded path,
            checked only while it still exists.
    """
    path, expected = path or ref.get("path"), ref.get("sha256")
    if path and expected and os.path.exists(path):
        actual = file_sha256(path)
        if actual != expected:
            raise CheckpointError(f"{source} was trained on the backbone {ref.get('path')} "
                                  f"(sha256 {expected[:12]}...), but {path} has sha256 "
                                  f"{actual[:12]}...: pass the backbone it was trained on")


def load_method(model: nn.Module, checkpoint: Any, check_backbone: bool = True) -> Dict[str, Any]:
    """Load the trainable tensors of ``checkpoint`` (a path or a loaded dict) into ``model``.

    The backbone must already be loaded. With ``check_backbone``, the sha256 recorded in the
    checkpoint must match the backbone file, when that file is still at the recorded path.
    Every trainable tensor of the model must be present; extra keys are an error.
    """
    if isinstance(checkpoint, str):
        source, obj = checkpoint, torch_load(checkpoint)
    else:  # read_checkpoint records the file it read
        source, obj = str(checkpoint.get("source") or "<checkpoint>"), checkpoint
    if check_backbone:
        verify_backbone(obj.get("backbone") or {}, source)
    check_fits(model, obj, source)
    state = obj["model"]
    expected = trainable_state_dict(model).keys()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(model.state_dict()))
    if missing or unexpected:
        raise CheckpointError(f"{source} does not fit the model: missing {missing[:8]}, "
                              f"unexpected {unexpected[:8]}")
    model.load_state_dict(state, strict=False)
    return obj


def check_fits(model: nn.Module, ckpt: Mapping[str, Any], source: str) -> None:
    """Refuse a training checkpoint of another transfer type or other tensor shapes than
    ``model``, naming the file (a head of another class count names ``--nb_classes``).

    Args:
        model: the model the checkpoint is to be loaded into.
        ckpt: a read training checkpoint (``model``, ``transfer_type``).
        source: its path, for the messages.

    Raises:
        CheckpointError: the message names the file and what differs.
    """
    method = getattr(model, "transfer", None)
    if method is not None and canonical_transfer_type(ckpt.get("transfer_type")) not in (
            None, method.name):  # files of old runs may name the type by its former name
        raise CheckpointError(f"{source} holds a '{ckpt['transfer_type']}' model, but the model "
                              f"was built with --transfer_type {method.name}")
    own, state = model.state_dict(), ckpt["model"]
    head = "head.weight"
    if head in own and head in state and own[head].shape[0] != state[head].shape[0]:
        mine, theirs = own[head].shape[0], state[head].shape[0]
        raise CheckpointError(f"--nb_classes {mine} (or the count of --data_set) but {source} "
                              f"has a {theirs}-class head: pass --nb_classes {theirs}, the "
                              f"class count it was trained with")
    mismatched = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in state.items() if k in own and v.shape != own[k].shape]
    if mismatched:
        raise CheckpointError(f"{source}: {len(mismatched)} tensors do not fit the model (it was "
                              f"trained with other flags; they are saved under 'args'): "
                              + "; ".join(mismatched[:10]))


def saved_flags(ckpt: Mapping[str, Any]) -> Dict[str, Any]:
    """The flags a checkpoint saved under ``args`` (VideoMAE's files: a Namespace), or {}."""
    saved = ckpt.get("args") or {}
    return dict(vars(saved) if isinstance(saved, argparse.Namespace) else saved)


def load_method_state(model: nn.Module, ckpt: Dict[str, Any]) -> None:
    """Load a training checkpoint's tensors into ``model`` (its backbone already loaded)."""
    load_method(model, ckpt, check_backbone=not trains_whole_model(model))


def check_backbone(ckpt: Dict[str, Any], finetune: Optional[str], source: str) -> None:
    """Refuse a checkpoint trained on another backbone file than ``--finetune``."""
    if finetune:
        verify_backbone(ckpt.get("backbone") or {}, source, path=finetune)


def _is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save`` to ``path`` through a temporary file in the same folder and a rename.

    The temporary file is flushed to disk before the rename, so at any moment ``path`` is either
    the previous complete file or the new complete file, never a partial one; on failure the
    temporary file is removed.

    Raises:
        OutputWriteError: the file could not be written (full disk, read-only folder, ...).
    """
    with atomic_file(path, "wb") as f:
        torch.save(obj, f)


def _agree(error: Optional[BaseException], path: str, device: torch.device,
           elsewhere: str = "rank 0 could not write it (its log says why)") -> None:
    """Every rank learns whether the write of ``path`` worked on all ranks (this takes the
    place of a barrier), so a failed save stops all ranks instead of leaving them waiting in the
    next collective. A rank that failed raises its own error, the others an
    ``OutputWriteError`` naming ``path`` and saying ``elsewhere``."""
    if all_ranks_ok(error is None, device):
        return
    if error is not None:
        raise error
    raise OutputWriteError(path, elsewhere)


def _put_in_place(tmp: str, final: str) -> None:
    """Rename the DeepSpeed folder ``tmp`` to ``final``, keeping the previous ``final`` as
    ``.old`` until the new one is in place (auto-resume takes ``.old`` after a crash)."""
    old = f"{final}.old"
    if os.path.exists(final):
        if os.path.exists(old):
            shutil.rmtree(old)
        os.replace(final, old)  # a crash from here on leaves `.old`; resume takes it
    os.replace(tmp, final)
    if os.path.exists(old):
        shutil.rmtree(old)
    size = sum(os.path.getsize(p) for p in glob.glob(os.path.join(final, "*")))
    logger.info("saved DeepSpeed checkpoint %s (%.2f MB)", final, size / 2 ** 20)


def _epoch_of(name: str) -> Optional[int]:
    m = _TAG_RE.match(name)
    return int(m.group(1)) if m else None


def _is_checkpoint(path: str) -> bool:
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
            if _is_checkpoint(p)]


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
    if not os.path.isdir(path) or _is_checkpoint(path):
        return path
    best = [p for p in (os.path.join(path, n) for n in BEST_NAMES) if _is_checkpoint(p)]
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
    try:
        return read_checkpoint(path, unsafe=unsafe)
    except UnreadableCheckpointError as err:
        raise CheckpointError(f"{flag} {err}") from err


def read_checkpoint(path: str, unsafe: bool = False) -> Dict[str, Any]:
    """Load a checkpoint of this project (file, or DeepSpeed folder/file) as a dict with
    ``model`` (and ``deepspeed`` for DeepSpeed's layout, ``source`` = the file read)."""
    if os.path.isdir(path):
        model_file = os.path.join(path, DS_MODEL_FILE)
        if not os.path.isfile(model_file):
            raise FileNotFoundError(f"{path} is a folder without {DS_MODEL_FILE}: not a "
                                    f"DeepSpeed checkpoint of this project")
        path = model_file
    obj = torch_load(path, unsafe=unsafe)
    if not isinstance(obj, dict) or ("model" not in obj and "module" not in obj):
        raise ValueError(f"{path} is not a checkpoint of this project (no 'model' or 'module')")
    if "model" not in obj:  # DeepSpeed layout: the module under 'module', client keys on top
        obj = dict(obj)
        obj["model"] = obj.pop("module")
        obj["deepspeed"] = True
    obj["source"] = path
    return obj


class TrainingCheckpoints:
    """The ``checkpoint-<tag>`` files of one run: writing them and resuming from them.

    Args:
        output_dir: ``--output_dir``.
        flags: the run's flags (saved as ``args``; VideoMAE's pre-training layout also keeps
            ``patch_size``/``window_size`` there).
        backbone_path: the backbone file the model was built on (None: none, or not needed).
        unsafe: ``--unsafe_load``.
        check_resumed: called with a read checkpoint before it is loaded (pre-training refuses
            one of another architecture); raises to refuse it.
        reset_optimizer: ``--reset_optimizer``: on resume, keep the fresh optimizer (the
            weights, epoch and schedule step still come from the checkpoint).
    """

    def __init__(self, output_dir: str, flags: Mapping[str, Any],
                 backbone_path: Optional[str] = None, unsafe: bool = False,
                 check_resumed: Optional[Any] = None, reset_optimizer: bool = False) -> None:
        self.output_dir = output_dir
        self.flags = dict(flags)
        self.backbone_path = backbone_path
        self.unsafe = unsafe
        self.check_resumed = check_resumed
        self.reset_optimizer = reset_optimizer

    # --- writing -------------------------------------------------------------------------------
    def metadata(self, model: nn.Module, epoch: int, step: int, best_acc: Optional[float],
                 model_ema: Any = None) -> Dict[str, Any]:
        """Everything of a checkpoint except the model, optimizer and scaler states."""
        method = getattr(model, "transfer", None)
        if method is None:  # pre-training: VideoMAE's layout, which --finetune reads as such
            return {"epoch": int(epoch), "step": int(step), "args": self.flags}
        loads = method.loads_pretrained
        return {"epoch": int(epoch), "step": int(step), "args": self.flags,
                "transfer_type": method.name,
                "backbone": backbone_reference(self.backbone_path if loads else None),
                "best_acc": None if best_acc is None else float(best_acc),
                "model_ema": _ema_state(model_ema, model)}

    def save(self, tag: str, epoch: int, step: int, backend: Any, model_ema: Any = None,
             best_acc: Optional[float] = None) -> str:
        """Write ``checkpoint-<tag>``; call on every rank (DeepSpeed saves collectively, plain
        runs write on rank 0 while the others wait). Returns the path written (a file, or a
        DeepSpeed folder)."""
        meta = self.metadata(backend.module, epoch, step, best_acc, model_ema)
        if backend.is_deepspeed:
            return self._save_deepspeed(backend.model, tag, meta)
        path = os.path.join(self.output_dir, f"checkpoint-{tag}.pth")
        error: Optional[BaseException] = None
        if _is_main_process():
            try:
                atomic_torch_save({"model": trainable_state_dict(backend.module),
                                   **backend.state_dict(), **meta}, path)
                logger.info("saved %s (%.2f MB)", path, os.path.getsize(path) / 2 ** 20)
            except Exception as err:  # raised below, once every rank knows
                error = err
        # The other ranks wait for the file: `load_best` (--test_best) must read the same,
        # complete checkpoint on every rank, or ranks test different weights.
        _agree(error, path, backend.device)
        return path

    def _save_deepspeed(self, engine: Any, tag: str, meta: Dict[str, Any]) -> str:
        final = os.path.join(self.output_dir, f"checkpoint-{tag}")
        tmp_tag = f"checkpoint-{tag}.tmp"
        device = next(engine.module.parameters()).device
        error: Optional[BaseException] = None
        try:  # every rank writes its part (ZeRO: its optimizer shard)
            with writing(os.path.join(self.output_dir, tmp_tag)):
                engine.save_checkpoint(self.output_dir, tag=tmp_tag, client_state=meta,
                                       save_latest=False,
                                       exclude_frozen_parameters=not trains_whole_model(
                                           engine.module))
        except Exception as err:  # raised below, once every rank knows
            error = err
        _agree(error, final, device, "another rank could not write its part (its log says why)")
        if _is_main_process():
            try:
                with writing(final):
                    _put_in_place(os.path.join(self.output_dir, tmp_tag), final)
            except Exception as err:  # raised below, once every rank knows
                error = err
        _agree(error, final, device)
        return final

    # --- reading -------------------------------------------------------------------------------
    def resume(self, resume: str, auto_resume: bool, backend: Any,
               model_ema: Any = None) -> Optional[Dict[str, Any]]:
        """Resume from ``--resume``, or with ``--auto_resume`` the newest checkpoint of the
        output folder: model, optimizer, scaler, EMA. Returns the checkpoint's metadata
        (``epoch``, ``step``, ``best_acc``, ...; training continues at ``epoch + 1``) or None
        when there is nothing to resume from."""
        ckpt: Optional[Dict[str, Any]] = None
        if resume:  # named by the user: used or refused, never replaced by another file
            path = resume
            if not os.path.exists(path):
                raise FileNotFoundError(f"--resume {path}: no such checkpoint")
        elif auto_resume:
            found = load_newest_readable(self.output_dir,
                                         lambda p: read_checkpoint(p, unsafe=self.unsafe))
            if found is None:
                return None
            path, ckpt = found
        else:
            return None
        if backend.is_deepspeed:
            meta = self._resume_deepspeed(backend.model, path, ckpt)
        else:
            ckpt = ckpt or read_named_checkpoint(path, "--resume", self.unsafe)
            self._check(ckpt, backend.module, path)
            load_method_state(backend.module, ckpt)
            self._load_optimizer(backend, ckpt, path)
            meta = ckpt
        if model_ema is not None and meta.get("model_ema"):
            model_ema.module.load_state_dict(meta["model_ema"], strict=False)
        if self.reset_optimizer:
            logger.warning("--reset_optimizer: a fresh %s optimizer; %s gave the weights, the "
                           "epoch and the schedule step", self.flags.get("opt"), path)
        logger.info("resumed from %s (epoch %s, step %s); training continues at epoch %s", path,
                    meta.get("epoch"), meta.get("step"), int(meta.get("epoch", -1)) + 1)
        return meta

    def _check(self, ckpt: Dict[str, Any], model: nn.Module, path: str) -> None:
        if self.check_resumed is not None:
            self.check_resumed(ckpt, path)
        if not trains_whole_model(model):  # a frozen backbone must be the one trained on
            check_backbone(ckpt, self.backbone_path, path)
        self._check_optimizer(ckpt, path)

    def _check_optimizer(self, ckpt: Dict[str, Any], path: str) -> None:
        """Refuse to continue another optimizer's state (AdamW's moments in SGD end in a
        ``KeyError: 'momentum'`` at the first step) unless ``--reset_optimizer``."""
        saved, current = saved_flags(ckpt).get("opt"), self.flags.get("opt")
        if self.reset_optimizer or not saved or not current:
            return  # nothing to compare (a checkpoint without saved flags loads as before)
        if canonical_optimizer(saved) != canonical_optimizer(current):
            raise CheckpointError(f"--opt {current} but {path} was trained with --opt {saved}: "
                                  f"its optimizer state cannot continue in another optimizer. "
                                  f"Resume with --opt {saved}, or pass --reset_optimizer to "
                                  f"start a fresh {current} optimizer from its weights")

    def _load_optimizer(self, backend: Any, ckpt: Dict[str, Any], path: str) -> None:
        """The optimizer and loss-scaler states of ``ckpt`` (only the scaler's with
        ``--reset_optimizer``)."""
        try:
            backend.load_state_dict(ckpt, optimizer=not self.reset_optimizer)
        except (ValueError, KeyError) as err:  # torch: other parameter groups or sizes
            raise CheckpointError(f"{path}: its optimizer state does not fit this run's "
                                  f"optimizer ({err}){self._group_hint(ckpt)}; pass "
                                  f"--reset_optimizer to start a fresh one from its "
                                  f"weights") from err

    def _group_hint(self, ckpt: Dict[str, Any]) -> str:
        """Why the weight-decay groups may differ: runs saved before APT's prompts took weight
        decay by default (the original code's groups) recorded ``decay_prompts`` False."""
        saved, current = saved_flags(ckpt).get("decay_prompts"), self.flags.get("decay_prompts")
        if saved is None or saved == current:
            return ""
        switch = "--decay_prompts" if saved else "--no_decay_prompts"
        return (f"; it was trained with decay_prompts={saved}, this run has "
                f"{'the transfer type default' if current is None else current}, so the "
                f"weight-decay groups differ: pass {switch} to resume it as it was trained")

    def _resume_deepspeed(self, engine: Any, path: str,
                          ckpt: Optional[Dict[str, Any]]) -> Dict[str, Any]:
        """``ckpt``: what auto-resume already read of the folder (checked, not read again)."""
        ckpt_dir = path[:-len(DS_MODEL_FILE) - 1] if path.endswith(DS_MODEL_FILE) else path
        ckpt_dir = ckpt_dir.rstrip(os.sep)
        if os.path.isfile(ckpt_dir):
            raise ValueError(f"--resume {path}: DeepSpeed runs resume from a DeepSpeed "
                             f"checkpoint folder (checkpoint-<tag>/), not a .pth file")
        ckpt = ckpt or read_named_checkpoint(ckpt_dir, "--resume", self.unsafe)
        self._check(ckpt, engine.module, ckpt_dir)
        check_fits(engine.module, ckpt, ckpt_dir)
        load_dir, tag = os.path.split(ckpt_dir)
        _, client = engine.load_checkpoint(load_dir, tag=tag, load_module_strict=False,
                                           load_optimizer_states=not self.reset_optimizer,
                                           load_lr_scheduler_states=False)
        if client is None:
            raise RuntimeError(f"DeepSpeed could not load {ckpt_dir}")
        return client

    def load_best(self, model: nn.Module) -> bool:
        """Load ``checkpoint-best``'s tensors into ``model``; False when there is none."""
        for name in ("checkpoint-best.pth", "checkpoint-best"):
            path = os.path.join(self.output_dir or ".", name)
            if _is_checkpoint(path):
                load_method_state(model, read_checkpoint(path, self.unsafe))
                return True
        return False


def _ema_state(model_ema: Any, model: nn.Module) -> Optional[Dict[str, torch.Tensor]]:
    """The EMA's copies of the tensors the checkpoint keeps for ``model``."""
    if model_ema is None:
        return None
    ema_sd = model_ema.module.state_dict()
    return {k: ema_sd[k].detach().clone() for k in trainable_state_dict(model) if k in ema_sd}
