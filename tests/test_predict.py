"""``tools/predict.py`` end to end on the synthetic data set: its answers are the engine's
multi-view test predictions of the same checkpoint (``predictions_rank0.json``), for files and
folders; unreadable files are reported and counted; outputs parse; a frozen-backbone checkpoint
whose backbone moved needs ``--finetune``."""
import csv
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch


from tests.engine_helpers import ROOT, run_main, subprocess_env, tiny_argv
from tools import predict
from models.config import FinetuneConfig

# 8 epochs (about 2 s): after one, every test video has the same top-1 class, and a top-1
# comparison would pass whatever video predict.py decoded.
TRAIN = dict(epochs=8, lr=0.5, disable_eval_during_finetuning=True, save_ckpt_freq=100)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data, backbone):
    """APT on the frozen backbone, 2x2 test views: the run's folder."""
    out = str(tmp_path_factory.mktemp("run"))
    run_main(tiny_argv(data, out, "prompt", finetune=backbone, **TRAIN))
    return out


def listed_test_videos(data):
    """The test split's videos, in the order of test.csv (the engine's ``index``)."""
    with open(os.path.join(data, "test.csv"), encoding="utf-8") as f:
        return [os.path.join(data, line.split()[0]) for line in f if line.strip()]


def engine_scores(run_dir):
    """``{index: scores}`` of the engine's final test of the run."""
    with open(os.path.join(run_dir, "predictions_rank0.json"), encoding="utf-8") as f:
        return {p["index"]: p["scores"] for p in map(json.loads, f)}


def class_names(data):
    with open(os.path.join(data, "classes.txt"), encoding="utf-8") as f:
        return dict(line.split(None, 1) for line in f.read().splitlines())


def run_predict(ckpt, inputs, out_file, *flags):
    """``predict.main`` in this process; returns (exit status, what it wrote to ``out_file``)."""
    status = predict.main(["--resume", ckpt, *inputs, "--device", "cpu", "--num_workers", "0",
                           "--topk", "3", "--output", str(out_file), *flags])
    if not os.path.exists(out_file):
        return status, None
    with open(out_file, encoding="utf-8") as f:
        return status, json.load(f) if str(out_file).endswith(".json") else list(csv.DictReader(f))


def assert_same_as_engine(answers, videos, scores):
    """Each answer of ``videos[i]`` holds the engine's scores of index i, highest first."""
    assert [a["video"] for a in answers] == videos
    for i, answer in enumerate(answers):
        expected = sorted(enumerate(scores[i]), key=lambda cs: -cs[1])
        assert [t["class"] for t in answer["topk"]] == [c for c, _ in expected]
        for t, (_, p) in zip(answer["topk"], expected):
            assert abs(t["prob"] - p) <= 1e-5, (answer["video"], t, p)


def test_answers_are_the_engine_test_predictions(tmp_path, data, trained):
    videos, scores = listed_test_videos(data), engine_scores(trained)
    top1 = [max(range(3), key=lambda c: scores[i][c]) for i in range(len(videos))]
    assert len(set(top1)) > 1, "the run predicts one class for every video: no test of top-1"
    ckpt = os.path.join(trained, "checkpoint-last.pth")
    # --batch_size 4: the engine's forward passes (one video of 2x2 views); 7: views of one
    # video split over two forward passes.
    for batch_size in ("4", "7"):
        status, answers = run_predict(ckpt, videos, tmp_path / f"b{batch_size}.json",
                                      "--batch_size", batch_size)
        assert status == 0
        assert [a["topk"][0]["class"] for a in answers] == top1
        assert_same_as_engine(answers, videos, scores)
    names = class_names(data)  # classes.txt next to the checkpoint's list files
    assert all(t["name"] == names[str(t["class"])] for a in answers for t in a["topk"])


def test_views_flags_override_the_checkpoint_as_in_eval(tmp_path, data, trained):
    """--test_num_segment 3 --test_num_crop 1 gives what run_class_apt.py --eval gives with
    the same flags (and not the 2x2 answers of the checkpoint's own flags)."""
    ckpt = os.path.join(trained, "checkpoint-last.pth")
    views = ("--test_num_segment", "3", "--test_num_crop", "1")
    eval_dir = str(tmp_path / "eval")
    run_main(tiny_argv(data, eval_dir, "prompt", eval=True, resume=ckpt, test_num_segment=3,
                       test_num_crop=1))
    videos, scores = listed_test_videos(data), engine_scores(eval_dir)
    status, answers = run_predict(ckpt, videos, tmp_path / "a.json", *views)
    assert status == 0
    assert_same_as_engine(answers, videos, scores)
    default = engine_scores(trained)
    assert any(abs(scores[i][c] - default[i][c]) > 1e-4 for i in scores for c in range(3))


