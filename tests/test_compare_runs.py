"""``tools/compare_runs.py``: one table of fine-tuning runs, checked against what the runs wrote
(``log.txt``, ``args.json``) and against ``run_class_apt.py --flops``; CSV, plot, the method's
settings, statuses of unfinished runs and the training time read from ``run.log``."""
import csv
import dataclasses
import glob
import json
import os
import shutil
import subprocess
import sys
from typing import List, Optional

import pytest

import engine
import models
import utils
from models.transfer_settings import TRANSFER_SETTINGS, BlockRange, setting
from tests.engine_helpers import ROOT, make_data, read_log, run_main, tiny_argv, write_tiny_backbone
from tools import compare_runs, run_table

# Two finished runs that differ in method, backbone and result (linear: best val at epoch 1, final
# 22.2%; APT with P=2: 33.3%), and APT stopped after epoch 0 of 2. Names sort against the result.
RUNS = {
    "a_linear": dict(transfer_type="linear", lr=100, seed=1, model_ema=True,
                     model_ema_decay=0.5),
    "b_prompt": dict(transfer_type="prompt", lr=50, seed=0, prompt_num_tokens=2, finetune=True),
    "c_stopped": dict(transfer_type="prompt", lr=50, seed=0, prompt_num_tokens=2, finetune=True),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``{name: (run folder, argv)}`` of the three runs, all in one folder."""
    data = make_data(str(tmp_path_factory.mktemp("synthetic")))
    backbone = write_tiny_backbone(str(tmp_path_factory.mktemp("backbone")))
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name, flags in RUNS.items():
        flags = dict(flags, finetune=backbone if flags.get("finetune") else None)
        argv = tiny_argv(data, str(root / name), epochs=2, **flags)
        out[name] = (str(root / name), argv)
        if name != "c_stopped":
            run_main(argv)
            continue
        real = engine.train_one_epoch

        def stop_at_epoch_1(*args, **kwargs):
            if args[3] == 1:  # the epoch argument
                raise KeyboardInterrupt("stopped after epoch 0")
            return real(*args, **kwargs)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(engine, "train_one_epoch", stop_at_epoch_1)
            with pytest.raises(KeyboardInterrupt):
                run_main(argv)
    (root / "notes").mkdir()  # a folder and a file that are no run: globs over `root` skip them
    (root / "compare.csv").write_text("")
    utils.setup_logging(rank=0)  # the last run's run.log handler: nothing more is logged there
    return out


def table(text: str) -> List[dict]:
    """The Markdown table's rows as dicts of cell text."""
    lines = [l for l in text.splitlines() if l.startswith("| ")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(head, (c.strip() for c in l.strip("|").split("|")))) for l in lines[1:]]


def best_val(records: List[dict]) -> tuple:
    """The highest val_acc1 and the epoch of its first occurrence, as written out here."""
    epochs = [r for r in records if "val_acc1" in r]
    top = max(r["val_acc1"] for r in epochs)
    return top, next(r["epoch"] for r in epochs if r["val_acc1"] == top)


def final(records: List[dict], key: str = "Final top-1") -> Optional[dict]:
    found = [r for r in records if key in r]
    return found[-1] if found else None


