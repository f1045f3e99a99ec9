"""Per-class results of the final test (``utils/class_results.py``, ``engine.run_final_test``):
the confusion matrix, per-class top-1 and mean-class top-1 against values counted by hand here,
their files, and a real ``--eval`` that writes them with the class names of ``classes.txt``."""
import csv
import json
import math
import os
import struct

import numpy as np
import pytest

import engine
from tests.engine_helpers import NUM_TEST, final_record, run_main, tiny_argv
from utils.class_results import (ClassResults, index_names, plot_confusion, read_confusion_csv,
                                 result_files, write_class_results)

# 4 classes, 10 videos; class 3 has no test video. True -> predicted, one pair per video:
PAIRS = [(0, 0), (0, 0), (0, 1),            # class 0: 2 of 3 right, one taken for class 1
         (1, 1), (1, 0), (1, 0), (1, 2),    # class 1: 1 of 4 right, twice class 0, once 2
         (2, 2), (2, 2), (2, 3)]            # class 2: 2 of 3 right, once class 3
# Counted by hand from PAIRS (row = true class, column = predicted class).
MATRIX = [[2, 1, 0, 0],
          [2, 1, 1, 0],
          [0, 0, 2, 1],
          [0, 0, 0, 0]]
PER_CLASS = [200 / 3, 25.0, 200 / 3]  # classes 0-2, percent; class 3: no videos
MEAN_CLASS = (200 / 3 + 25.0 + 200 / 3) / 3  # 52.777...: classes with test videos only
TOP1 = 5 / 10 * 100
NAMES = ("jump", "run, fast", "walk", "swim")  # a comma: the CSV must quote it


def _results() -> ClassResults:
    labels, predicted = zip(*PAIRS)
    return ClassResults.from_labels(labels, predicted, 4, NAMES)


def test_confusion_matrix_and_accuracies_equal_hand_counts():
    r = _results()
    assert r.matrix.tolist() == MATRIX
    assert r.videos.tolist() == [3, 4, 3, 0] and r.correct.tolist() == [2, 1, 2, 0]
    per_class = r.per_class_top1()
    assert per_class[:3] == pytest.approx(PER_CLASS) and math.isnan(per_class[3])
    assert r.mean_class_top1() == pytest.approx(MEAN_CLASS)
    assert r.top1() == pytest.approx(TOP1)
    # Most videos first, then the larger share of the true class: 1->0 (2 of 4), then the
    # single confusions by share: 0->1 and 2->3 (1 of 3) before 1->2 (1 of 4).
    assert [(c.true, c.predicted, c.videos) for c in r.confused_pairs()] == \
        [(1, 0, 2), (0, 1, 1), (2, 3, 1), (1, 2, 1)]
    assert r.confused_pairs(1)[0].share == pytest.approx(50.0)
    assert r.describe_confusions(1) == "run, fast -> jump: 2 (50.0% of run, fast)"


def test_bad_inputs_are_refused_not_dropped():
    with pytest.raises(ValueError, match="label 4 out of range"):
        ClassResults.from_labels([0, 4], [0, 0], 4)
    with pytest.raises(ValueError, match="predicted class -1"):
        ClassResults.from_labels([0], [-1], 4)
    empty = ClassResults.from_labels([], [], 3)  # every video unreadable
    assert empty.matrix.tolist() == [[0] * 3] * 3 and math.isnan(empty.mean_class_top1())
    assert empty.names == index_names(3) == ("0", "1", "2")


def _png_size(path: str) -> tuple:
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", head[16:24])


