"""Compare fine-tuning runs of ``run_class_apt.py`` in one table, and class by class.

    python tools/compare_runs.py out/ucf101_*                 # a glob expanded by the shell
    python tools/compare_runs.py 'out/*' --csv runs.csv --plot runs.png
    python tools/compare_runs.py out/apt out/vpt --no_flops
    python tools/compare_runs.py out/apt out/vpt --per_class --diff out/vpt out/apt

Each RUN_DIR is an ``--output_dir`` of ``run_class_apt.py``; one row each (``tools/run_table.py``):
method and settings, data set, backbone, trainable parameters, GFLOPs per view, test views,
final top-1/top-5 and mean-class top-1, best validation top-1 and its epoch, epochs done of
planned, training time and a status. Rows are sorted by data set, then by top-1 (highest first).
Runs whose flags are equal but for ``--seed`` (and their output folders) are also summarised as
one row each: mean ± sample std over the seeds.

``--per_class`` adds a table of per-class top-1 with a column per run (per seed group: mean ±
std), read from each run's ``test_confusion.csv`` or, for runs made before it was written, its
predictions (``tools/class_table.py``); ``--diff A B`` lists the classes on which B and A differ
most. Markdown goes to stdout; ``--csv`` and ``--plot`` write files.

The flags are parsed before torch is imported (docs/CONVENTIONS.md, "Entry points: flags first,
torch after"), so ``--help`` answers at once.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

logger = logging.getLogger("compare_runs")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="One table comparing fine-tuning runs of run_class_apt.py (Markdown on "
                    "stdout; CSV and a plot on request), and their per-class top-1.")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="--output_dir of a run; quoted globs ('out/*') are expanded")
    parser.add_argument("--csv", default="", metavar="FILE", help="also write the table as CSV")
    parser.add_argument("--plot", default="", metavar="FILE",
                        help="plot top-1 against trainable parameters (png, pdf, svg)")
    parser.add_argument("--no_flops", action="store_true",
                        help="do not count GFLOPs (the column stays empty)")
    parser.add_argument("--per_class", action="store_true",
                        help="also print per-class top-1 side by side: a column per run, per "
                             "seed group mean ± std")
    parser.add_argument("--diff", nargs=2, default=None, metavar=("A", "B"),
                        help="also list the classes whose top-1 differs most between two of "
                             "the RUN_DIRs (B - A; a run in a seed group stands for its group)")
    parser.add_argument("--diff_top", type=int, default=10, metavar="N",
                        help="classes listed by --diff (default: 10)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry: prints the tables; returns the exit status (2: bad RUN_DIR or
    --diff run)."""
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.diff_top < 1:
        parser.error(f"--diff_top {args.diff_top}: at least 1")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # The table's code (torch, the models, the test's merge) loads once the flags are parsed,
    # so --help and a refused flag cost no torch import (docs/CONVENTIONS.md, "Entry points").
    from tools import class_table, run_table
    classes = class_table.RunClasses()
    try:
        rows = run_table.collect(run_table.expand_run_dirs(args.run_dirs),
                                 count_flops=not args.no_flops, classes=classes)
    except run_table.RunDirError as err:
        logger.error("%s", err)
        return 2
    if not rows:
        logger.error("none of %s is a run folder (no args.json)", ", ".join(args.run_dirs))
        return 2
    sys.stdout.write(run_table.markdown(rows, count_flops=not args.no_flops))  # the output
    groups = run_table.seed_groups(rows)
    if groups:
        sys.stdout.write("\nSeeds of the same run:\n\n" + run_table.seeds_markdown(groups))
    if args.per_class or args.diff:
        loaded = class_table.loaded_classes(rows, classes, run_table.read_args)
        cols = class_table.columns(rows, groups, loaded)
        if args.per_class:
            for same in class_table.same_classes(cols):
                sys.stdout.write("\nPer-class top-1 (%):\n\n" + class_table.per_class_markdown(same))
        if args.diff:
            pair = [class_table.column_of(cols, d) for d in args.diff]
            for run_dir, col in zip(args.diff, pair):
                if col is None:
                    logger.error("--diff %s: not a tested RUN_DIR with per-class results", run_dir)
                    return 2
            if len(class_table.same_classes(pair)) != 1:
                logger.error("--diff %s %s: the runs' classes or test videos differ", *args.diff)
                return 2
            sys.stdout.write(f"\nLargest per-class differences (top {args.diff_top}):\n\n"
                             + class_table.diff_markdown(pair[0], pair[1], args.diff_top))
    if args.csv:
        run_table.write_csv(rows, args.csv)
        logger.info("wrote %s", args.csv)
    if args.plot:
        if not run_table.plot(rows, args.plot):
            logger.error("--plot %s: no run has a final test top-1 to plot", args.plot)
            return 1
        logger.info("wrote %s", args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
