"""The fair comparison protocol: every method tuned with the same budget on val, then tested with
several seeds at its chosen point (``tools/sweep.py`` is its command line; docs/EVALUATION.md,
'Comparing methods fairly').

- A :class:`SweepSpec` (a JSON file, or built in code) names the data, the backbone, the flags
  every run shares, the methods with their grids, the seeds and the rows the report compares.
  Every method's grid has the same number of points (equal tuning budget), else it is refused.
- Stage ``val``: every grid point x every val seed, trained with ``--skip_test`` (the test split
  is not read at all); per method the point with the best mean *final-epoch* val top-1 is
  chosen (ties: the first in grid order).
- Stage ``test``: every seed at each chosen point, with the multi-view test and its per-video
  predictions (``predictions_rank0.json``), plus one ``run_class_apt.py --flops`` per method
  (trainable parameters and GFLOPs, as the demo reports them).
- The report (``utils/sweep_report.py``, from :class:`SweepResults`): mean +- std over seeds, the gap recovered, paired
  bootstrap intervals against the reference method.

Jobs are ``run_class_apt.py`` command lines launched through submitit (``utils/jobs.py``);
nothing here imports the engine or builds a model.

Long on purpose: the protocol's checks, its two stages and the choice between them are one
file, so what is tuned on which split, and what is read when, is seen in one place.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .cli import flags_to_argv
from .config import ConfigError
from .jobs import Job, LaunchConfig, Progress, python_command, run_jobs, script_path
from .logs import read_json_lines
from .outputs import atomic_file, make_dirs

logger = logging.getLogger(__name__)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIN_SEEDS = 3
# Flags the protocol sets itself: a spec that sets them would break the stages' guarantees
# (val never reads test, runs resume, the test is of the last weights chosen on final val).
RESERVED = ("seed", "output_dir", "log_dir", "data_path", "eval_data_path", "model", "finetune",
            "transfer_type", "skip_test", "eval", "resume", "auto_resume", "no_auto_resume",
            "flops", "disable_eval_during_finetuning", "test_best", "model_ema")
SELECTION_RULE = ("per method, the grid point with the highest mean over the val seeds of the "
                  "final-epoch val top-1 (one centre clip per val video; ties: the first point "
                  "in grid order). Final epoch, not best epoch: the test runs on the last "
                  "weights, and the maximum over epochs would be early stopping on val noise")


@dataclass(frozen=True)
class MethodSpec:
    """One method (a row of the report).

    Args:
        name: row label (unique).
        transfer_type: ``--transfer_type``.
        pretrained: start from the spec's backbone (``--finetune``); False: a random one.
        flags: extra flags of this method, flag name (no ``--``) -> value (True: a switch).
        grid: flag name -> values tried on val; the grid is their product, in this order.
    """

    name: str
    transfer_type: str
    pretrained: bool = True
    flags: Mapping[str, Any] = field(default_factory=dict)
    grid: Mapping[str, Sequence[Any]] = field(default_factory=dict)

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "_", self.name.lower()).strip("_")

    def points(self) -> List[Dict[str, Any]]:
        """The grid's points, flag name -> value, in grid order (last axis fastest)."""
        names = list(self.grid)
        return [dict(zip(names, values)) for values in
                itertools.product(*(self.grid[n] for n in names))]