def test_table_and_csv_hold_what_the_runs_logged(runs, tmp_path, capsys):
    dirs = [runs[n][0] for n in sorted(runs)]
    csv_path = str(tmp_path / "runs.csv")
    assert compare_runs.main([*dirs, "--csv", csv_path]) == 0
    rows = table(capsys.readouterr().out)
    logs = {n: read_log(runs[n][0]) for n in runs}
    finals = {n: final(logs[n]) for n in runs}
    assert finals["b_prompt"]["Final top-1"] > finals["a_linear"]["Final top-1"], \
        "the runs no longer differ in top-1: the sort order below would test nothing"
    # Sorted by top-1, highest first (not by name); the unfinished run last.
    assert [r["run"] for r in rows] == [runs[n][0] for n in ("b_prompt", "a_linear", "c_stopped")]
    by_name = {os.path.basename(r["run"]): r for r in rows}

    flops = {}
    for name in ("a_linear", "b_prompt"):  # the CLI's own count, on CPU
        flops[name] = run_main([*runs[name][1], "--flops"])["gflops"]
    capsys.readouterr()
    for name, row in by_name.items():
        records = logs[name]
        top, epoch = best_val(records)
        assert row["best val top-1 (epoch)"] == f"{top:.2f} ({epoch})"
        trainable = [r for r in records if "epoch" in r][-1]["n_parameters"]
        assert row["trainable params"] == f"{trainable:,}"
        assert row["views"] == "2x2" and row["data set"].startswith("custom (")
    assert by_name["a_linear"]["best val top-1 (epoch)"].endswith("(1)")  # not the first epoch
    for name in ("a_linear", "b_prompt"):
        row = by_name[name]
        assert row["top-1"] == f"{finals[name]['Final top-1']:.2f}"
        assert row["top-5"] == f"{finals[name]['Final top-5']:.2f}"
        assert row["GFLOPs/view"] == f"{flops[name]:.4g}"
        assert (row["epochs"], row["status"]) == ("2/2", "done")
    assert by_name["a_linear"]["EMA top-1"] == \
        f"{final(logs['a_linear'], 'Final EMA top-1')['Final EMA top-1']:.2f}"
    assert by_name["a_linear"]["method"] == "linear"
    assert by_name["b_prompt"]["method"] == "APT P=2 dropout=0.1 blocks 0-1 reparam"
    assert by_name["a_linear"]["backbone"] == "random init"
    assert by_name["b_prompt"]["backbone"] == "videomae_micro_pretrain.pth"
    stopped = by_name["c_stopped"]
    assert (stopped["top-1"], stopped["epochs"]) == ("", "1/2")
    assert stopped["status"] == "in progress or stopped after 1 of 2 epochs"

    with open(csv_path, newline="") as f:
        records = list(csv.DictReader(f))
    assert [r["run"] for r in records] == [r["run"] for r in rows]
    for r in records:
        name = os.path.basename(r["run"])
        top, epoch = best_val(logs[name])
        assert (float(r["best_val_top1"]), int(r["best_val_epoch"])) == (top, epoch)
        if finals[name]:
            assert float(r["top1"]) == finals[name]["Final top-1"]
            assert float(r["top5"]) == finals[name]["Final top-5"]
            assert float(r["gflops"]) == flops[name]
    assert records[2]["top1"] == "" and records[2]["status"] == stopped["status"]


def test_flops_are_counted_once_per_architecture(runs, monkeypatch, capsys):
    calls = []
    real = models.cost_report

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(run_table, "cost_report", counting)  # the name the table calls
    dirs = [runs[n][0] for n in sorted(runs)]
    assert compare_runs.main(dirs) == 0
    assert len(calls) == 2  # b_prompt and c_stopped share one architecture
    capsys.readouterr()
    assert compare_runs.main([*dirs, "--no_flops"]) == 0
    assert len(calls) == 2
    rows = table(capsys.readouterr().out)
    assert all(r["GFLOPs/view"] == "" and r["trainable params"] for r in rows)


def test_quoted_and_shell_globs_and_plot(runs, tmp_path, capsys):
    root = os.path.dirname(runs["a_linear"][0])
    plot = tmp_path / "runs.png"
    assert compare_runs.main([os.path.join(root, "*"), "--plot", str(plot)]) == 0
    quoted = table(capsys.readouterr().out)
    assert sorted(os.path.basename(r["run"]) for r in quoted) == sorted(runs)  # `notes` skipped
    shell = sorted(glob.glob(os.path.join(root, "*")))  # as a shell would expand it
    assert compare_runs.main([*shell, runs["a_linear"][0] + os.sep]) == 0  # a run named twice
    assert table(capsys.readouterr().out) == quoted  # compare.csv skipped too; each run once
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 1000


