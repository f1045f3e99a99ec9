"""Frame indices and crop offsets: the pure functions (exact values) and the same indices seen
end to end through the dataset, using videos whose grey level encodes the frame index."""
import numpy as np
import pytest
import torch

import datasets.decoders as decoders
import run_class_apt
import run_mae_pretraining
from datasets import build_dataset
from models.config import FinetuneConfig
from utils.config import ConfigError, DataConfig
from datasets.sampling import (crop_offsets, dense_test_indices, dense_train_indices,
                               dense_val_indices, resized_short_side, segment_test_indices,
                               segment_train_indices, segment_val_indices)
from tests.data_helpers import (FixedRng, decode_frame_codes, denormalize, gradient_frames,
                                index_coded_frames, make_args, write_list, write_video)


# ----------------------------------------------------------------------------- pure functions
def test_dense_train_window_exact():
    # n=100, T=8, r=4: window 32, start in [0, 68].
    assert dense_train_indices(100, 8, 4, FixedRng()).tolist() == [0, 4, 8, 12, 16, 20, 24, 28]
    assert dense_train_indices(100, 8, 4, FixedRng(highest=True)).tolist() == \
        [68, 72, 76, 80, 84, 88, 92, 96]
    starts = {int(dense_train_indices(40, 4, 2, np.random.RandomState(s))[0]) for s in range(300)}
    assert starts == set(range(0, 33))  # every start in [0, n - T*r] occurs, no other


def test_dense_short_video_repeats_last_frame():
    assert dense_train_indices(10, 8, 4, FixedRng(highest=True)).tolist() == [0, 4, 8, 9, 9, 9, 9, 9]
    assert dense_val_indices(10, 8, 4).tolist() == [0, 4, 8, 9, 9, 9, 9, 9]
    assert dense_train_indices(1, 4, 2).tolist() == [0, 0, 0, 0]
    # Exactly the window length: one possible start, no repeat.
    assert dense_train_indices(32, 8, 4, FixedRng(highest=True)).tolist() == list(range(0, 32, 4))


def test_dense_val_is_centred():
    assert dense_val_indices(100, 8, 4).tolist() == list(range(34, 66, 4))  # (100-32)//2 = 34


def test_dense_test_views_follow_videomae():
    # Grid 0,2,...,38 (L=20); 5 views of T=4: grid starts int(i*16/4) = 0,4,8,12,16.
    views = dense_test_indices(40, 4, 2, 5)
    assert [v.tolist() for v in views] == [[0, 2, 4, 6], [8, 10, 12, 14], [16, 18, 20, 22],
                                           [24, 26, 28, 30], [32, 34, 36, 38]]
    # 2 views: first and last possible clip.
    assert [v.tolist() for v in dense_test_indices(30, 4, 4, 2)] == [[0, 4, 8, 12], [16, 20, 24, 28]]
    # Non-integer step: grid 0..9 (L=10), T=4, 4 views: step 2 -> starts 0,2,4,6.
    assert [v[0] for v in dense_test_indices(10, 4, 1, 4)] == [0, 2, 4, 6]
    # 1 view = the validation clip.
    assert dense_test_indices(40, 4, 2, 1)[0].tolist() == dense_val_indices(40, 4, 2).tolist()
    # Short video: the grid is padded with its last entry; all views equal.
    assert [v.tolist() for v in dense_test_indices(5, 4, 2, 3)] == [[0, 2, 4, 4]] * 3


def test_segment_sampling_exact():
    # n=40, T=4: segments [0,10), [10,20), [20,30), [30,40).
    assert segment_train_indices(40, 4, FixedRng()).tolist() == [0, 10, 20, 30]
    assert segment_train_indices(40, 4, FixedRng(highest=True)).tolist() == [9, 19, 29, 39]
    # n=50: float boundaries 0, 12, 25, 37, 50 cover the whole video.
    assert segment_train_indices(50, 4, FixedRng(highest=True)).tolist() == [11, 24, 36, 49]
    # Fewer frames than segments: frames repeat, in order.
    assert segment_train_indices(3, 8, FixedRng(highest=True)).tolist() == [0, 0, 0, 1, 1, 1, 2, 2]
    picks = np.stack([segment_train_indices(40, 4, np.random.RandomState(s)) for s in range(200)])
    for j in range(4):
        assert set(picks[:, j].tolist()) == set(range(10 * j, 10 * j + 10))
    assert segment_val_indices(40, 4).tolist() == [5, 15, 25, 35]


