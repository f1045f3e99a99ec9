"""Many tasks on one frozen backbone: clips of different tasks in one forward pass.

APT's prompts enter a block only as extra keys and values of its attention (``models/vit.py``,
``Attention.forward``); they never lengthen the token sequence, and the backbone's weights are
the same for every task. So one forward pass of one frozen backbone can serve a batch whose clips
belong to different tasks: in every block, each clip attends to its own task's prompts, and at
the end each clip goes through its own task's pooling norm and head. A linear probe is the case
of no prompts at all.

Usage::

    from models.multitask import MultiTaskModel
    model = MultiTaskModel(
        {"ucf101": "out/ucf101/checkpoint-best.pth",       # APT, P = 400, all blocks
         "hmdb51": "out/hmdb51/checkpoint-best.pth",       # APT, P = 100, blocks 4-11
         "k400-linear": "out/k400_linear/checkpoint-best.pth"},
        backbone="checkpoints/videomae_k400_pretrain_base_patch16_224.pth")
    model.to("cuda")
    with torch.inference_mode():
        logits = model(clips, task_ids)  # clips (B, 3, T, H, W); task_ids (B,) long, 0..tasks-1
    logits[i]  # (num_classes[task_ids[i]],): clip i's logits for its own task

**Constructor** ``MultiTaskModel(tasks, backbone=None, unsafe=False, architecture=None)``:

* ``tasks``: the tasks' training checkpoints (``checkpoint-<tag>.pth`` of ``run_class_apt.py``,
  or its DeepSpeed folder), as a mapping name -> path (task ids follow its order) or a sequence
  of paths (task ``i`` is the ``i``-th path, named by its path). Each checkpoint's architecture
  (``--model``, clip shape, prompt count and block range, ``--prompt_reparam``,
  ``--prompt_per_head``, ``--use_cls``) is read from its ``args``, as ``--eval`` reads it
  (``models/config.py``, ``ModelConfig.with_architecture``); its class count from its head.
* ``backbone``: the backbone file (what ``--finetune`` was), loaded once with
  ``models.load_pretrained``; default: the file the checkpoints record.
* ``unsafe``: ``--unsafe_load`` for every file read.
* ``architecture``: ``create_model`` keywords that override the registered variant
  (``depth``, ``embed_dim``, ...), for backbones built with such overrides; the checkpoints'
  flags cannot record them.

Attributes: ``task_names`` (list, index = task id), ``num_classes`` (list of class counts),
``transfer_types``, ``backbone_path``, ``task_id(name)``.

**Forward**:

* ``model(clips, task_ids) -> List[Tensor]``: one logits vector per clip, of its task's class
  count (tasks' class counts differ, so there is no single (B, C) tensor).
* ``model.forward_grouped(clips, task_ids) -> Dict[int, Tuple[Tensor, Tensor]]``: per task id
  present in the batch, ``(positions (n,) long, logits (n, C_task))``, the clips' positions in
  the batch in order; what a caller that scores per task (a ``--tasks`` option of a prediction
  tool) wants, without splitting the logits into one tensor per clip.

``task_ids`` is a (B,) integer tensor (or a sequence of ints) with values in ``[0, tasks)``; a
task may have no clip in a batch, and B may be 0. The module is for inference only
(``train(True)`` raises): it runs in eval mode, with APT's scales folded into the prompts
(``TransferMethod.fold``).

**Which tasks can share a backbone.** Transfer types that leave every token and every weight of
the backbone as it is: ``apt`` (APT, formerly ``prompt``; any prompt count and block range,
with or without ``--prompt_reparam``, shared or ``--prompt_per_head`` prompts) and ``linear``.
Every other type is refused with the reason (``REFUSED``): VPT adds tokens to the sequence, LoRA
and adapters change the shared weights or computation, ``end2end`` / ``random`` train the
backbone itself.
All tasks must have the same ``--model``, clip shape (``--num_frames``, ``--input_size``,
``--tubelet_size``) and ``--use_learnable_pos_emb``, and have been trained on the same backbone
file (the sha256 recorded in each checkpoint's ``backbone`` entry); otherwise the constructor
refuses, naming both files.

**How one batch runs.** The prompts of all tasks are stacked per block into tables of shape
(L blocks, tasks, P_max, head_dim) (``(L, tasks, heads, P_max, head_dim)`` when a task has
per-head prompts), zero-padded to the largest count; a task with no prompts in a block has count
0 there. In block ``i`` each clip gathers its task's row by task id: (B, 1 or heads, P, hd)
keys and values, ``P`` the largest count among the tasks present in the batch. Where the present
tasks' counts differ, the padding is masked out of the attention (``kv_mask``: SDPA's boolean
``attn_mask``, ``-inf`` before the softmax on the math path), so each clip's attention equals its
own model's; where they are equal (a single task, or same-size tasks) no mask is built and the
block runs the unmasked path; where none of them has prompts the block runs without extra keys.

Long on purpose: a third of it is this description of the batching rules; the code is one
concern (one backbone, many tasks' prompts and heads in one forward).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from utils.config import field_defaults

from . import create_model
from .config import ModelConfig
from .method_state import file_sha256, load_method
from .pretrained import load_pretrained
from .run_checkpoints import read_checkpoint
from .serialization import CheckpointError
from .transfer import canonical_transfer_type, make_config
from .vit import VisionTransformer

logger = logging.getLogger(__name__)

# Transfer types that add only extra keys/values (APT) or only a head (linear probing).
SHARED_BACKBONE_TYPES = ("apt", "linear")
# Why each other type cannot share one forward pass of the backbone with other tasks.
REFUSED = {
    "vpt": "VPT inserts its prompts into the token sequence, so its clips run the backbone on "
           "a longer, different token sequence than the other tasks' clips",
    "lora": "LoRA changes the shared qkv weights of the backbone (a per-task weight, not extra "
            "keys/values)",
    "adapter": "adapters add a per-task branch beside every MLP of their blocks, which changes "
               "the shared computation of those blocks",
    "approx": "Approximated Prompt Tuning adds a per-task module to the attention output of its "
              "blocks, which changes the shared computation of those blocks",
    "end2end": "end2end trains the backbone itself: its weights are not the shared frozen "
               "backbone's",
    "random": "random trains the backbone from scratch: its weights are not the shared frozen "
              "backbone's",
}
# Flags that must be equal across tasks: the backbone variant, its clip shape and its tokens.
SHARED_FLAGS = ("model", "num_frames", "input_size", "tubelet_size", "use_learnable_pos_emb")


class TaskHead(nn.Module):
    """A task's pooling and classifier: ``fc_norm(mean over tokens)`` then ``head``, or with
    ``--use_cls`` the first token through ``norm`` (as ``VisionTransformer.forward_features``).

    Args:
        norm: the task's trained ``fc_norm`` (mean pooling) or ``norm`` (``--use_cls``).
        head: the task's trained linear classifier.
        mean_pooling: average the tokens (True) or take the first one (False).
    """

    def __init__(self, norm: nn.Module, head: nn.Module, mean_pooling: bool) -> None:
        super().__init__()
        self.norm, self.head, self.mean_pooling = norm, head, mean_pooling

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (n, N, D) of the last block -> logits (n, C)."""
        pooled = tokens.mean(1) if self.mean_pooling else tokens[:, 0]  # (n, D)
        # LayerNorm acts per token, so norm(x[:, 0]) is VisionTransformer's norm(x)[:, 0].
        return self.head(self.norm(pooled))


