"""The end-to-end demo (``make demo``): adapt a frozen pre-trained video ViT with few parameters.

Stages, all on the built-in synthetic data set (classes told apart only by motion):

1. generate a small labelled data set (``tools/make_synthetic.py``);
2. take the committed demo backbone (``assets/demo_backbone``: VideoMAE pre-training of
   ``vit_mini_patch8`` on unlabelled synthetic videos, made by ``make demo-backbone``), or with
   ``--pretrain`` redo that pre-training first;
3. adapt it (``run_class_apt.py``): linear probing, VPT-deep, APT, adapters, LoRA and full
   fine-tuning, plus linear probing of a randomly initialised backbone (what pre-training is
   worth), each with the multi-view test on held-out videos;
4. one table: method, trainable parameters, GFLOPs per clip, top-1, top-5, wall time — printed,
   written as Markdown (``results.md``) and JSON, and plotted (``accuracy_vs_params.png``), with
   the targets of the comparison checked. TensorBoard logs of every stage are in ``tensorboard/``.

Every stage is a subprocess running the command a user would type; the commands are logged.
Hyperparameters were chosen on the ``val`` split (``--select`` reruns that search); the test
split is only read by the final multi-view test of each run.

The stages are ``tools/demo_stages.py``, imported once the flags are parsed (``--help`` answers
without torch).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # entry point


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output_dir", default="demo_output")
    parser.add_argument("--world", default="motion,pairs",
                        help="comma-separated worlds to run (motion, pairs, relations); each writes "
                             "OUTPUT_DIR/<world>/")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes, one epoch, pre-training included (tests)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers per stage")
    parser.add_argument("--pretrain", action="store_true",
                        help="redo the backbone's pre-training instead of using the committed one")
    parser.add_argument("--build_backbone", action="store_true",
                        help="pre-train and write assets/demo_backbone (`make demo-backbone`)")
    parser.add_argument("--pretrain_epochs", type=int, default=None, help="override the stage's epochs")
    parser.add_argument("--finetune_epochs", type=int, default=None, help="override the stage's epochs")
    parser.add_argument("--methods", default="",
                        help="comma-separated row names to run (default: each world's rows)")
    parser.add_argument("--select", default="",
                        help="'METHOD=LR,LR,...;METHOD=...': run each learning rate and report "
                             "the val top-1 of each (how the demo's values were chosen; first "
                             "world of --world)")
    parser.add_argument("--record", action="store_true",
                        help="also write the tables to benchmarks/results/demo.md (for BENCHMARKS.md)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    # The stages (torch, the models, matplotlib) load once the flags are parsed, so --help costs
    # no torch import (docs/CONVENTIONS.md, "Entry points").
    from tools.demo_stages import DemoFlagError, run_demo
    try:
        return run_demo(args)
    except DemoFlagError as err:
        parser.error(str(err))
    return 2  # not reached: parser.error exits with status 2


if __name__ == "__main__":
    sys.exit(main())
