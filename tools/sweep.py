"""Compare methods the way a paper should: the same tuning budget for every method on val, then
several seeds at each chosen point on test, with mean ± std, the gap recovered and paired
bootstrap intervals (docs/EVALUATION.md, 'Comparing methods fairly').

    python tools/sweep.py --protocol protocol.json --output_dir sweeps/motion
    python tools/sweep.py --protocol protocol.json --output_dir sweeps/motion --jobs 2 --threads 1
    python tools/sweep.py --protocol protocol.json --output_dir sweeps/motion \\
        --cluster slurm --partition gpu --gpus_per_node 1 --threads 8 --jobs 16 --timeout_min 240
    python tools/sweep.py --world motion,pairs --output_dir compare_output   # make compare

``--world`` runs the built-in protocol of the demo worlds (``tools/worlds.py``:
``protocol_spec``): it writes each world's labelled videos (once) and sweeps it into
``OUTPUT_DIR/<world>/``.

Every job is a ``run_class_apt.py`` command line, launched through submitit; rerunning the same
command runs only the jobs without a complete result (a killed job resumes where it stopped).
Writes ``results.md``, ``results.json``, ``results.csv`` and ``accuracy_vs_params.png`` to the
output folder, and prints the table.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Any, List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # entry point

# The flags need only the launcher's settings (no torch); the sweep's modules (utils.sweep,
# utils.sweep_report, tools.worlds: torch through their helpers) load once the flags are parsed
# (docs/CONVENTIONS.md, "Entry points").
from tools.plots import protocol_plot  # noqa: E402  (matplotlib only when it draws)
from utils.config import ConfigError  # noqa: E402
from utils.jobs import CLUSTERS, LaunchConfig  # noqa: E402

if TYPE_CHECKING:
    from utils.sweep import SweepSpec

logger = logging.getLogger("sweep")
L = LaunchConfig


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--protocol", metavar="FILE",
                       help="the protocol (JSON: data, backbone, flags, methods and grids, "
                            "seeds; the keys of utils.sweep.SweepSpec)")
    which.add_argument("--world", metavar="NAME[,NAME]",
                       help="the built-in protocol of demo worlds (motion, pairs, relations), each "
                            "into OUTPUT_DIR/<world>/ (`make compare`)")
    parser.add_argument("--output_dir", required=True, help="the sweep's folder (resumable)")
    parser.add_argument("--stage", default="all", choices=["all", "val"],
                        help="'val': stop once the points are chosen on val")
    g = parser.add_argument_group("launching (utils.jobs.LaunchConfig)")
    g.add_argument("--cluster", default=L.cluster, choices=list(CLUSTERS),
                   help="local: this machine; slurm: one job array per stage")
    g.add_argument("--jobs", type=int, default=L.jobs, help="jobs running at once")
    g.add_argument("--threads", type=int, default=L.threads,
                   help="compute threads per job (OMP_NUM_THREADS; SLURM --cpus-per-task)")
    g.add_argument("--timeout_min", type=int, default=L.timeout_min,
                   help="wall-clock limit of one job (SLURM --time)")
    g.add_argument("--partition", default=L.partition, help="SLURM partition")
    g.add_argument("--gpus_per_node", type=int, default=L.gpus_per_node, help="GPUs per job")
    g.add_argument("--slurm_extra", default="{}", metavar="JSON",
                   help='more #SBATCH settings, e.g. \'{"account": "x", "qos": "y"}\'')
    g.add_argument("--retries", type=int, default=L.retries,
                   help="submissions again of a job that ended without its result")
    return parser


def stop_on_signal(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def world_specs(names: str, out: str) -> List[Tuple[SweepSpec, str]]:
    """``--world``: each world's protocol and folder; its labelled videos written once."""
    # After the flags (entry point): the worlds' data and protocols.
    from tools.worlds import committed_backbone, make_data, protocol_spec, world_config
    backbone = committed_backbone()
    specs = []
    for name in (n.strip() for n in names.split(",") if n.strip()):
        cfg = world_config(name)
        folder = os.path.join(out, name)
        data = os.path.join(folder, "data")
        # Written once: rewriting would give the same videos new mtimes, and so a new frame
        # cache (the cache's key holds every file's size and mtime).
        if not os.path.isfile(os.path.join(data, "classes.txt")):
            logger.info("%s world: writing its labelled videos to %s", name, data)
            make_data(cfg, data, cfg.videos_per_class, cfg.data_seed, dict(cfg.splits))
        specs.append((protocol_spec(cfg, data, backbone, os.path.join(data, "frame_cache")),
                      folder))
    return specs


def sweep_one(spec: SweepSpec, launch: LaunchConfig, out: str, stage: str) -> Optional[str]:
    """One protocol into ``out``; returns its Markdown table (None after ``--stage val``)."""
    # After the flags (entry point): the sweep and its report.
    from utils.sweep import run_sweep
    from utils.sweep_report import build_report, write_report
    results = run_sweep(spec, launch, out, stage)
    if results is None:
        logger.info("val stage done: %s", os.path.join(out, "selection.json"))
        return None
    report = build_report(spec, results)
    paths = write_report(report, out)
    plot = os.path.join(out, "accuracy_vs_params.png")
    nb_classes = spec.flags.get("nb_classes")
    protocol_plot(report["methods"], plot, f"{spec.name}: test top-1 against trainable "
                  f"parameters", chance=100.0 / nb_classes if nb_classes else None)
    logger.info("wrote %s, %s, %s, %s", paths["md"], paths["json"], paths["csv"], plot)
    with open(paths["md"], encoding="utf-8") as f:
        return f.read()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry; exit status 2 for a protocol or flag that cannot run."""
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    # After the flags (entry point): the protocol's settings and the atomic writes.
    from utils.outputs import atomic_file
    from utils.sweep import SweepSpec
    try:
        if args.protocol:
            specs = [(SweepSpec.from_json(args.protocol), args.output_dir)]
        else:
            specs = world_specs(args.world, args.output_dir)
        launch = LaunchConfig(cluster=args.cluster, jobs=args.jobs, threads=args.threads,
                              timeout_min=args.timeout_min, partition=args.partition,
                              gpus_per_node=args.gpus_per_node,
                              slurm_extra=json.loads(args.slurm_extra), retries=args.retries,
                              poll_s=1.0 if args.cluster == "local" else 30.0)
    except (ValueError, OSError) as err:  # ConfigError is a ValueError; JSON errors too
        logger.error("%s: %s", type(err).__name__, err)
        return 2
    # A kill (SIGTERM) stops like Ctrl-C: the running jobs are cancelled, and a rerun resumes.
    signal.signal(signal.SIGTERM, stop_on_signal)
    started = time.time()
    tables = []
    for spec, out in specs:
        try:
            table = sweep_one(spec, launch, out, args.stage)
        except (ConfigError, RuntimeError) as err:
            logger.error("%s", err)
            return 1
        except KeyboardInterrupt:
            logger.error("stopped; its running jobs were cancelled: rerun the same command to "
                         "resume")
            return 130
        if table is not None:
            tables.append(table)  # it starts with its "### <name>" heading
    if tables:
        text = "\n".join(tables)
        if len(specs) > 1:
            text += f"\nwhole comparison {(time.time() - started) / 60:.0f} minutes\n"
            with atomic_file(os.path.join(args.output_dir, "results.md")) as f:
                f.write(text)
        sys.stdout.write(text)  # the command's output
    return 0


if __name__ == "__main__":
    sys.exit(main())