def test_folder_argument_takes_its_videos_recursively_sorted(tmp_path, data, trained):
    videos, scores = listed_test_videos(data), engine_scores(trained)
    folder = tmp_path / "clips"
    (folder / "b_sub").mkdir(parents=True)
    copies = [folder / "b_sub" / "z.mp4", folder / "a.MP4", folder / "b_sub" / "c.avi"]
    for i, copy in enumerate(copies):  # an .avi name on an mp4 file: decoders read the content
        shutil.copy(videos[i], copy)
    (folder / "notes.txt").write_text("not a video")
    explicit = videos[3]
    status, answers = run_predict(os.path.join(trained, "checkpoint-last.pth"),
                                  [str(folder), explicit, str(copies[0])], tmp_path / "a.json")
    assert status == 0
    order = [str(folder / "a.MP4"), str(folder / "b_sub" / "c.avi"),
             str(folder / "b_sub" / "z.mp4"), explicit]  # z.mp4 reached twice, taken once
    source = {order[0]: 1, order[1]: 2, order[2]: 0, order[3]: 3}
    assert_same_as_engine(answers, order, {i: scores[source[v]] for i, v in enumerate(order)})


def test_unreadable_files_are_reported_skipped_and_counted(tmp_path, data, trained, capsys):
    videos, scores = listed_test_videos(data), engine_scores(trained)
    garbage = [str(tmp_path / "broken.mp4"), str(tmp_path / "empty.mp4")]
    with open(garbage[0], "wb") as f:
        f.write(os.urandom(2048))
    open(garbage[1], "wb").close()
    inputs = [videos[0], garbage[0], videos[1], garbage[1]]
    ckpt = os.path.join(trained, "checkpoint-last.pth")
    status, rows = run_predict(ckpt, inputs, tmp_path / "a.csv")
    assert status == 0
    out = capsys.readouterr().out
    assert f"2 of 4 videos could not be read: {garbage[0]}, {garbage[1]}" in out
    assert [(r["video"], r["error"]) for r in rows if r["error"]] == \
        [(garbage[0], "could not be read"), (garbage[1], "could not be read")]
    good = [r for r in rows if not r["error"]]
    assert [r["video"] for r in good] == [videos[0]] * 3 + [videos[1]] * 3
    assert [int(r["rank"]) for r in good] == [1, 2, 3] * 2
    for r in good:  # the CSV's probabilities are the engine's
        assert abs(float(r["prob"]) - scores[videos.index(r["video"])][int(r["class"])]) <= 1e-5
    assert predict.main(["--resume", ckpt, *garbage, "--device", "cpu",
                         "--num_workers", "0"]) == 1  # nothing read


def test_class_names_file_and_indices_without_one(tmp_path, data, trained):
    ckpt = torch.load(os.path.join(trained, "checkpoint-last.pth"), weights_only=True)
    ckpt["args"]["data_path"] = str(tmp_path / "lists_elsewhere")  # no classes.txt there
    moved = str(tmp_path / "moved.pth")
    torch.save(ckpt, moved)
    video = listed_test_videos(data)[:1]
    _, answers = run_predict(moved, video, tmp_path / "a.json")
    assert sorted(t["name"] for t in answers[0]["topk"]) == ["0", "1", "2"]
    names = tmp_path / "names.txt"
    names.write_text("2 pushing something from left to right\n0 waving\n")
    _, answers = run_predict(moved, video, tmp_path / "b.json", "--class_names", str(names))
    by_class = {t["class"]: t["name"] for t in answers[0]["topk"]}
    assert by_class == {0: "waving", 1: "1", 2: "pushing something from left to right"}
    names.write_text("3 a fourth class\n")
    assert predict.main(["--resume", moved, *video, "--class_names", str(names),
                         "--device", "cpu"]) == 2


def test_frozen_backbone_gone_needs_finetune(tmp_path, data, trained, backbone, caplog):
    ckpt = torch.load(os.path.join(trained, "checkpoint-last.pth"), weights_only=True)
    assert ckpt["backbone"]["path"] == os.path.abspath(backbone)
    ckpt["backbone"]["path"] = str(tmp_path / "gone" / "videomae_micro_pretrain.pth")
    moved = str(tmp_path / "backbone_moved.pth")
    torch.save(ckpt, moved)
    videos = listed_test_videos(data)
    status, answers = run_predict(moved, videos, tmp_path / "a.json")
    assert status == 2 and answers is None
    assert "no longer there: pass it with --finetune" in caplog.text
    status, answers = run_predict(moved, videos, tmp_path / "b.json", "--finetune", backbone)
    assert status == 0
    assert_same_as_engine(answers, videos, engine_scores(trained))