def test_run_saved_before_the_resolved_keys_falls_back_to_the_flags(runs, tmp_path, capsys):
    """args.json without nb_classes' resolution, backbone_loaded, world_size or a setting added
    later (prompt_per_head): the row comes from the flags and the settings' defaults."""
    old = tmp_path / "old_run"
    old.mkdir()
    source = runs["b_prompt"][0]
    shutil.copy(os.path.join(source, "log.txt"), old / "log.txt")
    with open(os.path.join(source, "args.json")) as f:
        saved = json.load(f)
    for key in ("backbone_loaded", "world_size", "distributed", "dist_backend",
                "prompt_per_head"):
        del saved[key]
    (old / "args.json").write_text(json.dumps(saved))
    assert compare_runs.main([source, str(old)]) == 0
    new_row, old_row = table(capsys.readouterr().out)
    for column in ("method", "backbone", "GFLOPs/view", "trainable params", "top-1"):
        assert old_row[column] == new_row[column], column
    assert old_row["train time"] == ""  # no run.log copied


def test_method_label_shows_the_settings_of_every_type_and_of_a_new_one(monkeypatch):
    label = run_table.method_label
    assert label("prompt", {"prompt_num_tokens": 400, "prompt_reparam": True}, 12) == \
        "APT P=400 blocks 0-11 reparam"
    assert label("vpt", {"prompt_num_tokens": 50, "vpt_mode": "deep"}, 12) == \
        "VPT-deep P=50 blocks 0-11"
    assert label("lora", {"lora_rank": 8, "lora_alpha": 16.0, "prompt_start": 4}, 12) == \
        "LoRA r=8 a=16 blocks 4-11"
    assert label("adapter", {}, 12) == "adapter d=64 s=0.1 blocks 0-11"
    assert label("linear", {}, 12) == "linear"

    @dataclasses.dataclass(frozen=True)
    class TokenShiftConfig(BlockRange):
        token_shift_init: float = setting(0.0, "initial value of every shift")
        token_shift_gate: bool = setting(False, "a learned gate")

    # registered as a settings module of models/transfer_settings registers it
    monkeypatch.setitem(TRANSFER_SETTINGS, "token_shift", TokenShiftConfig)
    assert label("token_shift", {"token_shift_init": 0.5, "token_shift_gate": True,
                                 "prompt_end": 2}, 4) == \
        "token_shift token_shift_init=0.5 blocks 0-2 token_shift_gate"
    assert label("token_shift", {}, 4) == "token_shift blocks 0-3"  # zero/off at the default


# The checkpoint writer's logger, and the one of runs made before it moved to engine_checkpoints.
@pytest.mark.parametrize("saver", ["engine_checkpoints", "models.checkpoint"])
def test_training_time_counts_training_sessions_only(tmp_path, saver):
    """Two training sessions (the first stopped) 1 h apart, then an --eval: 70 s + 30 s."""
    lines = [
        "2024-05-01 10:00:00 [rank 0] INFO run_class_apt: backbone: 150 tensors loaded",
        "2024-05-01 10:00:05 [rank 0] INFO run_class_apt: model vit_b, transfer type APT(...)",
        "2024-05-01 10:00:06 [rank 0] INFO engine: lr 0.001 (= --lr ...)",
        "2024-05-01 10:00:10 [rank 0] INFO engine: training epochs 0..3",
        "2024-05-01 10:00:50 [rank 0] INFO utils.logs: Epoch: [0] total time: 0:00:40",
        "a continuation line of a multi-line message",
        f"2024-05-01 10:01:20 [rank 0] INFO {saver}: saved out/checkpoint-last.pth",
        # stopped here; resumed an hour later
        "2024-05-01 11:01:20 [rank 0] INFO models.pretrained: loaded 150 tensors",
        "2024-05-01 11:01:22 [rank 0] INFO run_class_apt: model vit_b, transfer type APT(...)",
        f"2024-05-01 11:01:23 [rank 0] INFO {saver}: resumed from checkpoint-last.pth",
        "2024-05-01 11:01:30 [rank 0] INFO engine: training epochs 1..3",
        "2024-05-01 11:01:55 [rank 0] INFO engine_eval: * Acc@1 33.333 Acc@5 100.000",
        "2024-05-01 11:02:00 [rank 0] INFO engine: training time 0:00:30",
        "2024-05-01 12:00:00 [rank 0] INFO run_class_apt: model vit_b, transfer type APT(...)",
        "2024-05-01 12:00:40 [rank 0] INFO utils.logs: Test: total time: 0:00:40",
    ]
    (tmp_path / "run.log").write_text("\n".join(lines) + "\n")
    assert run_table.training_seconds(str(tmp_path / "run.log")) == 70 + 30
    (tmp_path / "eval.log").write_text("\n".join(lines[-2:]) + "\n")
    assert run_table.training_seconds(str(tmp_path / "eval.log")) is None


