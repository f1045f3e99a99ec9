"""Export a trained checkpoint for deployment: a ``torch.export`` program (.pt2) or an ONNX file.

    python tools/export.py --resume OUT/checkpoint-best.pth --format onnx --out model.onnx
    python tools/export.py --resume OUT/checkpoint-last.pth --format torch --out model.pt2

The architecture, the class count and the clip shape (``--num_frames``, ``--input_size``) are
the checkpoint's own flags (its ``args``); the backbone is the file it records (``--finetune``
when that file has moved). The model is exported in eval mode with its reparameterisations folded
(APT's scales multiplied into its prompts, LoRA merged into ``qkv``: ``folded_for_inference``), so
the graph does no per-forward rescaling or low-rank work. The input is one float32 clip batch
of the fixed shape ``(--batch, 3, T, H, W)`` (named ``video`` in the ONNX file; the .pt2 program
takes it as its one positional argument), the output the ``logits`` ``(--batch, classes)``. The
written file is then run once on a random clip and its logits compared with the eager, unfolded
model's.
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import shutil
import sys
import tempfile
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

import utils  # noqa: E402
from models import CheckpointError  # noqa: E402
from models.transfer import folded_for_inference  # noqa: E402
from runs import load_run  # noqa: E402
from models.config import FinetuneConfig  # noqa: E402
from utils.config import ConfigError  # noqa: E402
from utils.outputs import OutputWriteError, make_dirs, writing  # noqa: E402

logger = logging.getLogger("export")

INPUT_NAME, OUTPUT_NAME = "video", "logits"
# The dynamo-based ONNX exporter translates to opset 18 and above; lower ones go through a
# version converter that can fail and then silently keeps 18. 20 is torch.onnx's own default.
MIN_OPSET, DEFAULT_OPSET = 18, 20
# The check's tolerance on the logits, relative to their largest magnitude (float32 kernels
# of the runtime differ from PyTorch's in summation order only).
CHECK_RTOL = 1e-4


class ExportCheckError(RuntimeError):
    """The written file's logits differ from the eager model's; the message names the file."""


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        "tools/export.py", description="Export a checkpoint of run_class_apt.py for deployment "
        "(folded for inference): torch.export (.pt2) or ONNX.")
    parser.add_argument("--resume", required=True, metavar="CKPT",
                        help="a training checkpoint of run_class_apt.py (checkpoint-*.pth, or a "
                             "DeepSpeed checkpoint folder)")
    parser.add_argument("--format", required=True, choices=("onnx", "torch"),
                        help="onnx: an ONNX file (torch.onnx, dynamo exporter); torch: a "
                             "torch.export program (.pt2, torch.export.save)")
    parser.add_argument("--out", required=True, metavar="FILE", help="the file to write")
    parser.add_argument("--finetune", default="", metavar="BACKBONE",
                        help="the backbone file the checkpoint was trained on, when the path it "
                             "records is gone (its sha256 must match the recorded one)")
    parser.add_argument("--batch", default=1, type=int,
                        help="clips per call: the exported input is (batch, 3, T, H, W)")
    parser.add_argument("--opset", default=DEFAULT_OPSET, type=int,
                        help=f"ONNX opset (>= {MIN_OPSET}; --format onnx only)")
    parser.add_argument("--no_check", action="store_true", default=False,
                        help="do not run the written file once to compare its logits with the "
                             "eager model's")
    parser.add_argument("--unsafe_load", action="store_true", default=False,
                        help="allow full unpickling of checkpoints you trust")
    return parser


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


def export_onnx(model: torch.nn.Module, clip: torch.Tensor, out: str, opset: int) -> int:
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


# ------------------------------------------------------------------------------------- main
def export(args: argparse.Namespace) -> Dict[str, Any]:
    """Export as the flags say; returns what was written (``files``, ``input_shape``, ...)."""
    if args.batch < 1:
        raise ConfigError(f"--batch must be >= 1, got {args.batch}")
    if args.format == "onnx" and args.opset < MIN_OPSET:
        raise ConfigError(f"--opset {args.opset}: the ONNX exporter writes opset {MIN_OPSET} "
                          f"or newer")
    model, cfg, ckpt = load_trained_model(args.resume, args.finetune, args.unsafe_load)
    m = cfg.model
    shape = (args.batch, model.patch_embed.proj.in_channels, m.num_frames, m.input_size,
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
        if args.format == "onnx":
            # The explicit softmax(q k^T) v path: below opset 23 the exporter decomposes SDPA
            # into these same MatMul/Softmax nodes plus extra scalings (147 against 135 nodes
            # for a 4-block APT model at opset 20), with the same logits.
            model.set_fused_attn(False)
            files, opset = _write_atomically(
                args.out, lambda p: export_onnx(model, clip, p, args.opset))
            input_name = INPUT_NAME
        else:
            # SDPA stays one op, so PyTorch runs the program on its fused attention kernels.
            files, input_name = _write_atomically(
                args.out, lambda p: export_torch(model, clip, p))
            opset = None

    size = sum(os.path.getsize(f) for f in files)
    kind = f"ONNX opset {opset}" if args.format == "onnx" else "torch.export program"
    extra = f" with {_names([os.path.basename(f) for f in files[:-1]])}" if len(files) > 1 else ""
    logger.info("wrote %s (%s, %.2f MB%s): input '%s' %s float32 -> %s %s; %s, "
                "--transfer_type %s, epoch %s", args.out, kind, size / 2 ** 20, extra,
                input_name, tuple(shape), OUTPUT_NAME, tuple(expected.shape), m.model,
                m.transfer_type, ckpt.get("epoch"))
    result = {"files": files, "size": size, "input_shape": list(shape),
              "output_shape": list(expected.shape), "opset": opset, "folded": folded,
              "max_abs_diff": None}
    if not args.no_check:
        diff = check_export(args.format, args.out, clip, expected)
        logger.info("check: the written file's logits match the eager, unfolded model's on a "
                    "random clip (max |difference| %.2g, %s)", diff,
                    "onnxruntime CPU" if args.format == "onnx" else "torch.export.load")
        result["max_abs_diff"] = diff
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry: 0 on success, 2 for a command line or checkpoint that cannot be
    exported, 1 when the written file failed its check."""
    args = get_args_parser().parse_args(argv)
    utils.setup_logging()
    try:
        export(args)
    except (ValueError, FileNotFoundError, ImportError, CheckpointError) as err:
        logger.error("%s: %s", type(err).__name__, err)
        return 2
    except OutputWriteError as err:  # the message is the whole line: "cannot write FILE: ..."
        logger.error("%s", err)
        return 2
    except ExportCheckError as err:
        logger.error("%s", err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
