"""Fault injection on the inputs: list files saved with a byte-order mark or with repeated
lines, ``tools/predict.py --output`` into a folder that is missing or cannot exist, and
``--resume``/``--tasks`` given a run's output folder. Each case runs the real entry point and
checks the message (file and line named), the exit status and what was (not) done."""
import logging
import os
import shutil

import pytest

import run_class_apt
from datasets import ListFileError, build_dataset, parse_list_file
from models.run_checkpoints import find_run_checkpoint
from tests.data_helpers import make_args
from tests.engine_helpers import run_main, tiny_argv
import prediction
from tools import predict

BOM = "\ufeff"


def lists_with(data, folder, edit):
    """``data``'s three list files rewritten into ``folder`` with absolute paths, each passed
    through ``edit(split, lines) -> text``; returns ``folder`` (a --data_path)."""
    os.makedirs(folder, exist_ok=True)
    for split in ("train", "val", "test"):
        with open(os.path.join(data, f"{split}.csv"), encoding="utf-8") as f:
            lines = [f"{os.path.join(data, line.rsplit(None, 1)[0])} {line.rsplit(None, 1)[1]}"
                     for line in f.read().splitlines() if line.strip()]
        with open(os.path.join(folder, f"{split}.csv"), "w", encoding="utf-8") as f:
            f.write(edit(split, lines))
    return folder


def with_bom(split, lines):
    return BOM + "\n".join(lines) + "\n"


def repeating(split, lines):
    """The train list with its first line again at the end and line 2 with another label."""
    if split != "train":
        return "\n".join(lines) + "\n"
    path, label = lines[1].rsplit(None, 1)
    return "\n".join(lines + [lines[0], f"{path} {(int(label) + 1) % 3}"]) + "\n"


# ------------------------------------------------------------------------ byte-order mark
def test_bom_list_loads_with_the_first_path_right(tmp_path, data):
    lists = lists_with(data, str(tmp_path / "lists"), with_bom)
    with open(os.path.join(lists, "train.csv"), "rb") as f:
        assert f.read(3) == b"\xef\xbb\xbf"  # the file really starts with the mark
    records = parse_list_file(os.path.join(lists, "train.csv"), 3)
    assert os.path.isfile(records[0].path) and not records[0].path.startswith(BOM)
    dataset, _ = build_dataset(True, False, make_args(lists, nb_classes=3, num_frames=4,
                                                      input_size=32, short_side_size=32,
                                                      num_sample=1))
    clips, labels, index, bad = dataset[0]
    assert bad == [] and int(index) == 0  # the first video itself was decoded, not a stand-in
    assert clips.shape[-1] == 32 and int(labels[0]) == records[0].label


# -------------------------------------------------------------------------- repeated lines
def test_duplicate_lines_are_refused_naming_file_and_lines(tmp_path, data, caplog):
    lists = lists_with(data, str(tmp_path / "lists"), repeating)
    train = os.path.join(lists, "train.csv")
    n = sum(1 for _ in open(train, encoding="utf-8"))
    with pytest.raises(ListFileError) as err:
        parse_list_file(train, 3)
    text = str(err.value)
    assert f"{train}:{n - 1}:" in text and "repeats line 1" in text
    assert f"{train}:{n}:" in text and "line 2 gives it label" in text
    assert "--allow_duplicates" in text
    out = str(tmp_path / "out")
    with caplog.at_level(logging.ERROR):
        status = run_class_apt.cli(tiny_argv(lists, out, "linear"))
    assert status == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(f"{train}:{n - 1}:" in m and "repeats line 1" in m for m in errors), errors
    assert not any(name.startswith("checkpoint") for name in os.listdir(out))


def test_duplicate_lines_train_with_the_flag_and_one_warning(tmp_path, data, caplog):
    lists = lists_with(data, str(tmp_path / "lists"), repeating)
    train = os.path.join(lists, "train.csv")
    out = str(tmp_path / "out")
    with caplog.at_level(logging.WARNING):
        run_main(tiny_argv(lists, out, "linear", allow_duplicates=True,
                           disable_eval_during_finetuning=True))
    warned = [r.getMessage() for r in caplog.records
              if r.levelno == logging.WARNING and "--allow_duplicates" in r.getMessage()]
    assert len(warned) == 1 and train in warned[0]
    assert "2 repeated line(s), 1 with a conflicting label" in warned[0]
    assert os.path.isfile(os.path.join(out, "checkpoint-last.pth"))


