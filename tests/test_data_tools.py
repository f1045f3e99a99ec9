"""tools/: the synthetic data set generator and the list builders for the official splits."""
import json
import os

import numpy as np
import pytest

from datasets import build_dataset, open_video, parse_list_file
from tools import build_lists
from datasets.synthetic import MOTION_CLASSES, make_synthetic_dataset, render_clip
from tests.data_helpers import make_args


# ----------------------------------------------------------------------------- synthetic set
def _read_bytes(root):
    out = {}
    for dirpath, _d, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, root)] = open(path, "rb").read()
    return out


def test_synthetic_dataset_layout_and_determinism(tmp_path):
    kw = dict(num_classes=4, videos_per_class=4, num_frames=10, size=(48, 64),
              splits={"train": 2, "val": 1, "test": 1})
    info = make_synthetic_dataset(str(tmp_path / "a"), seed=3, **kw)
    assert info.class_names == list(MOTION_CLASSES[:4])
    assert info.counts == {"train": 8, "val": 4, "test": 4}
    again = make_synthetic_dataset(str(tmp_path / "b"), seed=3, workers=2, **kw)
    assert _read_bytes(info.out_dir) == _read_bytes(again.out_dir)  # byte-identical files
    other = make_synthetic_dataset(str(tmp_path / "c"), seed=4, **kw)
    assert _read_bytes(info.out_dir) != _read_bytes(other.out_dir)
    # The lists load through build_dataset with paths relative to the list folder.
    ds, nb = build_dataset(True, False, make_args(info.out_dir, nb_classes=4))
    assert nb == 4 and len(ds) == 8 and sorted({r.label for r in ds.records}) == [0, 1, 2, 3]
    reader = open_video(ds.records[0].path)
    assert len(reader) == 10 and reader.get_batch([0, 9]).shape == (2, 48, 64, 3)
    clips, labels, _i, bad = ds[5]
    assert clips.shape == (1, 3, 4, 32, 32) and bad == []
    assert {r.label for r in parse_list_file(info.list_files["test"], 4)} == {0, 1, 2, 3}


def _foreground(frames):
    """Mask of pixels differing from the per-pixel temporal median (the static background)."""
    bg = np.median(frames.astype(np.float32), axis=0)
    return np.abs(frames.astype(np.float32) - bg).sum(-1) > 60


@pytest.mark.parametrize("motion,axis,sign", [("move_right", 1, 1), ("move_left", 1, -1),
                                              ("move_down", 0, 1), ("move_up", 0, -1)])
def test_synthetic_motion_direction(motion, axis, sign):
    for seed in range(3):
        fg = _foreground(render_clip(motion, 16, 64, 64, np.random.default_rng(seed)))
        centre = [np.argwhere(m)[:, axis].mean() for m in (fg[0], fg[-1])]
        assert sign * (centre[1] - centre[0]) > 5, (motion, seed, centre)


def test_synthetic_size_change_and_single_frame_ambiguity():
    for seed in range(3):
        grow = render_clip("grow", 16, 64, 64, np.random.default_rng(seed))
        shrink = render_clip("shrink", 16, 64, 64, np.random.default_rng(seed))
        # Shape area, from the shape colour's distance to the frame's median colour.
        area = lambda f: (np.abs(f.astype(float) - np.median(f, axis=(0, 1))).sum(-1) > 60).sum()
        assert area(grow[-1]) > 2 * area(grow[0]) and area(shrink[0]) > 2 * area(shrink[-1])
        # The middle frames overlap in size: one frame does not tell grow from shrink.
    mids = [area(render_clip(m, 16, 64, 64, np.random.default_rng(s))[8])
            for m in ("grow", "shrink") for s in range(6)]
    assert min(mids[6:]) < max(mids[:6])


