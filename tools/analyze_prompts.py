"""What do the prompts of a trained APT or VPT run do? Attention shares, norms, ablation, rollout.

Usage::

    python tools/analyze_prompts.py --resume OUT/checkpoint-last.pth --list DATA/test.csv \\
        --output_dir OUT/prompts
    python tools/analyze_prompts.py --resume OUT VIDEO [VIDEO ...] --output_dir OUT/prompts

The run is rebuilt with ``runs.load_run`` (a run folder: its best checkpoint, else its newest);
each video is decoded into the run's test views. Written to ``--output_dir``:
``attention_share.csv`` and ``.png`` (block x head share of attention on the prompts),
``prompt_norms.csv``, ``ablation.csv`` (accuracy with the prompts of one block, and of all
blocks, removed; needs ``--list`` for the labels), ``summary.json``, and an attention-rollout
heatmap per frame and a GIF for the first ``--rollout_videos`` videos (``rollout/``). What each
number is: ``prompt_analysis.py`` (docs/METHODS.md, 'What the prompts do').
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # entry point

from utils.config import VIDEO_BACKENDS, ConfigError  # noqa: E402

logger = logging.getLogger("analyze_prompts")

VIEW_FLAGS = ("test_num_segment", "test_num_crop", "video_backend")


def get_args_parser() -> argparse.ArgumentParser:
    """The flags of ``tools/analyze_prompts.py``."""
    p = argparse.ArgumentParser(
        "tools/analyze_prompts.py", description="Attention on the prompts per block and head, "
        "prompt norms, per-block prompt ablation and attention rollout of an APT or VPT run.")
    p.add_argument("videos", nargs="*", metavar="VIDEO",
                   help="video files (unlabelled: the ablation then reports agreement with the "
                        "unablated predictions only); or give --list")
    p.add_argument("--list", default="", metavar="FILE",
                   help="a list file of '<path> <label>' lines (as test.csv): labelled videos")
    p.add_argument("--data_root", default="",
                   help="prefix of the list file's relative paths (default: its folder)")
    p.add_argument("--resume", required=True, metavar="CKPT",
                   help="the run: checkpoint-*.pth, a DeepSpeed checkpoint-*/ folder, or its "
                        "--output_dir (its best checkpoint, else its newest)")
    p.add_argument("--output_dir", required=True, help="where the tables and figures go")
    p.add_argument("--finetune", default="", metavar="BACKBONE",
                   help="the backbone the run was trained on, when the file it recorded is gone")
    p.add_argument("--max_videos", type=int, default=0,
                   help="analyse the first N videos only (default 0: all)")
    p.add_argument("--rollout_videos", type=int, default=4,
                   help="attention rollout images and GIF for the first N videos (default 4)")
    p.add_argument("--rollout_view", type=int, default=None,
                   help="which test view (segment-major) the rollout shows (default: the "
                        "middle crop of the first segment)")
    g = p.add_argument_group("views (default: the run's flags)")
    g.add_argument("--test_num_segment", type=int, default=None)
    g.add_argument("--test_num_crop", type=int, default=None)
    g.add_argument("--video_backend", default=None, choices=VIDEO_BACKENDS)
    g = p.add_argument_group("run")
    g.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    g.add_argument("--batch_size", type=int, default=30,
                   help="clips per forward pass (default 30; every video's views in one)")
    g.add_argument("--num_workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="decoding processes (default: up to 4)")
    g.add_argument("--log_every", type=int, default=10, help="progress line every N batches")
    g.add_argument("--unsafe_load", action="store_true",
                   help="allow full unpickling of a checkpoint you trust")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Refuse flags that cannot work before anything is read (the message names the flag)."""
    if bool(args.list) == bool(args.videos):
        raise ConfigError("give either --list FILE (labelled videos) or VIDEO paths")
    for name in ("max_videos", "rollout_videos"):
        if getattr(args, name) < 0:
            raise ConfigError(f"--{name} must be >= 0, got {getattr(args, name)}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch_size must be >= 1, got {args.batch_size}")