def test_labels_do_not_overlap_each_other(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox
    from tools.plots import place_labels

    fig, ax = plt.subplots(figsize=(6, 4))
    xy = [(1e5 * (1 + 0.05 * i), 80 + 0.3 * (i % 3)) for i in range(8)]  # one tight cluster
    ax.scatter(*zip(*xy), s=100)
    ax.set_xscale("log")
    ax.set_xlim(1e4, 1e7)
    ax.set_ylim(0, 100)
    labels = place_labels(ax, xy, [f"method {i} P=400 blocks 0-11" for i in range(8)], [100] * 8)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [Text.get_window_extent(a, renderer) for a in labels]
    assert len(boxes) == 8
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            common = Bbox.intersection(a, b)
            assert common is None or common.width * common.height == 0, (a, b)
    plt.close(fig)


def test_bad_run_dirs_exit_2_naming_them(tmp_path, caplog):
    missing = str(tmp_path / "no_such_run")
    assert compare_runs.main([missing]) == 2
    assert missing in caplog.text
    assert compare_runs.main([str(tmp_path / "nothing_*")]) == 2
    assert "nothing_*" in caplog.text


def test_help_runs_as_a_script():
    proc = subprocess.run([sys.executable, "tools/compare_runs.py", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "RUN_DIR" in proc.stdout and "--no_flops" in proc.stdout and "--plot" in proc.stdout
    assert "--per_class" in proc.stdout and "--diff" in proc.stdout


def test_seeds_of_one_run_are_summarised_as_mean_and_std(runs, tmp_path, capsys):
    """Runs equal but for --seed (and their folders) make one row: mean ± sample std."""
    src = runs["b_prompt"][0]
    other = str(tmp_path / "b_prompt_seed7")
    shutil.copytree(src, other)
    with open(os.path.join(other, "args.json")) as f:
        saved = json.load(f)
    saved.update(seed=7, output_dir=other, log_dir=other)
    with open(os.path.join(other, "args.json"), "w") as f:
        json.dump(saved, f)
    first = final(read_log(src))["Final top-1"]
    with open(os.path.join(other, "log.txt"), "a") as f:  # the later final line is the one read
        f.write(json.dumps({"Final top-1": first + 30.0, "Final top-5": 100.0,
                            "test_videos": 9, "tested": "last"}) + "\n")
    assert compare_runs.main([src, other, runs["a_linear"][0], "--no_flops"]) == 0
    out = capsys.readouterr().out
    main, seeds = out.split("Seeds of the same run:")
    rows = table(seeds)
    assert len(rows) == 1 and rows[0]["seeds"] == "0, 7"
    # two values 30 apart: mean in the middle, sample std 30 / sqrt(2) = 21.21
    assert rows[0]["top-1 (mean ± std)"] == f"{first + 15:.2f} ± 21.21"
    assert rows[0]["runs"] == "b_prompt, b_prompt_seed7"
    # A changed flag other than the seed is another run: no group.
    saved["lr"] = 1.0
    with open(os.path.join(other, "args.json"), "w") as f:
        json.dump(saved, f)
    assert compare_runs.main([src, other, "--no_flops"]) == 0
    assert "Seeds of the same run" not in capsys.readouterr().out


# ------------------------------------------------------------------------------- per class
def _per_class_csv(run_dir: str) -> List[dict]:
    with open(os.path.join(run_dir, "test_per_class.csv"), newline="") as f:
        return list(csv.DictReader(f))


def test_mean_class_and_per_class_of_two_runs_side_by_side(runs, capsys):
    """The mean-class column is what log.txt holds; --per_class shows each run's per-class
    top-1 as its test_per_class.csv; --diff ranks the classes by |B - A|."""
    a, b = runs["a_linear"][0], runs["b_prompt"][0]
    assert compare_runs.main([a, b, "--no_flops", "--per_class", "--diff", a, b]) == 0
    out = capsys.readouterr().out
    main, rest = out.split("Per-class top-1 (%):")
    per_class, diff = rest.split("Largest per-class differences (top 10):")
    rows = {os.path.basename(r["run"]): r for r in table(main)}
    for name in ("a_linear", "b_prompt"):
        logged = final(read_log(runs[name][0]))["Final mean-class top-1"]
        assert rows[name]["mean-class"] == f"{logged:.2f}"
    expected = {name: _per_class_csv(runs[name][0]) for name in ("a_linear", "b_prompt")}
    shown = table(per_class)
    assert [r["name"] for r in shown[:3]] == [r["name"] for r in expected["a_linear"]]
    for k, row in enumerate(shown[:3]):
        assert row["videos"] == expected["a_linear"][k]["videos"]
        for name in ("a_linear", "b_prompt"):
            assert row[name] == expected[name][k]["top1"]
    assert shown[3]["a_linear"] == rows["a_linear"]["mean-class"]  # the mean-class row
    assert shown[4]["b_prompt"] == rows["b_prompt"]["top-1"]  # the top-1 row
    # B - A per class, counted here from the two CSVs, largest first.
    delta = {r["name"]: float(rb["top1"]) - float(r["top1"])
             for r, rb in zip(expected["a_linear"], expected["b_prompt"])}
    listed = table(diff)
    assert [r["name"] for r in listed] == sorted((n for n in delta if delta[n]),
                                                 key=lambda n: -abs(delta[n]))
    assert [float(r["B − A"]) for r in listed] == \
        pytest.approx([delta[r["name"]] for r in listed], abs=0.011)


def test_runs_made_before_the_per_class_files_are_read_from_their_predictions(runs, tmp_path,
                                                                               capsys):
    """Without test_confusion.csv and without the mean-class key in log.txt, both come from
    predictions_rank0.json, named by classes.txt: the same numbers."""
    src = runs["b_prompt"][0]
    old = tmp_path / "old_prompt"
    old.mkdir()
    shutil.copy(os.path.join(src, "predictions_rank0.json"), old / "predictions_rank0.json")
    with open(os.path.join(src, "args.json")) as f:
        saved = json.load(f)
    saved["lr"] = 51  # another run, not a seed of b_prompt: its own column
    (old / "args.json").write_text(json.dumps(saved))
    with open(old / "log.txt", "w") as f:
        for record in read_log(src):
            record.pop("Final mean-class top-1", None)
            f.write(json.dumps(record) + "\n")
    assert compare_runs.main([src, str(old), "--no_flops", "--per_class"]) == 0
    main, per_class = capsys.readouterr().out.split("Per-class top-1 (%):")
    new_row, old_row = table(main)
    assert old_row["mean-class"] == new_row["mean-class"] != ""
    shown = table(per_class)
    assert [r["name"] for r in shown[:3]] == [r["name"] for r in _per_class_csv(src)]
    assert all(r["b_prompt"] == r["old_prompt"] for r in shown)


def test_diff_of_a_run_not_given_exits_2(runs, tmp_path, caplog):
    a = runs["a_linear"][0]
    assert compare_runs.main([a, "--no_flops", "--diff", a, str(tmp_path)]) == 2
    assert f"--diff {tmp_path}" in caplog.text