def test_deepspeed_checkpoint_folder(tmp_path, data, trained):
    """The layout of a DeepSpeed run (docs/FORMATS.md, 'Training checkpoints'): a folder whose
    mp_rank_00_model_states.pt holds the tensors under ``module``."""
    ckpt = torch.load(os.path.join(trained, "checkpoint-last.pth"), weights_only=True)
    folder = tmp_path / "checkpoint-7"
    folder.mkdir()
    states = {"module": ckpt.pop("model"), **{k: v for k, v in ckpt.items()
                                              if k not in ("optimizer", "scaler")}}
    torch.save(states, folder / "mp_rank_00_model_states.pt")
    videos = listed_test_videos(data)
    status, answers = run_predict(str(folder), videos, tmp_path / "a.json")
    assert status == 0
    assert_same_as_engine(answers, videos, engine_scores(trained))


def test_data_set_sets_the_sampling_and_keeps_the_class_count(trained):
    """SSV2 samples one frame per segment: saved in the flags, or given on the command line."""
    ckpt = torch.load(os.path.join(trained, "checkpoint-last.pth"), weights_only=True)

    def sampling(ckpt, overrides):
        cfg = FinetuneConfig.from_checkpoint(ckpt, "ckpt", overrides)
        return cfg.model.num_classes, cfg.data.segment_sampling

    assert sampling(ckpt, {}) == (3, False)
    assert sampling(ckpt, {"data_set": "SSV2"}) == (3, True)
    ckpt["args"].update(data_set="SSV2", nb_classes=None)
    assert sampling(ckpt, {}) == (174, True)
    assert sampling(ckpt, {"data_set": "custom"}) == (174, False)


def test_bad_flags_fail_naming_them(tmp_path, data, trained, caplog):
    ckpt = os.path.join(trained, "checkpoint-last.pth")
    video = listed_test_videos(data)[0]
    assert predict.main(["--resume", ckpt, video, "--output", str(tmp_path / "a.txt")]) == 2
    assert "--output" in caplog.text
    assert predict.main(["--resume", ckpt, str(tmp_path / "nowhere.mp4")]) == 2
    assert "nowhere.mp4: no such video file or folder" in caplog.text
    assert predict.main(["--resume", str(tmp_path / "none.pth"), video]) == 2
    assert "--resume" in caplog.text and "none.pth" in caplog.text
    pretraining = str(tmp_path / "pretrain.pth")  # run_mae_pretraining.py's layout
    torch.save({"model": {}, "epoch": 0, "args": {"model": "pretrain_videomae_micro_patch16"}},
               pretraining)
    assert predict.main(["--resume", pretraining, video]) == 2
    assert "not a checkpoint of run_class_apt.py" in caplog.text


def test_script_entry_prints_the_table(tmp_path, data, trained):
    video = listed_test_videos(data)[0]
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "predict.py"), "--resume",
         os.path.join(trained, "checkpoint-last.pth"), video, "--device", "cpu",
         "--topk", "2"],
        cwd=str(tmp_path), env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["video", "#", "class", "name", "prob"]
    assert lines[1].split()[:2] == [video, "1"] and lines[2].split()[0] == "2"
    assert len(lines) == 3  # the table only: logging goes to stderr


def test_tasks_answer_every_video_for_every_task_in_one_pass(tmp_path, data, backbone, trained):
    """--tasks: an APT task (P=2, blocks 0-1) and a linear probe (another class count is not
    possible on one list, so another P and head) on one backbone; each task's probabilities are
    its own engine test's, and the backbone runs once per batch for both."""
    other = str(tmp_path / "linear")
    run_main(tiny_argv(data, other, "linear", finetune=backbone, prompt_num_tokens=None,
                       prompt_dropout=None, prompt_reparam=None, **TRAIN))
    videos = listed_test_videos(data)
    from models.multitask import MultiTaskModel
    calls = []
    real = MultiTaskModel.forward_grouped

    def counting(self, clips, task_ids):
        calls.append(sorted(set(torch.as_tensor(task_ids).tolist())))
        return real(self, clips, task_ids)

    MultiTaskModel.forward_grouped = counting
    try:
        out = tmp_path / "answers.json"
        status = predict.main(["--tasks", f"apt={trained}/checkpoint-last.pth",
                               "--tasks", f"lin={other}/checkpoint-last.pth", *videos,
                               "--device", "cpu",
                               "--num_workers", "0", "--topk", "3", "--batch_size", "64",
                               "--output", str(out)])
    finally:
        MultiTaskModel.forward_grouped = real
    assert status == 0
    assert calls and all(c == [0, 1] for c in calls)  # both tasks in every forward pass
    answers = json.load(open(out))
    assert [a["task"] for a in answers[:2]] == ["apt", "lin"] and len(answers) == 2 * len(videos)
    for task, run_dir in (("apt", trained), ("lin", other)):
        mine = [a for a in answers if a["task"] == task]
        assert_same_as_engine(mine, videos, engine_scores(run_dir))
