"""Write the synthetic action data set (:mod:`datasets.synthetic`) as video files and lists.

Output (paths in the lists are relative to the output folder, which ``build_dataset`` resolves
when ``--data_root`` is empty)::

    OUT/train.csv, OUT/val.csv, OUT/test.csv   lines "videos/<class>/<split>_<k>.mp4 <label>"
    OUT/classes.txt                            "<label> <class name>" per line
    OUT/videos/<class>/<split>_<k>.mp4         h264, yuv420p

Usage::

    python tools/make_synthetic.py --out data/synthetic --num_classes 8 --videos_per_class 30 \
        --num_frames 32 --size 64 --seed 0
    python tools/make_synthetic.py --world pairs --out data/pairs \
        --videos_per_class 540 --splits train:450,val:30,test:60
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # entry point

from datasets.synthetic import WORLDS, make_synthetic_dataset  # noqa: E402


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder (use it as --data_path)")
    p.add_argument("--world", default="motion", choices=sorted(WORLDS),
                   help="motion: kinds of motion; pairs: how the motions of two objects relate "
                        "(Something-Something-like, the demo's headroom world); relations: how "
                        "two objects move relative to each other")
    p.add_argument("--num_classes", type=int, default=8,
                   help=", ".join(f"{w}: at most {len(c)}" for w, (c, _) in WORLDS.items()))
    p.add_argument("--videos_per_class", type=int, default=20)
    p.add_argument("--num_frames", type=int, default=32)
    p.add_argument("--size", type=int, nargs="+", default=[64], help="SIZE or HEIGHT WIDTH")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--splits", default="train:0.6,val:0.2,test:0.2",
                   help="comma-separated name:share pairs; shares are fractions or counts, "
                        "normalised over their sum (train:300,val:30,test:60)")
    p.add_argument("--fps", type=int, default=25)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--distractors", type=int, default=0,
                   help="shapes per video besides the actors (motion: dimmer shapes doing random "
                        "motions, a harder variant; pairs and relations: static shapes)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        splits = {k: float(v) for k, v in (kv.split(":") for kv in a.splits.split(","))}
    except ValueError:
        p.error(f"--splits {a.splits!r}: expected name:fraction pairs like train:0.6,val:0.2")
    size = a.size[0] if len(a.size) == 1 else (a.size[0], a.size[1])
    make_synthetic_dataset(a.out, a.num_classes, a.videos_per_class, a.num_frames, size,
                           a.seed, splits, a.fps, a.workers, a.distractors, a.world)
    return 0


if __name__ == "__main__":
    sys.exit(main())