@dataclass
class _Task:
    """What one checkpoint contributes: its prompts per block, pooling and head."""

    name: str
    path: str
    transfer_type: str
    num_classes: int
    prompts: List[Optional[Tuple[torch.Tensor, torch.Tensor]]]  # per block; (P, hd)/(H, P, hd)
    per_head: bool
    head: TaskHead


class MultiTaskModel(nn.Module):
    """Several APT / linear-probe tasks on one frozen backbone (see the module docstring).

    Args:
        tasks: training checkpoints, as name -> path (ids in its order) or a sequence of paths.
        backbone: the backbone file; default: the one the checkpoints record.
        unsafe: permit full unpickling of the files (``--unsafe_load``; trusted files only).
        architecture: ``create_model`` keywords overriding the registered variant (``depth``,
            ``embed_dim``, ...), for backbones built with such overrides.

    Raises:
        CheckpointError: a task of a type that cannot share the backbone, tasks of different
            variants or clip shapes, or trained on another backbone file (the message names the
            checkpoint, the flag or the files, and why).
    """

    def __init__(self, tasks: Union[Mapping[str, str], Sequence[str]],
                 backbone: Optional[str] = None, unsafe: bool = False,
                 architecture: Optional[Mapping[str, Any]] = None) -> None:
        super().__init__()
        named = list(tasks.items()) if isinstance(tasks, Mapping) else \
            [(os.fspath(p), os.fspath(p)) for p in tasks]
        if not named:
            raise ValueError("MultiTaskModel needs at least one task checkpoint")
        names = [n for n, _ in named]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"MultiTaskModel: task names must be unique, got {duplicates} "
                             f"more than once")
        architecture = dict(architecture or {})
        ckpts = [(name, os.fspath(path), read_checkpoint(os.fspath(path), unsafe=unsafe))
                 for name, path in named]
        for _, path, ckpt in ckpts:
            _check_type(path, ckpt)
        flags = [_run_flags(path, ckpt) for _, path, ckpt in ckpts]
        _check_same_flags([(path, f) for (_, path, _), f in zip(ckpts, flags)])
        self.backbone_path = _shared_backbone_file([(path, ckpt) for _, path, ckpt in ckpts],
                                                   backbone)

        first = flags[0]
        # Mean pooling, so its final ``norm`` is the identity: pooling is each task's own.
        self.backbone: VisionTransformer = _build(first, "linear", make_config("linear", {}), 0,
                                                  True, architecture)
        report = load_pretrained(self.backbone, self.backbone_path,
                                 model_key=first.get("model_key") or "model|module",
                                 model_prefix=first.get("model_prefix") or "", unsafe=unsafe)
        logger.info("multi-task backbone: %s", report.summary())
        parts = [_read_task(name, path, ckpt, f, architecture)
                 for (name, path, ckpt), f in zip(ckpts, flags)]

        self.task_names = [t.name for t in parts]
        self.num_classes = [t.num_classes for t in parts]
        self.transfer_types = [t.transfer_type for t in parts]
        self.heads = nn.ModuleList(t.head for t in parts)
        self._build_prompt_tables(parts)
        self.requires_grad_(False)
        super().train(False)
        for i, (t, counts) in enumerate(zip(parts, self._counts)):
            logger.info("task %d %r (%s, %d classes, prompts per block %s): %s", i, t.name,
                        t.transfer_type, t.num_classes, counts, t.path)

    # --- building --------------------------------------------------------------------------
    def _build_prompt_tables(self, parts: List[_Task]) -> None:
        """Stack every task's prompts per block, zero-padded to the largest count, into the
        buffers ``prompt_k``/``prompt_v`` (L, T, P_max, hd) or, when any task has per-head
        prompts, (L, T, H, P_max, hd) (shared prompts are copied to every head there), and the
        padding mask ``prompt_mask`` (L, T, P_max), True at real prompts."""
        depth, attn = len(self.backbone.blocks), self.backbone.blocks[0].attn
        heads, hd = attn.num_heads, attn.head_dim
        self._counts: List[List[int]] = [  # [task][block] prompt count, on the host
            [0 if kv is None else kv[0].shape[-2] for kv in t.prompts] for t in parts]
        self.per_head = any(t.per_head for t in parts)
        p_max = max((c for counts in self._counts for c in counts), default=0)
        shape = (depth, len(parts)) + ((heads,) if self.per_head else ()) + (p_max, hd)
        table_k, table_v = torch.zeros(shape), torch.zeros(shape)
        mask = torch.zeros(depth, len(parts), p_max, dtype=torch.bool)
        for t, task in enumerate(parts):
            for i, kv in enumerate(task.prompts):
                if kv is None:
                    continue
                for table, prompts in zip((table_k, table_v), kv):
                    if self.per_head and prompts.dim() == 2:  # (P, hd) -> every head's copy
                        prompts = prompts.expand(heads, -1, -1)
                    table[i, t, ..., :prompts.shape[-2], :] = prompts
                mask[i, t, :kv[0].shape[-2]] = True
        self.register_buffer("prompt_k", table_k)
        self.register_buffer("prompt_v", table_v)
        self.register_buffer("prompt_mask", mask)

    def train(self, mode: bool = True) -> "MultiTaskModel":
        """Eval mode only: the tasks were trained apart (``run_class_apt.py``); this module
        serves them, with folded scales and no dropout."""
        if mode:
            raise RuntimeError("MultiTaskModel is for inference only; train each task on its "
                               "own with run_class_apt.py")
        return super().train(False)

    def task_id(self, name: str) -> int:
        """The id of the task called ``name`` (its position in ``tasks``)."""
        if name not in self.task_names:
            raise KeyError(f"no task {name!r}; tasks: {', '.join(self.task_names)}")
        return self.task_names.index(name)

    # --- forward ---------------------------------------------------------------------------
    def _task_ids(self, clips: torch.Tensor, task_ids: Any) -> torch.Tensor:
        ids = torch.as_tensor(task_ids, device=clips.device)
        if ids.dim() != 1 or ids.shape[0] != clips.shape[0] or \
                (ids.numel() and ids.is_floating_point()):
            raise ValueError(f"task_ids must be a (B,) integer tensor for clips of batch "
                             f"{clips.shape[0]}, got {ids.dtype} {tuple(ids.shape)}")
        ids = ids.long()
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= len(self.task_names)):
            raise ValueError(f"task_ids must lie in [0, {len(self.task_names)}) (the tasks: "
                             f"{', '.join(self.task_names)}), got {ids.tolist()}")
        return ids

    def forward_tokens(self, clips: torch.Tensor, task_ids: torch.Tensor,
                       present: Sequence[int]) -> torch.Tensor:
        """The backbone's output tokens (B, N, D), each clip with its task's prompts.

        Args:
            clips: (B, 3, T, H, W).
            task_ids: (B,) long, on the clips' device.
            present: the task ids that occur in ``task_ids``.
        """
        bb = self.backbone
        grid = bb.patch_embed.grid_size(*clips.shape[2:])
        x = bb.patch_embed(clips)  # (B, N, D)
        x = bb.pos_drop(x + bb.position_embedding(grid, x.device, x.dtype))
        for i, blk in enumerate(bb.blocks):
            counts = [self._counts[t][i] for t in present]
            p = max(counts)
            if p == 0:  # no task of this batch has prompts here: the plain block
                x = blk(x)
                continue
            # Only the first p columns: the largest count present, not the table's P_max.
            pk = self.prompt_k[i].narrow(-2, 0, p).index_select(0, task_ids)  # (B,[H,]p, hd)
            pv = self.prompt_v[i].narrow(-2, 0, p).index_select(0, task_ids)
            if not self.per_head:  # (B, p, hd) -> (B, 1, p, hd), broadcast over heads
                pk, pv = pk.unsqueeze(1), pv.unsqueeze(1)
            kv_mask = None
            if min(counts) < p:  # some clips' tasks have fewer prompts: mask their padding
                kv_mask = self.prompt_mask[i].narrow(-1, 0, p).index_select(0, task_ids)
            x = blk(x, (pk, pv), kv_mask)  # (B, p) mask
        return bb.norm(x)  # Identity: the backbone is built with mean pooling

    def forward_grouped(self, clips: torch.Tensor, task_ids: Any
                        ) -> Dict[int, Tuple[torch.Tensor, torch.Tensor]]:
        """Logits grouped by task: ``{task id: (positions (n,) long, logits (n, C_task))}``
        for every task present in the batch, positions in increasing order.

        Args:
            clips: (B, 3, T, H, W).
            task_ids: (B,) integers in ``[0, tasks)``: the task of each clip.
        """
        if clips.dim() != 5:
            raise ValueError(f"clips must be (B, 3, T, H, W), got {tuple(clips.shape)}")
        ids = self._task_ids(clips, task_ids)
        if ids.numel() == 0:
            return {}
        present = sorted(set(ids.tolist()))  # one device-to-host copy per batch
        tokens = self.forward_tokens(clips, ids, present)  # (B, N, D)
        out: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}
        for t in present:
            positions = torch.nonzero(ids == t).squeeze(1)  # (n,)
            out[t] = positions, self.heads[t](tokens.index_select(0, positions))
        return out

    def forward(self, clips: torch.Tensor, task_ids: Any) -> List[torch.Tensor]:
        """Args:
            clips: (B, 3, T, H, W).
            task_ids: (B,) integers in ``[0, tasks)``.

        Returns:
            B tensors: clip ``i``'s logits (C of task ``task_ids[i]``,).
        """
        out: List[Optional[torch.Tensor]] = [None] * clips.shape[0]
        for positions, logits in self.forward_grouped(clips, task_ids).values():
            for j, pos in enumerate(positions.tolist()):
                out[pos] = logits[j]
        return out  # type: ignore[return-value]


