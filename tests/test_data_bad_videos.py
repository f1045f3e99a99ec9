"""Bad videos: missing, zero-byte, truncated and not-a-video files are logged, replaced (train)
or marked with label -1 (val/test), counted, and past --max_bad_fraction stop the run."""
import logging

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from datasets import BadVideoTracker, TooManyBadVideos, build_dataset, collate_eval, collate_train
from tests.data_helpers import make_args, textured_frames, write_list, write_video

N_GOOD = 6


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A folder with N_GOOD good videos (labels 0..3) and the four kinds of bad file."""
    root = tmp_path_factory.mktemp("bad")
    good = []
    for i in range(N_GOOD):
        path = root / f"good{i}.mp4"
        write_video(str(path), textured_frames(12, 48, 64, seed=i))
        good.append((str(path), i % 4))
    data = open(good[0][0], "rb").read()
    (root / "empty.mp4").write_bytes(b"")
    (root / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (root / "notes.mp4").write_text("not a video\n" * 50)
    bad = [str(root / n) for n in ("missing.mp4", "empty.mp4", "truncated.mp4", "notes.mp4")]
    return root, good, bad


def _lists(root, good, bad):
    entries = good[:3] + [(bad[0], 1), (bad[1], 2)] + good[3:] + [(bad[2], 3), (bad[3], 0)]
    for split in ("train", "val", "test"):
        write_list(str(root / f"{split}.csv"), entries)
    return entries


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_training_epoch_completes_and_counts_bad_videos(mixed, backend, caplog):
    root, good, bad = mixed
    entries = _lists(root, good, bad)
    ds, _ = build_dataset(True, False, make_args(str(root), video_backend=backend, num_sample=2))
    tracker = ds.make_bad_video_tracker()
    tracker.max_fraction = 0.5
    loader = DataLoader(ds, batch_size=2, shuffle=True, collate_fn=collate_train,
                        generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    np.random.seed(0)
    seen = 0
    with caplog.at_level(logging.WARNING, logger="datasets.video_dataset"):
        for clips, labels, bad_paths in loader:
            assert clips.shape == (4, 3, 4, 32, 32) and torch.isfinite(clips).all()
            tracker.update(bad_paths)
            seen += len(labels)
    assert seen == 2 * len(entries)  # every item yielded a (replacement) clip
    assert tracker.count == 4 and sorted(tracker.paths) == sorted(bad)
    assert tracker.summary()["bad_videos"] == 4
    for path in bad:  # each logged with its path
        assert any(path in rec.getMessage() for rec in caplog.records)


def test_replacement_is_a_good_video_with_its_own_label(mixed):
    root, good, bad = mixed
    entries = _lists(root, good, bad)
    ds, _ = build_dataset(True, False, make_args(str(root)))
    np.random.seed(0)
    for i, (path, _label) in enumerate(entries):
        clips, labels, index, bad_paths = ds[i]
        if path in bad:
            assert bad_paths[0] == path and index != i
        else:
            assert bad_paths == [] and index == i
        assert entries[index][0] not in bad and labels.tolist() == [entries[index][1]]


def test_too_many_bad_videos_stop_the_run(mixed):
    root, good, bad = mixed
    _lists(root, good, bad)
    ds, _ = build_dataset(True, False, make_args(str(root), max_bad_fraction=0.2))
    tracker = ds.make_bad_video_tracker()  # 10 videos, 0.2 -> at most 2 bad
    loader = DataLoader(ds, batch_size=2, shuffle=False, collate_fn=collate_train)
    with pytest.raises(TooManyBadVideos) as info:
        for _clips, _labels, bad_paths in loader:
            tracker.update(bad_paths)
    msg = str(info.value)
    # Replacements drawn at random may meet another bad file early, so the count at the stop
    # is 3 or 4; the first one met (in list order) is always listed.
    assert "--max_bad_fraction 0.2" in msg and "bad videos in the train split of 10" in msg
    assert info.value.args[0].split()[0] in ("3", "4") and bad[0] in msg


@pytest.mark.parametrize("test_mode", [False, True])
def test_eval_bad_video_is_marked_not_replaced(mixed, test_mode):
    root, good, bad = mixed
    entries = _lists(root, good, bad)
    ds, _ = build_dataset(False, test_mode, make_args(str(root), test_num_segment=2, test_num_crop=3))
    batch = [ds[i] for i in range(len(ds))]
    videos, labels, indices, bad_paths = collate_eval(batch)
    expected_shape = (len(entries), 6, 3, 4, 32, 32) if test_mode else (len(entries), 3, 4, 32, 32)
    assert videos.shape == expected_shape
    assert indices.tolist() == list(range(len(entries)))
    for i, (path, label) in enumerate(entries):
        if path in bad:
            assert labels[i] == -1 and videos[i].abs().sum() == 0
        else:
            assert labels[i] == label
    assert sorted(bad_paths) == sorted(bad)


def test_all_bad_training_list_fails_with_paths_not_hang(mixed):
    root, _good, bad = mixed
    write_list(str(root / "train.csv"), [(p, i) for i, p in enumerate(bad)])
    ds, _ = build_dataset(True, False, make_args(str(root), max_bad_fraction=1.0))
    with pytest.raises(RuntimeError, match="no decodable training video found in 10 attempts") as info:
        ds[0]
    assert bad[0] in str(info.value)


def test_tracker_deduplicates_and_checks_its_flag():
    tracker = BadVideoTracker("val", split_size=100, max_fraction=0.02)
    tracker.update(["a", "b", "a"])
    tracker.update([])
    assert tracker.count == 2 and tracker.paths == ["a", "b"]
    with pytest.raises(TooManyBadVideos, match="3 bad videos in the val split of 100"):
        tracker.update(["b", "c"])
    with pytest.raises(ValueError, match="--max_bad_fraction"):
        BadVideoTracker("train", 10, 1.5)
    assert issubclass(TooManyBadVideos, RuntimeError)
