"""The fair comparison protocol (utils/sweep.py, utils/jobs.py, utils/sweep_report.py,
tools/sweep.py): the protocol's checks, selection on final-epoch val only, a real tiny sweep on
this machine through submitit (the val stage runs without test.csv; a rerun does no work; a
killed job is rerun and resumes), and the SLURM job array it would submit."""
import json
import os
import pickle
import shutil

import pytest

import run_class_apt
from tests.engine_helpers import parse, tiny_argv
from utils.config import ConfigError
from utils.jobs import LaunchConfig, make_executor, submit
from utils.logs import append_json_line
from utils.sweep import (MethodSpec, SweepSpec, final_val_top1, run_sweep, select_points,
                         final_jobs, val_jobs)
from utils.sweep_report import build_report, write_report

# The tiny run of tests/engine_helpers.py, less what the protocol sets itself.
OWN = ("model", "transfer_type", "data_path", "output_dir", "log_dir", "seed", "lr",
       "prompt_num_tokens", "prompt_dropout", "prompt_reparam")


def common_flags():
    argv = tiny_argv("D", "O")
    flags = {}
    for i, token in enumerate(argv):
        if token.startswith("--"):
            value = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else True
            flags[token[2:]] = value
    return {k: v for k, v in flags.items() if k not in OWN}


def make_spec(data, backbone, **overrides):
    values = dict(
        name="tiny", data_path=data, model="vit_micro_patch16", finetune=backbone,
        flags=common_flags(),
        methods=[MethodSpec("linear probing", "linear", grid={"lr": [0.01, 0.05]}),
                 MethodSpec("APT", "apt", flags={"prompt_reparam": True},
                            grid={"lr": [0.05], "prompt_num_tokens": [1, 2]})],
        seeds=(0, 1, 2), val_seeds=(0,), bootstrap_resamples=200, linear="", full="")
    values.update(overrides)
    return SweepSpec(**values)


# ------------------------------------------------------------------------------- the spec
def test_the_protocol_refuses_what_is_not_a_fair_comparison():
    spec = make_spec("D", "B")
    assert [m.points() for m in spec.methods][1] == [{"lr": 0.05, "prompt_num_tokens": 1},
                                                     {"lr": 0.05, "prompt_num_tokens": 2}]
    lora = MethodSpec("LoRA", "lora", grid={"lr": [0.1, 0.2], "lora_rank": [4, 8]})
    with pytest.raises(ConfigError, match="method 'LoRA': its grid has 4 points, "
                                          "'linear probing''s has 2"):
        make_spec("D", "B", methods=[*make_spec("D", "B").methods, lora])
    with pytest.raises(ConfigError, match="'adapter': its grid has no 'lr' axis"):
        make_spec("D", "B", methods=[MethodSpec("APT", "apt", grid={"lr": [1]}),
                                     MethodSpec("adapter", "adapter", grid={"adapter_dim": [8]})])
    with pytest.raises(ConfigError, match="flag 'seed' is set by the protocol"):
        make_spec("D", "B", flags={**common_flags(), "seed": 3})
    with pytest.raises(ConfigError, match="at least 3 distinct seeds"):
        make_spec("D", "B", seeds=(0, 1))
    with pytest.raises(ConfigError, match="reference 'APT' is not a method"):
        make_spec("D", "B", methods=[MethodSpec("linear probing", "linear", grid={"lr": [1]})])
    with pytest.raises(ConfigError, match="must set epochs"):
        make_spec("D", "B", flags={"nb_classes": 3})
    with pytest.raises(ConfigError, match="unknown keys \\['sedes'\\]"):
        SweepSpec.from_dict({**make_spec("D", "B").to_dict(), "sedes": [1, 2, 3]})
    # A protocol file round-trips, relative paths taken from the current folder.
    again = SweepSpec.from_dict({**spec.to_dict(), "data_path": "rel/data"})
    assert again.data_path == os.path.abspath("rel/data") and again.methods == spec.methods


def test_selection_reads_the_final_epoch_val_of_each_point(tmp_path):
    """Chosen: the best mean over val seeds of the *final-epoch* val top-1 (a point whose best
    epoch is higher but whose last epoch is lower is not chosen); ties go to the first point."""
    spec = make_spec("D", "B", val_seeds=(0, 1), flags={**common_flags(), "epochs": 2})
    values = {  # (method, point index, seed): (epoch 0 val, epoch 1 val)
        ("linear probing", 0, 0): (90, 50), ("linear probing", 0, 1): (90, 50),
        ("linear probing", 1, 0): (10, 60), ("linear probing", 1, 1): (10, 40),  # mean 50: tie
        ("APT", 0, 0): (20, 30), ("APT", 0, 1): (20, 50),  # mean 40
        ("APT", 1, 0): (20, 70), ("APT", 1, 1): (20, 20),  # mean 45
    }
    for m, point, seed, job in val_jobs(spec, str(tmp_path)):
        run_dir = job.command[job.command.index("--output_dir") + 1]
        assert "--skip_test" in job.command
        assert final_val_top1(run_dir, 2) is None and not job.done()
        os.makedirs(run_dir)
        for epoch, v in enumerate(values[(m.name, m.points().index(point), seed)]):
            append_json_line(os.path.join(run_dir, "log.txt"), {"epoch": epoch, "val_acc1": v})
        assert job.done()
    chosen, table = select_points(spec, str(tmp_path))
    assert chosen["linear probing"] == {"point": {"lr": 0.01}, "val_top1_mean": 50.0}
    assert chosen["APT"] == {"point": {"lr": 0.05, "prompt_num_tokens": 2}, "val_top1_mean": 45.0}
    assert len(table) == 4 and table[1]["val_top1"] == {"0": 60.0, "1": 40.0}
    # The test stage runs every seed at the chosen point, validating nothing.
    tests = final_jobs(spec, str(tmp_path), chosen)
    assert [(m.name, seed) for m, seed, _, _ in tests] == [
        ("linear probing", 0), ("linear probing", 1), ("linear probing", 2),
        ("APT", 0), ("APT", 1), ("APT", 2)]
    command = tests[3][3].command
    assert command[command.index("--prompt_num_tokens") + 1] == "2"
    assert "--disable_eval_during_finetuning" in command and "--skip_test" not in command