def test_files_hold_the_counts_and_read_back(tmp_path):
    r = _results()
    per_class, confusion, png = write_class_results(r, str(tmp_path), "test", title="a test")
    assert (per_class, confusion, png) == result_files(str(tmp_path))
    with open(per_class, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(int(x["class"]), x["name"], int(x["videos"]), int(x["correct"])) for x in rows] == \
        [(0, "jump", 3, 2), (1, "run, fast", 4, 1), (2, "walk", 3, 2), (3, "swim", 0, 0)]
    assert [x["top1"] for x in rows] == ["66.67", "25.00", "66.67", ""]
    assert [(x["most_confused_with"], x["confused_videos"]) for x in rows] == \
        [("run, fast", "1"), ("jump", "2"), ("swim", "1"), ("", "0")]
    with open(confusion, newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == ["true \\ predicted", *NAMES]
    assert [row[0] for row in table[1:]] == list(NAMES)
    assert [[int(v) for v in row[1:]] for row in table[1:]] == MATRIX
    back = read_confusion_csv(confusion)
    assert back.names == NAMES and back.matrix.tolist() == MATRIX
    assert _png_size(png)[0] > 300


def test_a_broken_confusion_csv_is_named(tmp_path):
    path = tmp_path / "test_confusion.csv"
    path.write_text("true \\ predicted,a,b\na,1,2\nb,3\n")
    with pytest.raises(ValueError, match=r"test_confusion.csv:3: expected class 'b' and 2"):
        read_confusion_csv(str(path))


@pytest.mark.parametrize("classes", [8, 400])
def test_the_picture_stays_readable_from_8_to_400_classes(tmp_path, classes):
    """Every class on the axes up to 60 classes; a bounded picture for 400 (4 px or more a
    cell, never a figure that grows with the class count)."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(classes), 3)
    predicted = np.where(rng.random(labels.size) < 0.7, labels, rng.integers(0, classes,
                                                                             labels.size))
    r = ClassResults.from_labels(labels, predicted, classes)
    path = str(tmp_path / "c.png")
    plot_confusion(r, path, "title")
    width, height = _png_size(path)
    assert 300 < width <= 2700 and 300 < height <= 2500
    assert min(width, height) / classes >= 4 or classes <= 60


def test_the_merge_counts_each_video_once_and_its_diagonal_is_the_top1():
    # Rank 1 repeats video 0 (DistributedSampler padding); video 4 is unreadable.
    rank0 = [{"index": 0, "label": 0, "scores": [0.7, 0.2, 0.1]},
             {"index": 2, "label": 2, "scores": [0.5, 0.1, 0.4]},
             {"index": 4, "label": -1, "scores": None, "path": "bad.mp4"}]
    rank1 = [{"index": 1, "label": 1, "scores": [0.1, 0.8, 0.1]},
             {"index": 3, "label": 0, "scores": [0.3, 0.6, 0.1]},
             {"index": 0, "label": 0, "scores": [0.7, 0.2, 0.1]}]
    result = engine.merge_predictions([rank0, rank1], 3)
    # By hand: 0->0, 2->0, 1->1, 3: 0->1.
    assert result["classes"].matrix.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]
    assert result["mean_class"] == pytest.approx((50.0 + 100.0 + 0.0) / 3)
    assert result["top1"] == pytest.approx(result["classes"].top1()) == pytest.approx(50.0)
    nothing = engine.merge_predictions([[rank0[2]]], 3)
    assert nothing["classes"].total == 0 and math.isnan(nothing["mean_class"])


def test_eval_writes_per_class_files_named_by_the_label_map(tmp_path, data, caplog):
    """A tiny run and its --eval: the files hold the matrix counted here from the predictions
    the test wrote, the names of classes.txt, and log.txt the mean-class top-1 of that matrix."""
    train = str(tmp_path / "run")
    run_main(tiny_argv(data, train, "linear", lr=100, seed=1))
    out = str(tmp_path / "eval")
    caplog.set_level("INFO")
    run_main(tiny_argv(data, out, "linear", eval=True,
                       resume=os.path.join(train, "checkpoint-last.pth")))
    with open(os.path.join(data, "classes.txt")) as f:
        names = [line.split(None, 1)[1].strip() for line in f if line.strip()]
    with open(os.path.join(out, "predictions_rank0.json")) as f:
        preds = [json.loads(line) for line in f]
    counted = [[0] * 3 for _ in range(3)]
    for p in preds:
        counted[p["label"]][max(range(3), key=lambda c: p["scores"][c])] += 1
    assert sum(map(sum, counted)) == NUM_TEST

    per_class, confusion, png = result_files(out)
    back = read_confusion_csv(confusion)
    assert list(back.names) == names and back.matrix.tolist() == counted
    with open(per_class, newline="") as f:
        rows = list(csv.DictReader(f))
    hand = [100.0 * counted[c][c] / sum(counted[c]) for c in range(3)]
    assert [r["name"] for r in rows] == names
    assert [int(r["videos"]) for r in rows] == [sum(row) for row in counted]
    assert [float(r["top1"]) for r in rows] == pytest.approx(hand, abs=0.005)
    final = final_record(out)
    assert final["tested"] == "resume"
    assert final["Final mean-class top-1"] == pytest.approx(sum(hand) / 3)
    assert final["Final top-1"] == pytest.approx(100.0 * sum(counted[c][c] for c in range(3))
                                                 / NUM_TEST)
    assert _png_size(png)[0] > 300
    assert "most confused classes" in caplog.text and "mean-class top-1" in caplog.text
