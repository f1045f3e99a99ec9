"""Exporting a trained checkpoint for deployment (what ``tools/export.py`` runs once its flags
are parsed): the model rebuilt as ``--eval`` builds it (``runs.load_run``), folded for inference,
written as a ``torch.export`` program (.pt2) or an ONNX file, and the written file run once on a
random clip to compare its logits with the eager, unfolded model's.

    from tools.exporting import export
    result = export("OUT/checkpoint-best.pth", "onnx", "model.onnx")
"""
from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from models.config import FinetuneConfig
from models.transfer import folded_for_inference
from runs import load_run
from utils.config import ConfigError
from utils.outputs import make_dirs, writing

logger = logging.getLogger("export")

INPUT_NAME, OUTPUT_NAME = "video", "logits"
# The check's tolerance on the logits, relative to their largest magnitude (float32 kernels
# of the runtime differ from PyTorch's in summation order only).
CHECK_RTOL = 1e-4


class ExportCheckError(RuntimeError):
    """The written file's logits differ from the eager model's; the message names the file."""


# ------------------------------------------------------------------------------------ model
def load_trained_model(path: str, finetune: str = "", unsafe: bool = False
                       ) -> Tuple[torch.nn.Module, FinetuneConfig, Dict[str, Any]]:
    """The trained model of checkpoint (or run folder) ``path`` in eval mode (not folded), as
    ``--eval`` builds it (``runs.load_run``). Returns the model, its settings and the
    checkpoint."""
    run = load_run(path, "cpu", finetune=finetune, unsafe_load=unsafe)
    model, cfg, ckpt, path = run.model, run.config, run.ckpt, run.checkpoint
    # The clip shape is not part of ModelConfig.ARCHITECTURE (--eval takes it from the command
    # line), but the exported input is fixed to it: never take it from a default.
    missing = [f"--{k}" for k in ("num_frames", "input_size") if k not in ckpt["args"]]
    if missing:
        raise ConfigError(f"--resume {path}: its flags ('args') lack {', '.join(missing)}, so "
                          f"the clip shape of the export is unknown")
    return model.eval(), cfg, ckpt


def _fingerprints(model: torch.nn.Module) -> Dict[str, Tuple[float, float]]:
    """(sum, sum of squares) of every parameter, in float64: tells which tensors ``fold``
    rewrote without holding a second copy of the weights."""
    with torch.no_grad():
        return {n: (p.double().sum().item(), p.double().square().sum().item())
                for n, p in model.named_parameters()}


def _names(names: Sequence[str], at_most: int = 4) -> str:
    shown = ", ".join(names[:at_most])
    return shown + (f", ... ({len(names)} in all)" if len(names) > at_most else "")


# ----------------------------------------------------------------------------------- export
def export_torch(model: torch.nn.Module, clip: torch.Tensor, out: str) -> str:
    """``torch.export.export`` then ``torch.export.save`` to ``out`` (a .pt2 archive); returns
    the program's input name (the model's ``forward`` argument: a program's inputs are
    positional, and a wrapper renaming it would also rename every weight)."""
    program = torch.export.export(model, (clip,))
    # torch.export keeps every parameter of the module in the program's state dict, also those
    # the folded graph no longer reads (APT's scales, LoRA's factors); name them, since they
    # are in the file but do no work.
    used = {n.name for n in program.graph.nodes if n.op == "placeholder" and n.users}
    idle = sorted(p for node, p in program.graph_signature.inputs_to_parameters.items()
                  if node not in used)
    if idle:
        logger.info("kept in the program's state dict but unused by its graph (folded): %s",
                    _names(idle))
    torch.export.save(program, out)
    return program.graph_signature.user_inputs[0]


def export_onnx(model: torch.nn.Module, clip: torch.Tensor, out: str, opset: Optional[int]
                ) -> int:
    """``torch.onnx.export`` with the dynamo-based exporter to ``out``; returns the opset.

    The dynamo-based exporter (``dynamo=True``, which needs ``onnxscript``) is torch.onnx's
    supported one: the TorchScript-based exporter (``dynamo=False``) is deprecated, traces the
    Python branches of the forward into constants with warnings and gives a graph of 3-4 times
    as many nodes (528 against 147 for a 4-block APT model), for the same logits.
    """
    # onnxscript is the dynamo exporter's translation library (and brings onnx).
    if importlib.util.find_spec("onnxscript") is None:
        raise ImportError("--format onnx needs the onnx and onnxscript packages (pinned in "
                          "requirements.txt; make install)")
    # The exporter's graph passes log every removed node and merged initializer at INFO.
    for name in ("onnxscript", "onnx_ir"):
        logging.getLogger(name).setLevel(logging.WARNING)
    program = torch.onnx.export(model, (clip,), input_names=[INPUT_NAME],
                                output_names=[OUTPUT_NAME], opset_version=opset, dynamo=True,
                                verbose=False)
    # Weights inside the one file; ONNXProgram.save moves them into OUT.data by itself past the
    # 2 GB protobuf limit (ViT-H and larger).
    program.save(out)
    return int(program.model.opset_imports.get("", opset))