# --- reading the checkpoints ---------------------------------------------------------------
def _check_type(path: str, ckpt: Mapping[str, Any]) -> None:
    kind = canonical_transfer_type(ckpt.get("transfer_type")
                                   or (ckpt.get("args") or {}).get("transfer_type"))
    if kind in SHARED_BACKBONE_TYPES:
        return
    why = REFUSED.get(kind, f"only {' and '.join(SHARED_BACKBONE_TYPES)} tasks leave the "
                            f"backbone's tokens and weights unchanged")
    raise CheckpointError(f"{path}: --transfer_type {kind} cannot share one forward pass of "
                          f"the backbone with other tasks: {why}. Multi-task inference takes "
                          f"{' and '.join(SHARED_BACKBONE_TYPES)} checkpoints only")


def _run_flags(path: str, ckpt: Mapping[str, Any]) -> Dict[str, Any]:
    """The checkpoint's run flags over the declared defaults of the network's flags
    (``ModelConfig``), with the clip-shape flags it must have."""
    flags = dict(ckpt.get("args") or {})
    missing = [k for k in ("model", "num_frames", "input_size") if flags.get(k) is None]
    if missing:
        raise CheckpointError(f"{path} records no {', '.join('--' + k for k in missing)} in its "
                              f"'args', so its architecture is unknown: multi-task inference "
                              f"takes training checkpoints of run_class_apt.py")
    flags["transfer_type"] = canonical_transfer_type(ckpt.get("transfer_type")
                                                     or flags.get("transfer_type"))
    return {**field_defaults(ModelConfig), **flags}