def test_segment_test_views_follow_videomae():
    # VideoMAE ssv2.py with 2 views: segment starts, then segment middles.
    assert [v.tolist() for v in segment_test_indices(40, 4, 2)] == [[0, 10, 20, 30], [5, 15, 25, 35]]
    assert [v.tolist() for v in segment_test_indices(40, 4, 4)] == \
        [[0, 10, 20, 30], [2, 12, 22, 32], [5, 15, 25, 35], [7, 17, 27, 37]]
    assert segment_test_indices(40, 4, 1)[0].tolist() == segment_val_indices(40, 4).tolist()


def test_crop_offsets_and_resize():
    assert crop_offsets(96, 32, 3) == [0, 32, 64]
    assert crop_offsets(96, 32, 1) == [32]
    assert crop_offsets(100, 32, 2) == [0, 68]
    assert crop_offsets(32, 32, 3) == [0, 0, 0]
    assert resized_short_side(240, 320, 224) == (224, 299)  # 298.67 rounds to 299
    assert resized_short_side(320, 240, 224) == (299, 224)
    with pytest.raises(ValueError):
        crop_offsets(30, 32, 1)


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def coded(tmp_path_factory):
    """Index-coded videos: 40 frames (long) and 6 frames (short), a list per split."""
    root = tmp_path_factory.mktemp("coded")
    write_video(str(root / "long.mp4"), index_coded_frames(40))
    write_video(str(root / "short.mp4"), index_coded_frames(6))
    entries = [("long.mp4", 0), ("short.mp4", 1), ("long.mp4", 2), ("long.mp4", 3)]
    for split in ("train", "val", "test"):
        write_list(str(root / f"{split}.csv"), entries)
    return root


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_training_clip_indices_end_to_end(coded, backend):
    args = make_args(str(coded), video_backend=backend, num_frames=8, sampling_rate=3)
    ds, _ = build_dataset(True, False, args)
    np.random.seed(0)
    for _ in range(5):
        clips, labels, index, bad = ds[0]
        assert clips.shape == (1, 3, 8, 32, 32) and clips.dtype == torch.uint8
        codes = decode_frame_codes(clips[0])
        start = codes[0]
        assert codes == [start + 3 * i for i in range(8)] and 0 <= start <= 40 - 24
        assert labels.tolist() == [0] and index == 0 and bad == []
    clips, *_ = ds[1]  # 6 frames < 8*3: 0, 3, then the last frame repeated
    assert decode_frame_codes(clips[0]) == [0, 3, 5, 5, 5, 5, 5, 5]