def _write_atomically(out: str, write: Callable[[str], Any]) -> Tuple[List[str], Any]:
    """Call ``write(path)`` with ``path`` in a temporary folder beside ``out`` and under
    ``out``'s name (an ONNX file names its external data file by it), then move what it wrote
    into place, ``out`` last: a crash leaves the previous file, never a partial one.

    Returns:
        The files written (``out`` last) and what ``write`` returned.
    """
    folder = os.path.dirname(os.path.abspath(out))
    make_dirs(folder)
    with writing(out):
        tmp = tempfile.mkdtemp(prefix=".export-", dir=folder)
        try:
            result = write(os.path.join(tmp, os.path.basename(out)))
            names = sorted(os.listdir(tmp), key=lambda n: n == os.path.basename(out))  # main last
            for name in names:
                os.replace(os.path.join(tmp, name), os.path.join(folder, name))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return [os.path.join(folder, n) for n in names], result


# ------------------------------------------------------------------------------------ check
def run_exported(fmt: str, path: str, clip: torch.Tensor) -> torch.Tensor:
    """The logits of the written file on ``clip``: the loaded program, or onnxruntime (CPU)."""
    if fmt == "torch":
        with torch.no_grad():
            return torch.export.load(path).module()(clip)
    import onnxruntime as ort  # lazily: only checking an ONNX export needs the runtime
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: clip.numpy()})[0])


def check_export(fmt: str, path: str, clip: torch.Tensor, expected: torch.Tensor) -> float:
    """Compare the written file's logits with the eager model's; returns the largest difference.

    Raises:
        ExportCheckError: beyond ``CHECK_RTOL`` of the logits' magnitude.
    """
    got = run_exported(fmt, path, clip)
    if got.shape != expected.shape:
        raise ExportCheckError(f"{path} returns logits of shape {tuple(got.shape)}, the model "
                               f"{tuple(expected.shape)}")
    diff = (got.float() - expected).abs().max().item()
    tol = CHECK_RTOL * max(1.0, expected.abs().max().item())
    if not diff <= tol:  # also NaN
        raise ExportCheckError(f"{path}: its logits differ from the eager model's by up to "
                               f"{diff:.3g} (tolerance {tol:.3g}); the file was written but "
                               f"does not compute the model")
    return diff


def export(resume: str, fmt: str, out: str, *, finetune: str = "", batch: int = 1,
           opset: Optional[int] = None, check: bool = True, unsafe_load: bool = False
           ) -> Dict[str, Any]:
    """Export checkpoint (or run folder) ``resume`` to ``out``.

    Args:
        resume: a training checkpoint of run_class_apt.py (or a DeepSpeed checkpoint folder).
        fmt: ``"onnx"`` (torch.onnx, dynamo exporter) or ``"torch"`` (torch.export, .pt2).
        out: the file to write (replaced atomically).
        finetune: the backbone file, when the path the checkpoint records is gone.
        batch: clips per call: the exported input is ``(batch, 3, T, H, W)``.
        opset: the ONNX opset (``fmt="onnx"`` only; 18 or newer; None: torch.onnx's
            default).
        check: run the written file once and compare its logits with the eager model's.
        unsafe_load: allow full unpickling of a checkpoint you trust.

    Returns:
        What was written: ``files``, ``size``, ``input_shape``, ``output_shape``, ``opset``,
        ``folded`` (the parameters the fold rewrote) and ``max_abs_diff`` (None unchecked).

    Raises:
        ExportCheckError: the written file does not compute the model.
    """
    model, cfg, ckpt = load_trained_model(resume, finetune, unsafe_load)
    m = cfg.model
    shape = (batch, model.patch_embed.proj.in_channels, m.num_frames, m.input_size,
             m.input_size)
    clip = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(clip)  # the eager model, unfolded, in eval mode: the reference

    before = _fingerprints(model)
    # Written inside the fold: the exported weights may share memory with the model's, which
    # unfold restores on exit.
    with folded_for_inference(model):
        after = _fingerprints(model)
        folded = [n for n in before if before[n] != after[n]]
        logger.info("%s: %s", model.transfer.name,
                    f"folded for inference into {_names(folded)}" if folded else
                    "nothing to fold (no reparameterisation)")
        if fmt == "onnx":
            # The explicit softmax(q k^T) v path: below opset 23 the exporter decomposes SDPA
            # into these same MatMul/Softmax nodes plus extra scalings (147 against 135 nodes
            # for a 4-block APT model at opset 20), with the same logits.
            model.set_fused_attn(False)
            files, written_opset = _write_atomically(
                out, lambda p: export_onnx(model, clip, p, opset))
            input_name = INPUT_NAME
        else:
            # SDPA stays one op, so PyTorch runs the program on its fused attention kernels.
            files, input_name = _write_atomically(
                out, lambda p: export_torch(model, clip, p))
            written_opset = None

    size = sum(os.path.getsize(f) for f in files)
    kind = f"ONNX opset {written_opset}" if fmt == "onnx" else "torch.export program"
    extra = f" with {_names([os.path.basename(f) for f in files[:-1]])}" if len(files) > 1 else ""
    logger.info("wrote %s (%s, %.2f MB%s): input '%s' %s float32 -> %s %s; %s, "
                "--transfer_type %s, epoch %s", out, kind, size / 2 ** 20, extra,
                input_name, tuple(shape), OUTPUT_NAME, tuple(expected.shape), m.model,
                m.transfer_type, ckpt.get("epoch"))
    result = {"files": files, "size": size, "input_shape": list(shape),
              "output_shape": list(expected.shape), "opset": written_opset, "folded": folded,
              "max_abs_diff": None}
    if check:
        diff = check_export(fmt, out, clip, expected)
        logger.info("check: the written file's logits match the eager, unfolded model's on a "
                    "random clip (max |difference| %.2g, %s)", diff,
                    "onnxruntime CPU" if fmt == "onnx" else "torch.export.load")
        result["max_abs_diff"] = diff
    return result