def _check_same_flags(flags: List[Tuple[str, Dict[str, Any]]]) -> None:
    first_path, first = flags[0]
    for path, f in flags[1:]:
        for k in SHARED_FLAGS:
            if f[k] != first[k]:
                raise CheckpointError(
                    f"{path} was trained with --{k} {f[k]!r} but {first_path} with --{k} "
                    f"{first[k]!r}: tasks on one backbone must share --model, the clip shape "
                    f"(--num_frames, --input_size, --tubelet_size) and --use_learnable_pos_emb")


def _shared_backbone_file(ckpts: List[Tuple[str, Mapping[str, Any]]],
                          backbone: Optional[str]) -> str:
    """The backbone file every checkpoint was trained on (by the sha256 each records)."""
    refs = []
    for path, ckpt in ckpts:
        ref = ckpt.get("backbone") or {}
        if not ref.get("sha256"):
            raise CheckpointError(f"{path} records no backbone file (trained without "
                                  f"--finetune?), so it cannot be shown to share a backbone "
                                  f"with the other tasks")
        refs.append((path, ref))
    if backbone is None:
        backbone = refs[0][1].get("path")
        if not backbone or not os.path.exists(backbone):
            raise CheckpointError(f"{refs[0][0]} was trained on the backbone {backbone}, which "
                                  f"is not there: pass the backbone file (backbone=...)")
    elif not os.path.exists(backbone):
        raise FileNotFoundError(f"backbone file not found: {backbone}")
    actual = file_sha256(backbone)
    for path, ref in refs:
        if ref["sha256"] != actual:
            raise CheckpointError(f"{path} was trained on the backbone {ref.get('path')} "
                                  f"(sha256 {ref['sha256'][:12]}...), not on {backbone} "
                                  f"(sha256 {actual[:12]}...): every task must have been "
                                  f"trained on the same backbone file")
    return backbone