@dataclass(frozen=True)
class SweepSpec:
    """What to compare and how (the protocol file's keys are these fields).

    Args:
        name: a title (e.g. the data set's name).
        data_path: ``--data_path`` (train.csv, val.csv, test.csv).
        model: ``--model``.
        finetune: the pre-trained backbone (``--finetune``) of the methods with ``pretrained``.
        flags: the flags every run shares (``epochs`` required; batch size, frames, sampling,
            input size, test views, workers, optimizer, ...).
        methods: the rows.
        seeds: test-stage seeds (at least ``MIN_SEEDS``).
        val_seeds: val-stage seeds of every grid point.
        bootstrap_resamples: resamples of the paired bootstrap.
        bootstrap_seed: seed of the bootstrap's resampling.
        reference: the method every other is compared with (APT).
        linear: the linear-probing row ('' for none: no gap recovered).
        full: the full fine-tuning row ('' for none).
    """

    name: str
    data_path: str
    model: str
    finetune: str
    flags: Mapping[str, Any]
    methods: Tuple[MethodSpec, ...]
    seeds: Tuple[int, ...] = (0, 1, 2)
    val_seeds: Tuple[int, ...] = (0,)
    bootstrap_resamples: int = 10000
    bootstrap_seed: int = 0
    reference: str = "APT"
    linear: str = "linear probing"
    full: str = "full fine-tuning"

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", tuple(
            m if isinstance(m, MethodSpec) else MethodSpec(**m) for m in self.methods))
        object.__setattr__(self, "seeds", tuple(self.seeds))
        object.__setattr__(self, "val_seeds", tuple(self.val_seeds))
        self.validate()

    def validate(self) -> None:
        """Refuse a protocol that is not a fair comparison, naming the key or method.

        Raises:
            ConfigError: the first problem found.
        """
        names = [m.name for m in self.methods]
        if not names:
            raise ConfigError("protocol: 'methods' is empty")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"protocol: method names must be unique, repeated: {dup}")
        for key, row in (("reference", self.reference), ("linear", self.linear),
                         ("full", self.full)):
            if (row or key == "reference") and row not in names:
                raise ConfigError(f"protocol: {key} {row!r} is not a method ({names})")
        if "epochs" not in self.flags:
            raise ConfigError("protocol: 'flags' must set epochs (the training budget)")
        if len(set(self.seeds)) < MIN_SEEDS or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"protocol: 'seeds' must be at least {MIN_SEEDS} distinct seeds, "
                              f"got {list(self.seeds)}")
        if not self.val_seeds or len(set(self.val_seeds)) != len(self.val_seeds):
            raise ConfigError(f"protocol: 'val_seeds' must be distinct and at least one, got "
                              f"{list(self.val_seeds)}")
        if self.bootstrap_resamples < 1:
            raise ConfigError("protocol: 'bootstrap_resamples' must be >= 1")
        budget = None
        for m in self.methods:
            where = f"protocol: method {m.name!r}"
            for key in [*self.flags, *m.flags, *m.grid]:
                if key.lstrip("-") in RESERVED or key.startswith("-"):
                    raise ConfigError(f"{where}: flag {key!r} is set by the protocol itself "
                                      f"or misspelt (names without '--'; reserved: {RESERVED})")
            if "lr" not in m.grid:
                raise ConfigError(f"{where}: its grid has no 'lr' axis (every method's "
                                  f"learning rate is tuned on val)")
            empty = [k for k, v in m.grid.items() if not v]
            if empty:
                raise ConfigError(f"{where}: grid axes without values: {empty}")
            shared = sorted((set(m.grid) | set(m.flags)) & set(self.flags))
            both = sorted(set(m.grid) & set(m.flags))
            if shared or both:
                raise ConfigError(f"{where}: flags {shared or both} set twice (common flags, "
                                  f"method flags and grid must not overlap)")
            size = len(m.points())
            if budget is None:
                budget = (m.name, size)
            elif size != budget[1]:
                raise ConfigError(f"{where}: its grid has {size} points, {budget[0]!r}'s has "
                                  f"{budget[1]}: every method gets the same tuning budget")

    @property
    def epochs(self) -> int:
        return int(self.flags["epochs"])

    def method(self, name: str) -> MethodSpec:
        return next(m for m in self.methods if m.name == name)

    def to_dict(self) -> Dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base: str = "") -> "SweepSpec":
        """The spec of a protocol file's contents; relative ``data_path``/``finetune`` are
        taken from ``base`` (the current folder when '')."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"protocol: unknown keys {unknown}; known: {sorted(known)}")
        values = dict(data)
        for key in ("data_path", "finetune"):
            if values.get(key):
                values[key] = os.path.abspath(os.path.join(base, values[key]))
        try:
            return cls(**values)
        except TypeError as err:  # a missing key, or a method entry with an unknown key
            raise ConfigError(f"protocol: {err}") from err

    @classmethod
    def from_json(cls, path: str) -> "SweepSpec":
        """Read a protocol file (relative paths in it are taken from the current folder)."""
        with open(path, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as err:
                raise ConfigError(f"{path}: not JSON ({err})") from err
        try:
            return cls.from_dict(data)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from err


# ------------------------------------------------------------------------------------- jobs
def point_label(point: Mapping[str, Any]) -> str:
    """``lr=0.16 prompt_num_tokens=32``."""
    return " ".join(f"{k}={v}" for k, v in point.items())


def run_flags(spec: SweepSpec, method: MethodSpec, point: Mapping[str, Any]) -> Dict[str, Any]:
    """The flags of one run of ``method`` at ``point`` (seed and output folder aside)."""
    flags: Dict[str, Any] = {"model": spec.model, "transfer_type": method.transfer_type,
                             "data_path": spec.data_path}
    if method.pretrained:
        flags["finetune"] = spec.finetune
    return {**flags, **spec.flags, **method.flags, **point}


def _run_dir(out: str, stage: str, method: MethodSpec, point: Mapping[str, Any],
             flags: Mapping[str, Any]) -> str:
    # The hash of every flag: a changed protocol gets new folders, never an old result.
    digest = hashlib.sha1(json.dumps(flags, sort_keys=True, default=str).encode()).hexdigest()
    name = re.sub(r"[^A-Za-z0-9.=_-]+", "_", "_".join(f"{k}{v}" for k, v in point.items()))
    return os.path.join(out, stage, method.slug, f"{name}-{digest[:8]}")


def final_val_top1(run_dir: str, epochs: int) -> Optional[float]:
    """The val top-1 of the last epoch in ``log.txt`` (the newest such record after a resume),
    None while the run has not validated its last epoch."""
    path = os.path.join(run_dir, "log.txt")
    if not os.path.isfile(path):
        return None
    found = [r["val_acc1"] for r in read_json_lines(path)
             if r.get("epoch") == epochs - 1 and "val_acc1" in r]
    return float(found[-1]) if found else None


def final_result(run_dir: str) -> Optional[Dict[str, Any]]:
    """The final test of the last weights in ``log.txt`` and its per-video predictions
    (``predictions_rank0.json``, complete), or None while either is missing."""
    log, preds = os.path.join(run_dir, "log.txt"), os.path.join(run_dir, "predictions_rank0.json")
    if not (os.path.isfile(log) and os.path.isfile(preds)):
        return None
    finals = [r for r in read_json_lines(log) if "Final top-1" in r and r.get("tested") == "last"]
    if not finals:
        return None
    final = finals[-1]
    videos = read_json_lines(preds)
    if len(videos) != final["test_videos"] + final.get("test_bad_videos", 0):
        return None
    return {"top1": float(final["Final top-1"]), "top5": float(final["Final top-5"]),
            "predictions": videos}


def val_jobs(spec: SweepSpec, out: str) -> List[Tuple[MethodSpec, Dict[str, Any], int, Job]]:
    """Stage ``val``: (method, point, seed, job) for every grid point and val seed."""
    found = []
    script = script_path(ROOT, "run_class_apt.py")
    for m in spec.methods:
        for point in m.points():
            flags = run_flags(spec, m, point)
            for seed in spec.val_seeds:
                run_dir = _run_dir(out, "val", m, {**point, "seed": seed}, flags)
                argv = flags_to_argv({**flags, "seed": seed, "output_dir": run_dir,
                                      "log_dir": run_dir, "skip_test": True})
                job = Job(f"{m.name} {point_label(point)} seed {seed}",
                          python_command(script, argv),
                          done=lambda d=run_dir: final_val_top1(d, spec.epochs) is not None)
                found.append((m, point, seed, job))
    return found


def select_points(spec: SweepSpec, out: str) -> Tuple[Dict[str, Dict[str, Any]], List[Dict]]:
    """The chosen point of every method (read from the val runs' ``log.txt`` only) and the
    table of every point's val top-1.

    Raises:
        RuntimeError: a val run has not finished (naming it).
    """
    table: List[Dict[str, Any]] = []
    chosen: Dict[str, Dict[str, Any]] = {}
    for m, point, seed, job in val_jobs(spec, out):
        value = final_val_top1(_val_dir(job), spec.epochs)
        if value is None:
            raise RuntimeError(f"val run {job.name} ({_val_dir(job)}) has no final-epoch val "
                               f"top-1: run the val stage first")
        row = next((r for r in table if r["method"] == m.name and r["point"] == point), None)
        if row is None:
            row = {"method": m.name, "point": point, "val_top1": {}}
            table.append(row)
        row["val_top1"][str(seed)] = value
    for row in table:
        row["mean"] = sum(row["val_top1"].values()) / len(row["val_top1"])
    for m in spec.methods:
        rows = [r for r in table if r["method"] == m.name]
        best = max(rows, key=lambda r: r["mean"])  # max keeps the first of equal ones
        chosen[m.name] = {"point": best["point"], "val_top1_mean": best["mean"]}
    return chosen, table


def _val_dir(job: Job) -> str:
    return job.command[job.command.index("--output_dir") + 1]


def final_jobs(spec: SweepSpec, out: str, chosen: Mapping[str, Mapping[str, Any]]
              ) -> List[Tuple[MethodSpec, int, str, Job]]:
    """Stage ``test``: (method, seed, run folder, job) for every seed at the chosen points."""
    script = script_path(ROOT, "run_class_apt.py")
    found = []
    for m in spec.methods:
        point = chosen[m.name]["point"]
        flags = run_flags(spec, m, point)
        for seed in spec.seeds:
            run_dir = _run_dir(out, "test", m, {**point, "seed": seed}, flags)
            # No per-epoch validation here: the choice is made; the test is what is reported.
            argv = flags_to_argv({**flags, "seed": seed, "output_dir": run_dir,
                                  "log_dir": run_dir, "disable_eval_during_finetuning": True})
            job = Job(f"{m.name} {point_label(point)} seed {seed}", python_command(script, argv),
                      done=lambda d=run_dir: final_result(d) is not None)
            found.append((m, seed, run_dir, job))
    return found


def cost_jobs(spec: SweepSpec, out: str, chosen: Mapping[str, Mapping[str, Any]]
              ) -> List[Tuple[MethodSpec, str, Job]]:
    """``run_class_apt.py --flops`` at each chosen point: (method, result file, job)."""
    script = script_path(ROOT, "run_class_apt.py")
    found = []
    for m in spec.methods:
        flags = run_flags(spec, m, chosen[m.name]["point"])
        path = _run_dir(out, "cost", m, chosen[m.name]["point"], flags) + ".json"

        def store(stdout: str, path: str = path) -> None:
            make_dirs(os.path.dirname(path))
            with atomic_file(path) as f:
                f.write(json.dumps(parse_flops_output(stdout, path)) + "\n")

        found.append((m, path, Job(f"{m.name} --flops", python_command(
            script, flags_to_argv({**flags, "flops": True})), done=lambda p=path: os.path.isfile(p),
            on_result=store)))
    return found


def parse_flops_output(stdout: str, where: str) -> Dict[str, Any]:
    """The JSON line ``run_class_apt.py --flops`` prints (its last line that parses)."""
    for line in reversed(stdout.strip().splitlines()):
        try:
            report = json.loads(line)
        except ValueError:
            continue
        if isinstance(report, dict) and "trainable_params" in report:
            return report
    raise RuntimeError(f"{where}: no JSON line with trainable_params in the --flops output")


# -------------------------------------------------------------------------------------- run
@dataclass
class SweepResults:
    """What the stages produced, for the report (``utils.sweep_report.build_report``).

    Args:
        chosen: method -> ``{"point", "val_top1_mean"}``.
        val_table: every grid point's val top-1 per val seed and mean.
        tests: ``(method, seed)`` -> ``final_result`` of the run (top-1, top-5, predictions).
        costs: method -> the ``--flops`` report at its chosen point.
        ran: jobs run by this call (0: everything was already done).
        launch: where and how they ran (``LaunchConfig`` as a dict).
        seconds: wall time of this call.
    """

    chosen: Dict[str, Dict[str, Any]]
    val_table: List[Dict[str, Any]]
    tests: Dict[Tuple[str, int], Dict[str, Any]]
    costs: Dict[str, Dict[str, Any]]
    ran: int
    launch: Dict[str, Any]
    seconds: float


def run_sweep(spec: SweepSpec, launch: LaunchConfig, out: str, stages: str = "all"
              ) -> Optional[SweepResults]:
    """Run the protocol (what is finished is not run again) and return its results.

    Args:
        spec: the protocol.
        launch: where the jobs run.
        out: the sweep's folder (``val/``, ``test/``, ``cost/``, ``submitit/``, results).
        stages: ``all``, or ``val`` to stop after the choice of the points.

    Returns:
        The results, None for ``stages='val'``.

    Raises:
        RuntimeError: jobs failed after their retries (named); the finished ones are kept.
    """
    if stages not in ("all", "val"):
        raise ValueError(f"stages must be 'all' or 'val', got {stages!r}")
    started = time.time()
    out = os.path.abspath(out)
    make_dirs(out)
    with atomic_file(os.path.join(out, "protocol.json")) as f:
        json.dump(spec.to_dict(), f, indent=2)
    first = val_jobs(spec, out)
    n_test = len(spec.methods) * (len(spec.seeds) + 1)
    progress = Progress(total=len(first) + (n_test if stages == "all" else 0))
    folder = os.path.join(out, "submitit")
    ran, failed = run_jobs([j for *_, j in first], launch, folder, ROOT, progress,
                         later=n_test if stages == "all" else 0, stage="val")
    if failed:
        raise RuntimeError(f"{len(failed)} val jobs failed: {failed}; rerun to retry them")
    chosen, table = select_points(spec, out)
    with atomic_file(os.path.join(out, "selection.json")) as f:
        json.dump({"rule": SELECTION_RULE, "chosen": chosen, "val": table}, f, indent=2)
    for name, c in chosen.items():
        logger.info("chosen on val: %s at %s (mean val top-1 %.2f)", name,
                    point_label(c["point"]), c["val_top1_mean"])
    if stages == "val":
        return None
    tests, costs = final_jobs(spec, out, chosen), cost_jobs(spec, out, chosen)
    ran2, failed = run_jobs([j for *_, j in costs] + [j for *_, j in tests], launch, folder,
                            ROOT, progress, stage="test")
    if failed:
        raise RuntimeError(f"{len(failed)} test jobs failed: {failed}; rerun to retry them")
    cost = {}
    for m, path, _ in costs:
        with open(path, encoding="utf-8") as f:
            cost[m.name] = json.load(f)
    return SweepResults(chosen, table, {(m.name, seed): final_result(d) for m, seed, d, _ in tests},
                        cost, ran + ran2, dataclasses.asdict(launch), time.time() - started)