def format_tables(summary: Dict[str, Any]) -> str:
    """The per-block attention shares and the ablation as text tables."""
    lines = ["block  prompts  share on prompts (mean over heads, min-max)  uniform"]
    for r in summary["attention_share_per_block"]:
        lines.append(f"{r['block']:>5}  {r['prompts']:>7}  {r['prompt_share']:>17.3f} "
                     f"({r['min_head']:.3f}-{r['max_head']:.3f})  {r['uniform_share']:>16.3f}")
    lines += ["", "prompts removed   top-1 (%)  agrees (%)  p(true)  change of p(true)"]
    for r in summary["ablation"]:
        top1 = "-" if r["top1"] is None else f"{r['top1']:.2f}"
        prob = "-" if r["true_prob"] is None else f"{r['true_prob']:.3f}"
        change = "-" if r["true_prob_change"] is None else f"{r['true_prob_change']:+.3f}"
        lines.append(f"{r['condition']:<16}  {top1:>9}  {r['agreement']:>10.2f}  {prob:>7}  "
                     f"{change:>17}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Analyse the run on the videos of the parsed command line; returns the exit status."""
    check_args(args)
    # The torch layers, once the flags are checked (see main).
    import torch
    import prompt_analysis
    import utils
    from datasets import VideoRecord, parse_list_file
    from runs import load_run

    device = torch.device(args.device or utils.default_device_name())
    loaded = load_run(args.resume, device, overrides={k: getattr(args, k) for k in VIEW_FLAGS},
                      finetune=args.finetune, unsafe_load=args.unsafe_load)
    cfg = loaded.config
    if args.list:
        records: List[Any] = parse_list_file(args.list, cfg.model.num_classes, args.data_root)
        list_name = args.list
    else:
        records = [VideoRecord(path=v, label=0, line=i) for i, v in enumerate(args.videos, 1)]
        list_name = "analyze_prompts.py inputs"
    if args.max_videos:
        records = records[:args.max_videos]
    view = cfg.data.test_num_crop // 2 if args.rollout_view is None else args.rollout_view
    logger.info("%d videos, %d views each (%d segments x %d crops); rollout of view %d of the "
                "first %d", len(records), cfg.data.test_views, cfg.data.test_num_segment,
                cfg.data.test_num_crop, view, min(args.rollout_videos, len(records)))
    loader = prompt_analysis.test_loader(records, cfg.data, list_name, args.batch_size,
                                         args.num_workers)
    analysis = prompt_analysis.analyze(loaded.model.eval(), loader, device, bool(args.list),
                                       args.rollout_videos, view, args.log_every)
    meta = {"checkpoint": loaded.checkpoint, "backbone": loaded.backbone_path,
            "model": cfg.model.model, "list": args.list or None,
            "command": "python tools/analyze_prompts.py " + " ".join(sys.argv[1:])}
    written = prompt_analysis.write_outputs(analysis, args.output_dir, meta)
    summary = {"attention_share_per_block": prompt_analysis.block_summary(analysis),
               "ablation": prompt_analysis.ablation_rows(analysis)}
    print(format_tables(summary), flush=True)  # the command's output, not a log line
    if analysis.bad_videos:
        print(f"{len(analysis.bad_videos)} of {len(records)} videos could not be read and are "
              f"left out: {', '.join(analysis.bad_videos)}", flush=True)
    logger.info("wrote %d files to %s", len(written), args.output_dir)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry: the exit status (2: a flag, file or checkpoint that cannot be used,
    with a message naming it)."""
    parser = get_args_parser()
    args = parser.parse_args(argv)
    try:
        check_args(args)
    except ConfigError as err:
        parser.error(str(err))  # exit status 2, before any torch import
    # The torch layers load once the flags are checked, so --help and a refused flag cost no
    # torch import (docs/CONVENTIONS.md, "Entry points").
    import utils
    from models import CheckpointError
    from utils.outputs import OutputWriteError
    utils.setup_logging()
    try:
        return run(args)
    except (ValueError, FileNotFoundError, CheckpointError) as err:  # ConfigError, ListFileError
        logger.error("%s: %s", type(err).__name__, err)
        return 2
    except OutputWriteError as err:  # the message is the whole line: "cannot write FILE: ..."
        logger.error("%s", err)
        return 2


if __name__ == "__main__":
    sys.exit(main())