# ----------------------------------------------------------------------- a real tiny sweep
def test_tiny_sweep_runs_resumes_and_never_reads_test_in_the_val_stage(tmp_path, data,
                                                                        backbone):
    local = str(tmp_path / "data")
    shutil.copytree(data, local)
    spec = make_spec(local, backbone)
    out = str(tmp_path / "sweep")
    launch = LaunchConfig(jobs=2, threads=1, poll_s=0.2, retries=0)

    # Stage val with test.csv gone: any read of the test split would fail the runs.
    os.rename(os.path.join(local, "test.csv"), os.path.join(local, "test.hidden"))
    assert run_sweep(spec, launch, out, stages="val") is None
    for *_, job in val_jobs(spec, out):
        run_dir = job.command[job.command.index("--output_dir") + 1]
        assert job.done() and not os.path.exists(os.path.join(run_dir, "predictions_rank0.json"))
    os.rename(os.path.join(local, "test.hidden"), os.path.join(local, "test.csv"))

    results = run_sweep(spec, launch, out)
    assert results.ran == 2 * 3 + 2  # the test runs and the --flops of each method; val done
    report = build_report(spec, results)
    rows = {r["method"]: r for r in report["methods"]}
    assert rows["APT"]["diff_to_reference"] is None
    lin = rows["linear probing"]
    assert lin["top1_mean"] == pytest.approx(sum(lin["top1"]) / 3)
    assert lin["trainable_params"] < rows["APT"]["trainable_params"]
    assert lin["diff_low"] <= lin["diff_to_reference"] <= lin["diff_high"]
    assert report["test_videos"] == 9 and lin["gap_recovered"] is None
    paths = write_report(report, out)
    with open(paths["csv"]) as f:
        assert len(f.read().strip().splitlines()) == 3
    with open(paths["json"]) as f:
        assert json.load(f)["methods"][1]["method"] == "APT"

    # A rerun does no work.
    assert run_sweep(spec, launch, out).ran == 0

    # A job killed during its final test (log.txt without the final line, no predictions) is
    # the only one run again, and it resumes from its checkpoint instead of training anew.
    killed = final_jobs(spec, out, results.chosen)[4][2]
    log = os.path.join(killed, "log.txt")
    with open(log) as f:
        kept = [line for line in f if "Final top-1" not in line]
    with open(log, "w") as f:
        f.writelines(kept)
    os.remove(os.path.join(killed, "predictions_rank0.json"))
    again = run_sweep(spec, launch, out)
    assert again.ran == 1
    with open(os.path.join(killed, "run.log")) as f:
        assert "resumed from" in f.read()
    assert again.tests[("APT", 1)]["top1"] == results.tests[("APT", 1)]["top1"]


# ------------------------------------------------------------------------ the SLURM path
def test_slurm_path_submits_one_job_array_of_the_same_commands(tmp_path, monkeypatch):
    """Without a cluster: a fake ``sbatch`` records the script submitit writes."""
    bin_dir, record = tmp_path / "bin", tmp_path / "record"
    bin_dir.mkdir()
    record.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {record}/script.sh\n'
                                    'echo "Submitted batch job 4242"\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")  # submitit checks that it exists
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    spec = make_spec("/data", "/backbone.pth")
    jobs = [j for *_, j in val_jobs(spec, str(tmp_path / "out"))]
    launch = LaunchConfig(cluster="slurm", jobs=3, threads=4, partition="gpu", gpus_per_node=1,
                          timeout_min=30, slurm_extra={"account": "proj"})
    folder = str(tmp_path / "out" / "submitit")
    handles = submit(make_executor(launch, folder, "val"), launch, jobs, "/checkout")
    assert [h.job_id for h in handles] == ["4242_0", "4242_1", "4242_2", "4242_3"]
    script = (record / "script.sh").read_text()
    for line in ("#SBATCH --array=0-3%3", "#SBATCH --partition=gpu", "#SBATCH --time=30",
                 "#SBATCH --cpus-per-task=4", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --account=proj", "export OMP_NUM_THREADS=4"):
        assert line in script.splitlines(), line
    for i, job in enumerate(jobs):
        with open(os.path.join(folder, f"4242_{i}_submitted.pkl"), "rb") as f:
            function = pickle.load(f).function
        assert function.command == job.command and function.cwd == "/checkout"
        assert function.command[1].endswith("run_class_apt.py") and "--skip_test" in job.command


def test_skip_test_with_eval_is_refused():
    with pytest.raises(ConfigError, match="--eval with --skip_test"):
        run_class_apt.make_config(parse(tiny_argv("D", "O", eval=True, skip_test=True)))


def test_the_documented_protocol_is_a_fair_one():
    """The example protocol of docs/EVALUATION.md loads: equal grids, its rows named."""
    with open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "docs",
                           "EVALUATION.md"), encoding="utf-8") as f:
        page = f.read()
    block = page.split("## Comparing methods fairly")[1].split("```json\n")[1].split("```")[0]
    spec = SweepSpec.from_dict(json.loads(block))
    assert len(spec.methods) == 7 and {len(m.points()) for m in spec.methods} == {4}
    assert (spec.reference, spec.linear, spec.full) == ("APT", "linear probing",
                                                        "full fine-tuning")
