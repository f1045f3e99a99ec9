"""Extract video features with any checkpoint (docs/FEATURES.md).

    python tools/extract_features.py --checkpoint OUT/ --videos data/test.csv --output feats/
    python tools/extract_features.py --checkpoint videomae_k400_finetuned.pth \\
        --videos clips/ --format h5 --output feats.h5 --tokens
    torchrun --nproc_per_node 4 tools/extract_features.py --checkpoint ... --videos ...

``--checkpoint``: a run folder or training checkpoint of ``run_class_apt.py``, a released
VideoMAE fine-tuned ``.pth``, a Hugging Face VideoMAE folder, or a pre-trained backbone (any
layout ``--finetune`` reads; then there is no head). The feature is the head's input (mean
token through ``fc_norm``, or the first token through ``norm``, as the model pools), averaged
over the test views (``--test_num_segment`` x ``--test_num_crop``, the checkpoint's unless
given). Videos already written are skipped, so a killed run resumes. The library is
``engine_for_features``; the flags are parsed before torch is imported.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from utils.cli import add_distributed_args  # noqa: E402
from utils.config import DATA_SETS, VIDEO_BACKENDS, RunConfig, from_namespace  # noqa: E402

logger = logging.getLogger("extract_features")

FORMATS = ("npy", "npz", "h5")  # engine_for_features.FORMATS, here without torch
VIEW_FLAGS = ("num_frames", "sampling_rate", "input_size", "short_side_size",
              "test_num_segment", "test_num_crop")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        "tools/extract_features.py", description="Features of videos (the input of the "
        "classifier head, averaged over the test views) from any checkpoint.")
    p.add_argument("--checkpoint", required=True, metavar="PATH",
                   help="run folder, training checkpoint, released VideoMAE .pth, Hugging Face "
                        "VideoMAE folder, or a pre-trained backbone (no head)")
    p.add_argument("--videos", required=True, metavar="LIST_OR_FOLDER",
                   help="a list file ('<path> <label>' lines) or a folder of videos (searched "
                        "recursively)")
    p.add_argument("--data_root", default="", help="prefix of the list's relative paths "
                   "(default: the list file's folder)")
    p.add_argument("--output", required=True, metavar="PATH",
                   help="a folder (--format npy: one <video>.npy per video, mirroring the "
                        "relative paths) or the .npz / .h5 file")
    p.add_argument("--format", default="npy", choices=FORMATS,
                   help="npy (default), npz (one file) or h5 (one HDF5 file)")
    p.add_argument("--tokens", action="store_true",
                   help="also the tokens before pooling (<video>.tokens.npy, key 'tokens')")
    p.add_argument("--per_view", action="store_true",
                   help="one row per test view instead of their mean")
    p.add_argument("--use_cls", action="store_true",
                   help="backbone only: the first token through norm instead of the mean "
                        "token through fc_norm")
    p.add_argument("--finetune", default="", metavar="BACKBONE",
                   help="the backbone of a frozen-backbone run whose recorded file moved")
    g = p.add_argument_group("clip and views (default: the checkpoint's flags)")
    for name in VIEW_FLAGS:
        g.add_argument(f"--{name}", type=int, default=None)
    g.add_argument("--data_set", default=None, choices=DATA_SETS,
                   help="sampling of the data set (SSV2: one frame per segment)")
    g.add_argument("--video_backend", default=None, choices=VIDEO_BACKENDS)
    g = p.add_argument_group("run")
    g.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    g.add_argument("--batch_size", type=int, default=30,
                   help="clips per forward pass (whole videos; default 30)")
    g.add_argument("--num_workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="decoding processes (default: up to 4)")
    g.add_argument("--amp", action="store_true", default=False,
                   help="mixed precision forward passes (features are stored as float32)")
    g.add_argument("--log_every", type=int, default=10, help="progress line every N batches")
    g.add_argument("--unsafe_load", action="store_true", default=False,
                   help="allow full unpickling of a checkpoint you trust")
    add_distributed_args(p)
    return p


def check_args(args: argparse.Namespace) -> None:
    """Refuse flags that cannot work, before torch is imported."""
    for name in VIEW_FLAGS + ("batch_size",):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name} {value}: must be at least 1")
    if args.format != "npy" and os.path.isdir(args.output):
        raise ValueError(f"--output {args.output} is a folder; --format {args.format} "
                         f"writes one file")
    if args.format == "npy" and os.path.isfile(args.output):
        raise ValueError(f"--output {args.output} is a file; --format npy writes a folder")


def run(args: argparse.Namespace) -> int:
    """Extract; returns the exit status (0: every video written, 1: some could not be read)."""
    # The torch layers load once the flags are parsed (docs/CONVENTIONS.md, "Entry points").
    import utils
    from engine_for_features import Output, extract, load_feature_model, read_videos
    utils.setup_logging(rank=int(os.environ.get("RANK", "0")))  # rank 0 logs
    state = utils.init_distributed_mode(from_namespace(RunConfig, args))
    try:
        videos = read_videos(args.videos, args.data_root)
        overrides = {k: getattr(args, k) for k in VIEW_FLAGS + ("data_set", "video_backend")}
        fm = load_feature_model(args.checkpoint, state.device, overrides, args.use_cls,
                                args.finetune, args.unsafe_load)
        logger.info("%s (%s), pooling %s; %d videos from %s", fm.checkpoint, fm.kind,
                    fm.pooling, len(videos.ids), videos.source)
        amp_dtype = utils.amp_dtype_for(state.device, args.amp) if args.amp else None
        out = Output(args.output, args.format, args.tokens, args.per_view)
        summary = extract(fm, videos, out, args.batch_size, args.num_workers, args.log_every,
                          amp_dtype)
    finally:
        utils.destroy_process_group(state)
    if state.rank == 0:
        shown = {k: v for k, v in summary.items() if k != "bad_paths"}
        print(json.dumps(shown), flush=True)  # the command's output, not a log line
    return 1 if summary["bad"] else 0


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry: exit status 2 for a flag, file or checkpoint that cannot be used."""
    args = get_args_parser().parse_args(argv)
    try:
        check_args(args)
    except ValueError as err:
        logger.error("%s", err)
        return 2
    # The error types come with the torch layers: imported after the flags.
    from datasets import ListFileError
    from models import CheckpointError
    from utils.outputs import OutputWriteError
    try:
        return run(args)
    except (ValueError, FileNotFoundError, ListFileError, CheckpointError) as err:
        logger.error("%s: %s", type(err).__name__, err)
        return 2
    except OutputWriteError as err:
        logger.error("%s", err)
        return 2


if __name__ == "__main__":
    sys.exit(main())