def _build(flags: Mapping[str, Any], transfer_type: str, method: Any, num_classes: int,
           mean_pooling: bool, architecture: Mapping[str, Any]) -> VisionTransformer:
    """A model of the checkpoint's architecture (``ModelConfig.build``'s keywords; dropouts
    are irrelevant at inference), with ``architecture`` overriding the variant."""
    return create_model(flags["model"], transfer_type=transfer_type, method_config=method,
                        num_classes=num_classes, all_frames=int(flags["num_frames"]),
                        img_size=int(flags["input_size"]),
                        tubelet_size=int(flags["tubelet_size"]),
                        use_mean_pooling=mean_pooling,
                        use_learnable_pos_emb=bool(flags["use_learnable_pos_emb"]),
                        **architecture)


def _read_task(name: str, path: str, ckpt: Mapping[str, Any], flags: Mapping[str, Any],
               architecture: Mapping[str, Any]) -> _Task:
    """Build the task's own model without backbone weights, load its trained tensors, fold
    APT's scales, and keep the prompts per block and the pooling norm and head."""
    state = ckpt["model"]
    if "head.weight" not in state:
        raise CheckpointError(f"{path} holds no 'head.weight': not a classifier checkpoint")
    num_classes = int(state["head.weight"].shape[0])
    try:  # settings no model could take (a block range past the last block, ...)
        cfg = ModelConfig.from_flags(flags, num_classes)  # the architecture as --eval reads it
        # Built on the meta device and materialised uninitialised: the backbone part of this
        # model is never used (the shared backbone is), so it is never initialised nor read.
        with torch.device("meta"):
            model = _build({**flags, **cfg.architecture()}, cfg.transfer_type, cfg.method,
                           num_classes, bool(cfg.use_mean_pooling), architecture)
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from err
    model.to_empty(device="cpu")
    try:  # every trainable tensor of the model must be in the file (no stray keys either)
        load_method(model, dict(ckpt), check_backbone=False)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from err
    method = model.transfer
    method.fold(model)  # APT with --prompt_reparam: the scales into the prompts
    prompts: List[Optional[Tuple[torch.Tensor, torch.Tensor]]] = [None] * len(model.blocks)
    per_head = False
    if method.name == "apt":
        per_head = method.per_head
        k, v = model.prompt_embeddings_k.detach(), model.prompt_embeddings_v.detach()
        for j in range(k.shape[0]):  # (L, [H,] P, hd): block start + j
            prompts[method.start + j] = (k[j].clone(), v[j].clone())
    pool = model.fc_norm if model.fc_norm is not None else model.norm
    head = TaskHead(pool, model.head, mean_pooling=model.fc_norm is not None)
    return _Task(name, path, method.name, num_classes, prompts, per_head, head)
