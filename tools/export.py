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

The work is ``tools/exporting.py``, imported once the flags are checked: ``--help`` and a refused
flag answer without torch.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import List, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # entry point

logger = logging.getLogger("export")

# The dynamo-based ONNX exporter translates to opset 18 and above; lower ones go through a
# version converter that can fail and then silently keeps 18. 20 is torch.onnx's own default.
MIN_OPSET, DEFAULT_OPSET = 18, 20


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


def flag_errors(args: argparse.Namespace) -> List[str]:
    """What is wrong with the flags themselves (checked before torch is imported)."""
    errors = []
    if args.batch < 1:
        errors.append(f"--batch must be >= 1, got {args.batch}")
    if args.format == "onnx" and args.opset < MIN_OPSET:
        errors.append(f"--opset {args.opset}: the ONNX exporter writes opset {MIN_OPSET} or "
                      f"newer")
    return errors


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry: 0 on success, 2 for a command line or checkpoint that cannot be
    exported (a refused flag exits with argparse's usage error, status 2), 1 when the written
    file failed its check."""
    parser = get_args_parser()
    args = parser.parse_args(argv)
    errors = flag_errors(args)
    if errors:
        parser.error("; ".join(errors))  # exit status 2, before torch is imported
    # After the flags: the model, torch and the exporters (docs/CONVENTIONS.md, "Entry points").
    import utils
    from models import CheckpointError
    from tools.exporting import ExportCheckError, export
    from utils.outputs import OutputWriteError
    utils.setup_logging()
    try:
        export(args.resume, args.format, args.out, finetune=args.finetune, batch=args.batch,
               opset=args.opset, check=not args.no_check, unsafe_load=args.unsafe_load)
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