def test_ssv2_segment_sampling_end_to_end(coded):
    entries = [("long.mp4", c) for c in range(174)]
    write_list(str(coded / "ssv2_train.csv"), entries)
    import shutil
    d = coded / "ssv2"
    d.mkdir(exist_ok=True)
    shutil.copy(coded / "ssv2_train.csv", d / "train.csv")
    args = make_args(str(d), data_set="SSV2", nb_classes=174, data_root=str(coded), num_frames=4)
    ds, nb = build_dataset(True, False, args)
    assert nb == 174
    np.random.seed(1)
    for _ in range(5):
        codes = decode_frame_codes(ds[0][0][0])
        assert [c // 10 for c in codes] == [0, 1, 2, 3]  # one frame in each 10-frame segment


def test_validation_clip_end_to_end(coded):
    ds, _ = build_dataset(False, False, make_args(str(coded), num_frames=4, sampling_rate=2))
    clip, label, index, bad = ds[0]
    assert clip.shape == (3, 4, 32, 32) and label == 0 and index == 0 and bad == []
    assert decode_frame_codes(clip) == [16, 18, 20, 22]  # centred: (40 - 8) // 2 = 16


@pytest.mark.parametrize("segments,crops", [(5, 3), (1, 1), (1, 3), (3, 1)])
def test_test_views_temporal_starts(coded, segments, crops):
    args = make_args(str(coded), num_frames=4, sampling_rate=2, test_num_segment=segments,
                     test_num_crop=crops)
    ds, _ = build_dataset(False, True, args)
    views, label, index, bad = ds[2]
    assert views.shape == (segments * crops, 3, 4, 32, 32) and label == 2 and index == 2
    expected = [v.tolist() for v in dense_test_indices(40, 4, 2, segments)]
    for v in range(segments * crops):
        assert decode_frame_codes(views[v]) == expected[v // crops]  # segment-major order


@pytest.fixture(scope="module")
def gradient_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("gradient")
    wide = gradient_frames(12, 64, 112)  # level = 20 + 2x
    write_video(str(root / "wide.mp4"), wide)
    write_video(str(root / "tall.mp4"), wide.transpose(0, 2, 1, 3).copy())  # level = 20 + 2y
    write_list(str(root / "test.csv"), [("wide.mp4", 0), ("tall.mp4", 1)])
    return root


@pytest.mark.parametrize("crops,offsets", [(3, [0, 40, 80]), (1, [40]), (2, [0, 80])])
def test_test_views_crop_offsets(gradient_set, crops, offsets):
    # Short side 64 is kept (no resize), so each view must be exactly the decoded frames cut at
    # the expected offset: 32-pixel crops spaced along the 112-pixel long side, centred (16) on
    # the short side. The gradient makes every offset's pixels different.
    args = make_args(str(gradient_set), num_frames=2, input_size=32, short_side_size=64,
                     test_num_segment=2, test_num_crop=crops)
    ds, _ = build_dataset(False, True, args)
    for item in (0, 1):  # wide: crops move along x; tall: along y
        reader = decoders.open_video(ds.records[item].path)
        frame_idx = dense_test_indices(len(reader), 2, 2, 2)
        views = denormalize(ds[item][0])
        for v in range(2 * crops):
            frames = torch.from_numpy(reader.get_batch(frame_idx[v // crops])).permute(3, 0, 1, 2).float()
            off = offsets[v % crops]
            ref = frames[:, :, 16:48, off:off + 32] if item == 0 else frames[:, :, off:off + 32, 16:48]
            assert torch.allclose(views[v], ref, atol=1e-3), (item, v)


class _CountingReader:
    def __init__(self, reader, counts):
        self._reader, self._counts = reader, counts

    def __len__(self):
        return len(self._reader)

    def get_batch(self, indices):
        self._counts["get_batch"] += 1
        return self._reader.get_batch(indices)


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_test_mode_decodes_each_video_once(coded, monkeypatch, backend):
    counts = {"open": 0, "get_batch": 0}
    real_open = decoders.open_video

    def counting_open(path, backend="decord"):
        counts["open"] += 1
        return _CountingReader(real_open(path, backend), counts)

    monkeypatch.setattr(decoders, "open_video", counting_open)
    args = make_args(str(coded), num_frames=4, test_num_segment=5, test_num_crop=3,
                     video_backend=backend)
    ds, _ = build_dataset(False, True, args)
    once = [ds[i][0] for i in range(len(ds))]
    assert counts == {"open": len(ds), "get_batch": len(ds)}
    # Decoding per view (the baseline) gives exactly the same views, at 15 decodes per video.
    ds.decode_once = False
    counts.update(open=0, get_batch=0)
    per_view = [ds[i][0] for i in range(len(ds))]
    assert counts["get_batch"] == 15 * len(ds)
    for a, b in zip(once, per_view):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------- --sampling
@pytest.mark.parametrize("data_set,sampling,segment", [
    ("custom", "auto", False), ("UCF101", "auto", False), ("Kinetics-400", "auto", False),
    ("SSV2", "auto", True), ("custom", "segment", True), ("SSV2", "dense", False),
    ("HMDB51", "segment", True), ("SSV2", "segment", True), ("custom", "dense", False)])
def test_sampling_flag_picks_the_scheme(data_set, sampling, segment):
    nb = {"custom": 4}.get(data_set)
    cfg = make_args("x", data_set=data_set, nb_classes=nb, sampling=sampling)
    assert cfg.segment_sampling is segment
    assert cfg.train_flip is (data_set != "SSV2")  # flips follow the data set, not the sampling


def test_sampling_flag_default_and_refusal():
    assert DataConfig.sampling == "auto"
    assert make_args("x").sampling == "auto"  # flag sets without it: the data set's own
    with pytest.raises(ConfigError, match="--sampling must be one of auto, segment, dense"):
        make_args("x", sampling="tsn")
    parser = run_class_apt.get_args_parser()
    assert parser.parse_args([]).sampling == "auto"
    assert parser.parse_args(["--sampling", "segment"]).sampling == "segment"
    with pytest.raises(SystemExit):
        parser.parse_args(["--sampling", "tsn"])
    # Pre-training always samples a dense window: it has no such flag.
    assert "--sampling " not in run_mae_pretraining.get_args_parser().format_help()


def _segment_views(n, t, segments):
    """Segment test views written out independently of datasets.sampling (VideoMAE ssv2.py)."""
    tick = n / t
    return [[min(int(tick * j + tick * i / segments), n - 1) for j in range(t)]
            for i in range(segments)]


def test_custom_data_set_with_segment_sampling_end_to_end(coded):
    """--data_set custom --sampling segment: the SSV2 indices in training, validation and every
    test view (40 frames, T=4: segments of 10 frames)."""
    args = make_args(str(coded), num_frames=4, sampling_rate=3, sampling="segment",
                     test_num_segment=2, test_num_crop=1)
    train, _ = build_dataset(True, False, args)
    np.random.seed(3)
    for _ in range(5):
        codes = decode_frame_codes(train[0][0][0])
        assert [c // 10 for c in codes] == [0, 1, 2, 3]  # one frame in each segment
    val, _ = build_dataset(False, False, args)
    assert decode_frame_codes(val[0][0]) == [5, 15, 25, 35]  # segment middles
    test, _ = build_dataset(False, True, args)
    views = test[0][0]
    assert [decode_frame_codes(v) for v in views] == _segment_views(40, 4, 2) == \
        [[0, 10, 20, 30], [5, 15, 25, 35]]
    assert [decode_frame_codes(v) for v in test[1][0]] == _segment_views(6, 4, 2)  # short video


def test_ssv2_with_dense_sampling_end_to_end(coded):
    """--data_set SSV2 --sampling dense: dense windows (r=2), still never flipped."""
    d = coded / "ssv2_dense"
    d.mkdir(exist_ok=True)
    for split in ("train", "val", "test"):
        write_list(str(d / f"{split}.csv"), [("long.mp4", c) for c in range(174)])
    args = make_args(str(d), data_set="SSV2", nb_classes=174, data_root=str(coded), num_frames=4,
                     sampling_rate=2, sampling="dense", test_num_segment=2, test_num_crop=1)
    val, _ = build_dataset(False, False, args)
    assert decode_frame_codes(val[0][0]) == [16, 18, 20, 22]  # centred: (40 - 8) // 2
    test, _ = build_dataset(False, True, args)
    assert [decode_frame_codes(v) for v in test[0][0]] == [[0, 2, 4, 6], [32, 34, 36, 38]]
    train, _ = build_dataset(True, False, args)
    assert not train.config.train_flip
    np.random.seed(0)
    codes = decode_frame_codes(train[0][0][0])
    assert codes == [codes[0] + 2 * i for i in range(4)] and 0 <= codes[0] <= 32


def test_saved_flags_carry_the_sampling():
    """A checkpoint's saved --sampling is used again (tools/predict.py, --eval); a checkpoint
    saved before the flag existed samples as its data set did; an override wins."""
    saved = {"data_set": "custom", "nb_classes": 3, "transfer_type": "linear", "num_frames": 4}
    old = {"args": dict(saved), "transfer_type": "linear"}

    def segment(ckpt, overrides=None):
        return FinetuneConfig.from_checkpoint(ckpt, "ckpt", overrides).data.segment_sampling

    assert not segment(old) and segment(old, {"data_set": "SSV2"})
    new = {"args": dict(saved, sampling="segment"), "transfer_type": "linear"}
    assert segment(new) and not segment(new, {"sampling": "dense"})
    assert not segment(new, {"sampling": "auto"}) and segment(new, {"sampling": None})