def test_build_lists_writes_each_video_once(tmp_path, caplog):
    from tools.build_lists import write_lists
    with caplog.at_level(logging.WARNING):
        written = write_lists(str(tmp_path), {"train": [("a/x.avi", 0), ("a/x.mp4", 0),
                                                        ("b/y.avi", 1)]}, ["a", "b"], ext="mp4")
    records = parse_list_file(written["train"], 2)  # refused if a line were repeated
    assert [os.path.basename(r.path) for r in records] == ["x.mp4", "y.mp4"]
    assert any("1 repeated videos left out" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------ predict --output
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data, backbone):
    """A finished APT run on the frozen backbone (one epoch): its output folder."""
    out = str(tmp_path_factory.mktemp("run"))
    run_main(tiny_argv(data, out, "prompt", finetune=backbone,
                       disable_eval_during_finetuning=True))
    return out


def one_video(data):
    with open(os.path.join(data, "test.csv"), encoding="utf-8") as f:
        return [os.path.join(data, f.readline().split()[0])]


def predict_argv(resume, data, output, *flags):
    return ["--resume", resume, *one_video(data), "--device", "cpu", "--num_workers", "0",
            "--output", str(output), *flags]


def test_output_folder_created_before_inference(tmp_path, data, run_dir, monkeypatch):
    output = tmp_path / "new" / "deeper" / "answers.json"
    seen = []
    real = prediction.load_model

    def load_model(*args, **kwargs):
        seen.append(output.parent.is_dir())
        return real(*args, **kwargs)
    monkeypatch.setattr(prediction, "load_model", load_model)
    status = predict.main(predict_argv(os.path.join(run_dir, "checkpoint-last.pth"), data,
                                       output))
    assert status == 0 and seen == [True] and output.is_file()


def test_uncreatable_output_fails_before_any_model(tmp_path, data, run_dir, monkeypatch, caplog):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    output = blocker / "sub" / "answers.json"

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before --output was checked")
    monkeypatch.setattr(prediction, "load_model", no_model)
    with caplog.at_level(logging.ERROR):
        status = predict.main(predict_argv(run_dir, data, output))
    assert status == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and str(output) in errors[0] and "\n" not in errors[0]
    assert blocker.read_text() == "not a folder"


# ------------------------------------------------------------------ predict --resume RUN_DIR
def test_run_folder_resolves_best_then_newest(tmp_path, caplog):
    folder = tmp_path / "run"
    folder.mkdir()
    for name in ("checkpoint-3.pth", "checkpoint-last.pth"):
        (folder / name).write_bytes(b"x")
    with caplog.at_level(logging.INFO):
        assert find_run_checkpoint(str(folder)) == str(folder / "checkpoint-last.pth")
    assert any(str(folder / "checkpoint-last.pth") in r.getMessage() for r in caplog.records)
    (folder / "checkpoint-best").mkdir()  # a DeepSpeed best folder
    (folder / "checkpoint-best" / "mp_rank_00_model_states.pt").write_bytes(b"x")
    assert find_run_checkpoint(str(folder)) == str(folder / "checkpoint-best")
    (folder / "checkpoint-best.pth").write_bytes(b"x")
    assert find_run_checkpoint(str(folder)) == str(folder / "checkpoint-best.pth")
    assert find_run_checkpoint(str(folder / "checkpoint-3.pth")) == str(folder / "checkpoint-3.pth")


def test_predict_resume_run_folder_takes_best_else_last(tmp_path, data, run_dir):
    best_dir = tmp_path / "with_best"
    best_dir.mkdir()
    shutil.copy(os.path.join(run_dir, "checkpoint-last.pth"), best_dir / "checkpoint-best.pth")
    (best_dir / "checkpoint-last.pth").write_bytes(b"not a checkpoint")  # taken: would fail
    assert predict.main(predict_argv(str(best_dir), data, tmp_path / "best.json")) == 0
    assert predict.main(predict_argv(run_dir, data, tmp_path / "last.json")) == 0  # no best
    assert (tmp_path / "best.json").read_text() == (tmp_path / "last.json").read_text()
    status = predict.main(["--tasks", f"apt={run_dir}", *one_video(data), "--device", "cpu",
                           "--num_workers", "0", "--output", str(tmp_path / "tasks.json")])
    assert status == 0 and (tmp_path / "tasks.json").is_file()


def test_predict_resume_empty_folder_names_it(tmp_path, data, caplog):
    empty = tmp_path / "empty_run"
    empty.mkdir()
    with caplog.at_level(logging.ERROR):
        status = predict.main(predict_argv(str(empty), data, tmp_path / "x.json"))
    assert status == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and str(empty) in errors[0] and "checkpoint-best.pth" in errors[0]
    assert "DeepSpeed" not in errors[0]
