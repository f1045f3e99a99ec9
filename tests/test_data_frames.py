"""Frame folders: tools/extract_frames.py (counts, pixels, sizes, resumability, failures, the
written list file) and the fast JPEG path of FrameFolderReader (same pixels as PIL)."""
import logging
import os

import numpy as np
import pytest
from PIL import Image

from datasets import build_dataset, decoders, open_video
from datasets.decoders import VideoDecodeError
from tests.data_helpers import (decode_frame_codes, index_coded_frames, make_args,
                                textured_frames, write_faststart_mp4, write_frame_folder,
                                write_list, write_video)
from tools import extract_frames
from tools.extract_frames import output_size

# Odd frame counts, one per container/codec the data sets ship.
VIDEOS = {"a/h264.mp4": 13, "a/b/mpeg4.avi": 17, "vp9.webm": 11}


class _Records(logging.Handler):
    """Collects the tool's log messages (module fixtures cannot use caplog)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _run(argv):
    """main(argv) -> (exit code, log messages)."""
    handler = _Records()
    log = logging.getLogger("tools.extract_frames")
    log.addHandler(handler)
    old_level = log.level
    log.setLevel(logging.INFO)
    try:
        return extract_frames.main(argv), handler.messages
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    """Videos (three codecs, two index-coded, one corrupt) in a list file, extracted once with
    2 workers at quality 95."""
    root = tmp_path_factory.mktemp("frames")
    vids, out = root / "vids", root / "out"
    for k, (rel, n) in enumerate(VIDEOS.items()):
        (vids / rel).parent.mkdir(parents=True, exist_ok=True)
        write_video(str(vids / rel), textured_frames(n, 72, 112, seed=k))
    write_video(str(vids / "long.mp4"), index_coded_frames(37))
    write_video(str(vids / "short.mp4"), index_coded_frames(5))
    (vids / "bad.mp4").write_bytes(np.random.default_rng(0).bytes(4000))  # garbage
    entries = [("long.mp4", 0), ("short.mp4", 1), ("a/h264.mp4", 2), ("bad.mp4", 3),
               ("a/b/mpeg4.avi", 3), ("vp9.webm", 2), ("long.mp4", 1)]
    write_list(str(vids / "train.csv"), entries)
    rc, log = _run(["--list", str(vids / "train.csv"), "--out", str(out), "--out_list",
                    str(out / "train.csv"), "--workers", "2", "--quality", "95",
                    "--log_interval", "0"])
    return dict(root=root, vids=vids, out=out, entries=entries, rc=rc, log=log)


@pytest.mark.parametrize("rel", list(VIDEOS))
def test_folders_hold_every_decoded_frame(extracted, rel):
    video = str(extracted["vids"] / rel)
    folder = str(extracted["out"] / os.path.splitext(rel)[0])
    n = VIDEOS[rel]
    counts = [len(open_video(folder))] + [len(open_video(video, b)) for b in ("decord", "pyav")]
    assert counts == [n, n, n]
    assert sorted(os.listdir(folder)) == [f"img_{i:05d}.jpg" for i in range(1, n + 1)]
    got = open_video(folder).get_batch(list(range(n))).astype(np.int16)
    want = open_video(video, "pyav").get_batch(list(range(n))).astype(np.int16)
    assert got.shape == want.shape == (n, 72, 112, 3)
    assert np.abs(got - want).mean() < 3  # JPEG at quality 95
    # File i holds decoded frame i (no shift): each is closest to its own frame.
    dist = np.abs(got[:, None] - want[None]).mean(axis=(2, 3, 4))
    assert list(dist.argmin(axis=1)) == list(range(n))


def test_corrupt_video_is_reported_and_the_rest_extracted(extracted):
    bad = str(extracted["vids"] / "bad.mp4")
    assert extracted["rc"] == 1
    reported = [m for m in extracted["log"] if m.startswith("not extracted:")]
    assert len(reported) == 1 and bad in reported[0]
    assert not os.path.exists(extracted["out"] / "bad") and not os.path.exists(
        str(extracted["out"] / "bad") + extract_frames.PARTIAL)
    summary = [m for m in extracted["log"] if m.startswith("done ")]
    # Six distinct videos (long.mp4 is listed twice): five extracted, one failed.
    assert summary and summary[0].startswith("done 5, skipped 0, failed 1 videos; 83 frames")
    assert "MB per hour of video" in summary[0]
    assert any("videos/s" in m and "ETA" in m for m in extracted["log"])


def test_cut_video_fails_without_leaving_a_folder(tmp_path):
    # A faststart mp4 cut in half keeps its header (40 frames) but stops decoding midway: a
    # folder of the first frames must not pass for the whole video.
    import av

    path = str(tmp_path / "faststart.mp4")
    data = write_faststart_mp4(path)
    with av.open(path) as c:
        end_of_21st = [p.pos + p.size for p in c.demux(video=0) if p.size][20]
    # Cut inside a packet (the decoder raises) and after a whole packet (decoding just ends).
    for k, size in enumerate((len(data) // 2, end_of_21st)):
        cut = str(tmp_path / f"cut{k}.mp4")
        open(cut, "wb").write(data[:size])
        folder = str(tmp_path / "out" / f"cut{k}")
        result = extract_frames.extract_video(cut, folder)
        assert result.reason and "frames)" in result.reason, result
        assert not os.path.exists(folder) and not os.path.exists(folder + extract_frames.PARTIAL)
    assert "header claims 40 frames" in result.reason


def test_out_list_trains_like_the_videos(extracted):
    lines = (extracted["out"] / "train.csv").read_text().splitlines()
    # Same lines and labels, the folders (relative to --out) as paths; the failed video keeps its
    # line, so training reports it as a bad video instead of silently dropping it.
    assert lines == [f"{os.path.splitext(p)[0]} {label}" for p, label in extracted["entries"]]
    kw = dict(num_frames=8, sampling_rate=3)
    from_videos, _ = build_dataset(True, False, make_args(str(extracted["vids"]), **kw))
    from_frames, _ = build_dataset(True, False, make_args(str(extracted["out"]), **kw))
    assert os.path.isdir(from_frames.records[0].path)
    for index in (0, 1):  # long (37 frames) and short (5 frames: the last one repeats)
        for seed in range(3):
            codes = []
            for ds in (from_videos, from_frames):
                np.random.seed(seed)
                clips, labels, i, bad = ds[index]
                assert i == index and bad == []
                codes.append(decode_frame_codes(clips[0]))
            assert codes[0] == codes[1], (index, seed)
    assert codes[1] == [0, 3, 4, 4, 4, 4, 4, 4]


def test_short_side_scales_down_only(tmp_path):
    video = tmp_path / "v" / "clip.mp4"
    video.parent.mkdir()
    write_video(str(video), textured_frames(3, 72, 112))
    for short_side, size in ((36, (56, 36)), (50, (78, 50)), (72, (112, 72)), (200, (112, 72))):
        out = tmp_path / f"out{short_side}"
        rc, _ = _run(["--videos", str(video.parent), "--out", str(out),
                      "--short_side", str(short_side)])
        assert rc == 0
        reader = open_video(str(out / "clip"))
        assert len(reader) == 3 and reader.get_batch([2]).shape == (1, size[1], size[0], 3)
    assert output_size(48, 64, 32) == (32, 43)  # portrait: the width is the short side
    assert output_size(64, 48, 0) == (64, 48)


def test_rerun_skips_finished_and_redoes_interrupted(tmp_path):
    vids, out = tmp_path / "vids", tmp_path / "out"
    vids.mkdir()
    for name, n in (("one.mp4", 5), ("two.avi", 7)):
        write_video(str(vids / name), textured_frames(n, 48, 64))
    argv = ["--videos", str(vids), "--out", str(out)]
    assert _run(argv)[0] == 0
    first = (out / "one" / "img_00001.jpg").stat().st_mtime_ns
    # An interrupted run: two.avi's folder only exists under the temporary name, half written.
    partial = str(out / "two") + extract_frames.PARTIAL
    os.rename(out / "two", partial)
    for name in sorted(os.listdir(partial))[3:]:
        os.remove(os.path.join(partial, name))
    rc, log = _run(argv)
    assert rc == 0
    assert any(m.startswith("2 videos: 1 to extract, 1 already done (skipped)") for m in log)
    assert any(m.startswith("done 1, skipped 1, failed 0") for m in log)
    assert len(open_video(str(out / "two"))) == 7 and not os.path.exists(partial)
    assert (out / "one" / "img_00001.jpg").stat().st_mtime_ns == first  # not rewritten


@pytest.mark.parametrize("argv,flag", [
    (["--quality", "0"], "--quality"),
    (["--short_side", "-1"], "--short_side"),
    (["--workers", "0"], "--workers"),
    (["--out_list", "x.csv"], "--out_list"),
])
def test_bad_flags_name_the_flag(tmp_path, capsys, argv, flag):
    with pytest.raises(SystemExit) as info:
        extract_frames.main(["--videos", str(tmp_path), "--out", str(tmp_path / "o")] + argv)
    assert info.value.code == 2 and flag in capsys.readouterr().err


def test_missing_list_names_the_flag(tmp_path, capsys):
    with pytest.raises(SystemExit):
        extract_frames.main(["--list", str(tmp_path / "nope.csv"), "--out", str(tmp_path)])
    assert "--list" in capsys.readouterr().err


# ----------------------------------------------------------------------------- fast reader
def test_fast_jpeg_path_equals_pil(tmp_path):
    assert decoders._jpeg_decoder() is not None  # torchvision's decoder is installed here
    frames = textured_frames(6, 72, 112)
    folder = tmp_path / "f"
    write_frame_folder(str(folder), frames, quality=90)
    # Other JPEG flavours: grey, 4:4:4 chroma, progressive.
    Image.fromarray(frames[3, :, :, 0]).save(folder / "img_00004.jpg", quality=90)
    Image.fromarray(frames[4]).save(folder / "img_00005.jpg", quality=95, subsampling=0)
    Image.fromarray(frames[5]).save(folder / "img_00006.jpg", quality=75, progressive=True)
    pil = np.stack([np.asarray(Image.open(folder / f"img_{i:05d}.jpg").convert("RGB"))
                    for i in range(1, 7)])
    # libjpeg-turbo through torchvision and through PIL: bit-identical, not just close.
    np.testing.assert_array_equal(open_video(str(folder)).get_batch(list(range(6))), pil)


def test_png_frames_and_corrupt_frames(tmp_path):
    frames = textured_frames(3, 48, 64)
    png = tmp_path / "png"
    png.mkdir()
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(png / f"img_{i + 1:05d}.png")
    np.testing.assert_array_equal(open_video(str(png)).get_batch([0, 1, 2]), frames)  # lossless
    folder = tmp_path / "jpg"
    write_frame_folder(str(folder), frames)
    data = (folder / "img_00002.jpg").read_bytes()
    (folder / "img_00002.jpg").write_bytes(data[: len(data) // 2])  # truncated
    (folder / "img_00003.jpg").write_bytes(b"garbage" * 50)
    reader = open_video(str(folder))
    assert reader.get_batch([0]).shape == (1, 48, 64, 3)
    for i in (1, 2):
        with pytest.raises(VideoDecodeError) as info:
            reader.get_batch([i])
        assert info.value.path == str(folder) and f"img_{i + 1:05d}.jpg" in info.value.reason
    os.remove(folder / "img_00001.jpg")  # gone between listing and reading
    with pytest.raises(VideoDecodeError, match="img_00001.jpg"):
        reader.get_batch([0])