# ----------------------------------------------------------------------------- list builders
def test_ucf101_lists(tmp_path):
    d = tmp_path / "ucfTrainTestlist"
    d.mkdir()
    (d / "classInd.txt").write_text("1 ApplyEyeMakeup\r\n2 Archery\r\n3 HandstandPushups\r\n")
    (d / "trainlist01.txt").write_text(
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\n"
        "Archery/v_Archery_g08_c01.avi 2\r\n"
        "HandstandPushups/v_HandStandPushups_g08_c01.avi 3\r\n")
    (d / "testlist01.txt").write_text(
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\r\nHandstandPushups/v_HandStandPushups_g01_c02.avi\r\n")
    out = tmp_path / "lists"
    assert build_lists.main(["ucf101", "--splits_dir", str(d), "--split", "1", "--out", str(out)]) == 0
    assert (out / "train.csv").read_text().splitlines() == [
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 0", "Archery/v_Archery_g08_c01.avi 1",
        "HandstandPushups/v_HandStandPushups_g08_c01.avi 2"]
    assert (out / "test.csv").read_text() == (out / "val.csv").read_text() == (
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi 0\n"
        "HandstandPushups/v_HandStandPushups_g01_c02.avi 2\n")
    assert (out / "classes.txt").read_text().splitlines()[2] == "2 HandstandPushups"
    # Re-encoded videos and an absolute root.
    build_lists.main(["ucf101", "--splits_dir", str(d), "--out", str(out), "--ext", "mp4",
                      "--video_root", "/data/UCF-101"])
    assert (out / "train.csv").read_text().splitlines()[0] == \
        "/data/UCF-101/ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.mp4 0"
    # A wrong label in an official file is an error naming the file and line.
    (d / "trainlist01.txt").write_text("Archery/v_Archery_g08_c01.avi 1\r\n")
    with pytest.raises(build_lists.SplitFileError, match=r"trainlist01.txt:1: label 1"):
        build_lists.ucf101_entries(str(d), 1)
    assert build_lists.main(["ucf101", "--splits_dir", str(d), "--out", str(out)]) == 2


def test_hmdb51_lists(tmp_path):
    d = tmp_path / "splits"
    d.mkdir()
    (d / "wave_test_split1.txt").write_text("w1.avi 1 \nw2.avi 2 \nw3.avi 0 \n")
    (d / "brush_hair_test_split1.txt").write_text("b1.avi 2 \nb2.avi 1 \n")
    (d / "brush_hair_test_split2.txt").write_text("b1.avi 1 \nb2.avi 2 \n")  # other split: ignored
    out = tmp_path / "lists"
    build_lists.main(["hmdb51", "--splits_dir", str(d), "--split", "1", "--out", str(out)])
    assert (out / "train.csv").read_text().splitlines() == ["brush_hair/b2.avi 0", "wave/w1.avi 1"]
    assert (out / "test.csv").read_text().splitlines() == ["brush_hair/b1.avi 0", "wave/w2.avi 1"]
    assert (out / "val.csv").read_text() == (out / "test.csv").read_text()
    assert (out / "classes.txt").read_text() == "0 brush_hair\n1 wave\n"


def test_ssv2_lists(tmp_path):
    d = tmp_path / "labels"
    d.mkdir()
    (d / "labels.json").write_text(json.dumps({"Holding something": "0",
                                               "Pushing something from left to right": "1"}))
    (d / "train.json").write_text(json.dumps([
        {"id": "78687", "label": "pushing a cup from left to right",
         "template": "Pushing [something] from left to right", "placeholders": ["a cup"]},
        {"id": "42326", "label": "holding a pen", "template": "Holding [something]",
         "placeholders": ["a pen"]}]))
    (d / "validation.json").write_text(json.dumps([
        {"id": "24", "label": "holding x", "template": "Holding [something]", "placeholders": ["x"]}]))
    out = tmp_path / "lists"
    build_lists.main(["ssv2", "--labels_dir", str(d), "--out", str(out)])
    assert (out / "train.csv").read_text().splitlines() == ["78687.webm 1", "42326.webm 0"]
    assert (out / "val.csv").read_text() == (out / "test.csv").read_text() == "24.webm 0\n"
    assert (out / "classes.txt").read_text().splitlines()[1] == "1 Pushing something from left to right"


def test_kinetics400_lists(tmp_path):
    ann = tmp_path / "annotations"
    ann.mkdir()
    (ann / "train.csv").write_text(
        "label,youtube_id,time_start,time_end,split,is_cc\n"
        "abseiling,aaaaaaaaaaa,10,20,train,0\n"
        "zumba,bbbbbbbbbbb,0,10,train,0\n"
        "abseiling,ccccccccccc,5,15,train,0\n")  # not downloaded
    (ann / "validate.csv").write_text(
        "label,youtube_id,time_start,time_end,split,is_cc\n\"zumba\",ddddddddddd,3,13,val,0\n")
    vids = tmp_path / "videos"
    for rel in ("train/abseiling/aaaaaaaaaaa_000010_000020.mp4", "train/zumba/bbbbbbbbbbb_000000_000010.mp4",
                "val/zumba/ddddddddddd.mp4"):
        os.makedirs(os.path.dirname(vids / rel), exist_ok=True)
        (vids / rel).write_bytes(b"x")
    entries, classes, missing = build_lists.kinetics_entries(str(ann), str(vids))
    assert classes == ["abseiling", "zumba"] and missing == {"train": 1, "validate": 0}
    assert entries["train"] == [("train/abseiling/aaaaaaaaaaa_000010_000020.mp4", 0),
                                ("train/zumba/bbbbbbbbbbb_000000_000010.mp4", 1)]
    assert entries["validate"] == [("val/zumba/ddddddddddd.mp4", 1)]
    out = tmp_path / "lists"
    build_lists.main(["kinetics400", "--annotations_dir", str(ann), "--video_dir", str(vids),
                      "--out", str(out)])
    assert (out / "test.csv").read_text() == "val/zumba/ddddddddddd.mp4 1\n"
    # CVDF layout: val.csv instead of validate.csv, re-encoded copies under replacement/.
    (ann / "validate.csv").rename(ann / "val.csv")
    (vids / "replacement").mkdir()
    (vids / "replacement" / "aaaaaaaaaaa_000010_000020.mp4").write_bytes(b"x")
    (vids / "train" / "notes.txt").write_text("not a video")
    entries, _classes, _missing = build_lists.kinetics_entries(str(ann), str(vids))
    assert entries["train"][0] == ("replacement/aaaaaaaaaaa_000010_000020.mp4", 0)
    assert entries["validate"] == [("val/zumba/ddddddddddd.mp4", 1)]
