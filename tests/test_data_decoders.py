"""Decoders: mp4/h264, avi/mpeg4 and webm/vp9 give the same frames with decord and PyAV; frame
folders; bad inputs raise VideoDecodeError naming the path.

Exact equality across backends is expected, not approximate: both libraries decode the same
compressed stream with FFmpeg's libavcodec, whose decoders for these codecs are bit-exact, and
both convert yuv420p to RGB with swscale's default conversion.
"""
import os

import numpy as np
import pytest

from datasets.decoders import VideoDecodeError, open_video
from tests.data_helpers import (textured_frames, write_faststart_mp4, write_frame_folder,
                                write_video)

N_FRAMES = 24


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("decoders")
    frames = textured_frames(N_FRAMES, 72, 112)
    paths = {}
    for ext in (".mp4", ".avi", ".webm"):
        paths[ext] = str(root / f"clip{ext}")
        write_video(paths[ext], frames)
    return paths, frames


@pytest.mark.parametrize("ext", [".mp4", ".avi", ".webm"])
def test_backends_decode_identical_frames(videos, ext):
    paths, source = videos
    dec = open_video(paths[ext], "decord")
    pav = open_video(paths[ext], "pyav")
    assert len(dec) == len(pav) == N_FRAMES
    all_idx = list(range(N_FRAMES))
    a, b = dec.get_batch(all_idx), pav.get_batch(all_idx)
    assert a.dtype == b.dtype == np.uint8 and a.shape == (N_FRAMES, 72, 112, 3)
    np.testing.assert_array_equal(a, b)
    # Decoded frame i is closest to written frame i (lossy coding, but no shift or reorder).
    dist = np.abs(a[:, None].astype(np.int16) - source[None].astype(np.int16)).mean(axis=(2, 3, 4))
    assert list(dist.argmin(axis=1)) == all_idx
    # Unsorted, repeated indices come back in the requested order, from either backend.
    idx = [17, 3, 3, 0, 23, 9]
    np.testing.assert_array_equal(dec.get_batch(idx), a[idx])
    np.testing.assert_array_equal(pav.get_batch(idx), a[idx])


def test_decord_failure_falls_back_to_pyav(tmp_path, caplog):
    # decord2 3.4 cannot copy out frames 96 pixels wide; the reader must still return the
    # frames (through PyAV) instead of declaring a valid video bad.
    path = str(tmp_path / "w96.mp4")
    write_video(path, textured_frames(10, 48, 96))
    expected = open_video(path, "pyav").get_batch(list(range(10)))
    with caplog.at_level("WARNING", logger="datasets.decoders"):
        got = open_video(path, "decord").get_batch(list(range(10)))
    np.testing.assert_array_equal(got, expected)


def test_frame_folder_reader(tmp_path, videos):
    paths, _ = videos
    frames = open_video(paths[".mp4"], "decord").get_batch(list(range(N_FRAMES)))
    folder = tmp_path / "frames"
    write_frame_folder(str(folder), frames)
    (folder / "notes.txt").write_text("not a frame")  # ignored: not img_%05d.jpg
    reader = open_video(str(folder))
    assert len(reader) == N_FRAMES
    from PIL import Image

    idx = [0, 5, 5, 23, 11]
    expected = np.stack([np.asarray(Image.open(folder / f"img_{i + 1:05d}.jpg").convert("RGB")) for i in idx])
    np.testing.assert_array_equal(reader.get_batch(idx), expected)
    # JPEG is lossy, but frame i is the i-th image (the numbering starts at img_00001).
    err = np.abs(reader.get_batch(list(range(N_FRAMES))).astype(int) - frames.astype(int)).mean(axis=(1, 2, 3))
    assert err.max() < 4, err


def test_frame_folder_numeric_order(tmp_path):
    # img_00010 must come after img_00009 (numeric, not just lexicographic, order).
    frames = np.stack([np.full((16, 16, 3), 20 * i, np.uint8) for i in range(11)])
    write_frame_folder(str(tmp_path), frames)
    got = open_video(str(tmp_path)).get_batch([9, 10])
    assert abs(int(got[0].mean()) - 180) <= 2 and abs(int(got[1].mean()) - 200) <= 2


def _bad_files(root):
    good = str(root / "good.mp4")
    write_video(good, textured_frames(20, 48, 64))
    data = open(good, "rb").read()
    bad = {
        "missing": str(root / "missing.mp4"),
        "empty": str(root / "empty.mp4"),
        "truncated": str(root / "truncated.mp4"),
        "not_video": str(root / "notes.mp4"),
    }
    open(bad["empty"], "wb").close()
    with open(bad["truncated"], "wb") as f:
        f.write(data[: len(data) // 2])  # moov atom at the end is lost: unreadable
    with open(bad["not_video"], "w") as f:
        f.write("this is not a video\n" * 100)
    return bad


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_bad_inputs_raise_with_path(tmp_path, backend):
    for kind, path in _bad_files(tmp_path).items():
        with pytest.raises(VideoDecodeError) as info:
            reader = open_video(path, backend)
            reader.get_batch([0])
        assert info.value.path == path and path in str(info.value), kind
    empty_dir = tmp_path / "no_frames"
    empty_dir.mkdir()
    with pytest.raises(VideoDecodeError, match="no frames"):
        open_video(str(empty_dir), backend)


def test_pyav_truncated_stream_is_bounded(tmp_path):
    # A faststart mp4 keeps its index (claiming all frames) when cut: PyAV must stop at the end
    # of the data and report the file as truncated rather than loop or return garbage.
    path = str(tmp_path / "faststart.mp4")
    data = write_faststart_mp4(path)
    cut = str(tmp_path / "cut.mp4")
    open(cut, "wb").write(data[: len(data) // 2])
    reader = open_video(cut, "pyav")
    assert len(reader) == 40  # what the header claims
    assert reader.get_batch([0, 5]).shape == (2, 48, 64, 3)  # the start still decodes
    with pytest.raises(VideoDecodeError, match="truncated"):
        reader.get_batch([39])
    # decord sees a shorter stream (its count still includes the cut packet): the start
    # decodes, the end raises the same error type; neither hangs.
    dec = open_video(cut, "decord")
    assert 0 < len(dec) < 40
    assert dec.get_batch([0]).shape == (1, 48, 64, 3)
    with pytest.raises(VideoDecodeError, match="truncated"):
        dec.get_batch([len(dec) - 1])


def test_unknown_backend_names_the_flag(videos):
    paths, _ = videos
    with pytest.raises(ValueError, match="--video_backend"):
        open_video(paths[".mp4"], "opencv")


def test_index_out_of_range(videos):
    paths, _ = videos
    reader = open_video(paths[".mp4"], "pyav")
    with pytest.raises(VideoDecodeError, match="out of range"):
        reader.get_batch([N_FRAMES])
    assert os.path.exists(paths[".mp4"])
