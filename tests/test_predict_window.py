"""``tools/predict.py --window``: the timeline of a long video. The windows' starts and ends for a
known frame rate, length, window and stride; every frame decoded exactly once and the frames
held bounded by the window; each window's scores equal the model's softmax, averaged over the
crops, of the clip built here by hand from the decoded frames; the CSV and JSON; ``--tasks``
gives each checkpoint's own timeline; the plot is written; timestamps (variable frame rate), a
video shorter than a window and an unreadable one."""
import csv
import json
import os
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import prediction
from datasets import windows
from datasets.synthetic import render_clip, write_video
from datasets.transforms import IMAGENET_MEAN, IMAGENET_STD
from tests.engine_helpers import run_main, tiny_argv
from tools import predict

FPS, FRAMES = 10, 83          # 8.3 s
WINDOW, STRIDE = 1.0, 0.5     # 15 windows of the grid (the last [7, 8)) and one ending at 8.3
TRAIN = dict(epochs=3, lr=0.5, disable_eval_during_finetuning=True, save_ckpt_freq=100)


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    """83 frames of 48x60 at 10 fps: the tiny model's short side (32) needs a resize, to 32x40,
    and its 2 test crops sit 8 pixels apart. Four motions one after another, so the windows'
    scores differ."""
    rng = np.random.default_rng(3)
    frames = np.concatenate([render_clip(m, n, 48, 60, rng) for m, n in
                             (("move_right", 21), ("move_up", 21), ("rotate_clockwise", 21),
                              ("grow", 20))])
    path = str(tmp_path_factory.mktemp("long") / "long.mp4")
    write_video(path, frames, fps=FPS)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data, backbone):
    """An APT run and a linear probe on the same frozen backbone: their folders."""
    apt, linear = (str(tmp_path_factory.mktemp(n)) for n in ("apt", "linear"))
    run_main(tiny_argv(data, apt, "prompt", finetune=backbone, **TRAIN))
    run_main(tiny_argv(data, linear, "linear", finetune=backbone, prompt_num_tokens=None,
                       prompt_dropout=None, prompt_reparam=None, **TRAIN))
    return {"apt": apt, "lin": linear}


def decoded_frames(path):
    """Every frame of ``path`` as RGB, decoded here with PyAV's own conversion."""
    with av.open(path) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def reference_scores(model, frames, start, n, num_frames=4, rate=2, size=32, crops=2):
    """The model's softmax averaged over the crops of one window, the clip built by hand: the
    window's ``n`` frames from ``start``; ``num_frames`` frames ``rate`` apart, centred in it;
    each frame resized so its short side is ``size``; ``crops`` crops spread along the long
    side (first and last position for two)."""
    offset = max(n - num_frames * rate, 0) // 2
    picked = [start + min(offset + i * rate, n - 1) for i in range(num_frames)]
    x = torch.from_numpy(frames[picked]).permute(0, 3, 1, 2)               # (T, 3, H, W)
    h, w = x.shape[-2:]
    new_w = int(np.floor(w * size / h + 0.5))
    # torch's uint8 antialiased bilinear resize, as the test's (its own rounding)
    x = F.interpolate(x.contiguous(), size=(size, new_w), mode="bilinear", antialias=True,
                      align_corners=False).float()
    lefts = [0, new_w - size] if crops == 2 else [(new_w - size) // 2]
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    clips = torch.stack([((x[..., left:left + size] - mean) / std).permute(1, 0, 2, 3)
                         for left in lefts])                                 # (crops, 3, T, S, S)
    with torch.inference_mode():
        return model.eval()(clips).float().softmax(-1).mean(0)


class CountingStream(windows.FrameStream):
    """The decoder, counting what it decodes and how often each video is opened."""

    opened, yielded = [], []

    def __iter__(self):
        CountingStream.opened.append(self.path)
        for frame in super().__iter__():
            CountingStream.yielded.append((frame.index, frame.time))
            yield frame


def load(run_dir, **overrides):
    return prediction.load_model(os.path.join(run_dir, "checkpoint-last.pth"),
                                 torch.device("cpu"), {"test_num_segment": 1, **overrides})


def test_windows_scores_frames_once_and_bounded_memory(long_video, runs):
    loaded = load(runs["apt"])
    CountingStream.opened, CountingStream.yielded = [], []
    timeline, = prediction.predict_windows(loaded, [long_video], WINDOW, STRIDE, batch_size=6,
                                           stream=CountingStream)
    # the windows: 15 of the grid, then one ending at the video's end (8.3 s)
    starts = [0.5 * k for k in range(15)] + [7.3]
    assert [w.start for w in timeline.windows] == pytest.approx(starts)
    assert [w.end for w in timeline.windows] == pytest.approx([s + 1.0 for s in starts])
    assert [w.num_frames for w in timeline.windows] == [10] * 16
    assert not timeline.error
    # every frame decoded once, in order, from one opening of the file
    assert CountingStream.opened == [long_video]
    assert [i for i, _ in CountingStream.yielded] == list(range(FRAMES))
    assert [t for _, t in CountingStream.yielded] == pytest.approx([i / FPS for i in
                                                                    range(FRAMES)])
    assert timeline.frames_decoded == FRAMES
    assert timeline.max_frames_held <= WINDOW * FPS + 1  # one window (and its closing frame)
    # each window's scores: the model on the clip built by hand from the decoded frames
    frames = decoded_frames(long_video)
    assert len(frames) == FRAMES
    expected = [reference_scores(loaded.model, frames, int(round(s * FPS)), 10) for s in starts]
    for w, got, want in zip(timeline.windows, timeline.scores, expected):
        assert torch.tensor(got) == pytest.approx(want, abs=1e-5), w
    # neighbouring windows' scores differ far beyond the tolerance: a window scored on another
    # window's frames would fail the comparison above
    gaps = (torch.tensor(timeline.scores)[1:] - torch.tensor(timeline.scores)[:-1]).abs()
    assert gaps.amax(dim=1).min() > 1e-4  # 10x the tolerance


def test_cli_writes_csv_json_and_plot(tmp_path, long_video, runs, capsys):
    ckpt = os.path.join(runs["apt"], "checkpoint-last.pth")
    base = ["--resume", ckpt, long_video, "--device", "cpu", "--window", "1", "--stride", "0.5",
            "--topk", "2"]
    assert predict.main(base + ["--output", str(tmp_path / "t.json"),
                                "--plot", str(tmp_path / "plots" / "t.png")]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["video", "start", "end", "#1", "#2"]
    assert len(table) == 1 + 16 and table[1].split()[:3] == [long_video, "0.00", "1.00"]
    assert predict.main(base + ["--output", str(tmp_path / "t.csv")]) == 0
    timeline, = prediction.predict_windows(load(runs["apt"]), [long_video], WINDOW, STRIDE)
    top = timeline.topk(2)
    doc, = json.load(open(tmp_path / "t.json"))
    assert (doc["video"], doc["window"], doc["stride"], doc["frames_decoded"]) == \
        (long_video, 1.0, 0.5, FRAMES)
    assert len(doc["windows"]) == 16 and "error" not in doc
    rows = list(csv.DictReader(open(tmp_path / "t.csv")))
    assert list(rows[0]) == ["video", "start", "end", "frames", "class_1", "name_1", "prob_1",
                             "class_2", "name_2", "prob_2", "error"]
    for w, js, row, want in zip(timeline.windows, doc["windows"], rows, top):
        assert (js["start"], js["end"], js["frames"]) == (w.start, w.end, 10)
        assert (float(row["start"]), float(row["end"]), int(row["frames"])) == \
            (w.start, w.end, 10)
        assert [(t["class"], t["name"]) for t in js["topk"]] == [(c, n) for c, n, _ in want]
        assert [(int(row[f"class_{r}"]), row[f"name_{r}"]) for r in (1, 2)] == \
            [(c, n) for c, n, _ in want]
        for r, (_, _, p) in enumerate(want, 1):
            assert js["topk"][r - 1]["prob"] == pytest.approx(p, abs=1e-6)
            assert float(row[f"prob_{r}"]) == pytest.approx(p, abs=1e-6)
    png = (tmp_path / "plots" / "t.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_tasks_give_each_checkpoints_own_timeline(tmp_path, long_video, runs):
    device = torch.device("cpu")
    tasks = prediction.load_tasks(runs, device, {"test_num_segment": 1})
    got = prediction.predict_windows_tasks(tasks, [long_video], WINDOW, STRIDE, batch_size=8)
    assert [t.task for t in got] == ["apt", "lin"]
    for t in got:
        alone, = prediction.predict_windows(load(runs[t.task]), [long_video], WINDOW, STRIDE)
        assert t.windows == alone.windows
        assert torch.tensor(t.scores) == pytest.approx(torch.tensor(alone.scores), abs=1e-5)
    assert not torch.allclose(torch.tensor(got[0].scores), torch.tensor(got[1].scores))
    out = tmp_path / "tasks.csv"
    assert predict.main(["--tasks", f"apt={runs['apt']},lin={runs['lin']}", long_video,
                         "--device", "cpu", "--window", "1", "--stride", "0.5",
                         "--output", str(out)]) == 0
    rows = list(csv.DictReader(open(out)))
    assert [r["task"] for r in rows] == ["apt"] * 16 + ["lin"] * 16


def test_variable_frame_rate_windows_follow_the_timestamps(tmp_path):
    """10 frames at 10 fps, then 10 at 5 fps (timestamps in milliseconds): the windows of 1 s
    hold 10, 5 and 5 frames; the stream gives the written times."""
    path = str(tmp_path / "vfr.mkv")
    times_ms = [100 * i for i in range(10)] + [1000 + 200 * i for i in range(10)]
    frames = render_clip("move_right", 20, 32, 32, np.random.default_rng(0))
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width = stream.height = 32
        stream.pix_fmt, stream.time_base = "yuv420p", Fraction(1, 1000)
        for t, frame in zip(times_ms, frames):
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts, vf.time_base = t, Fraction(1, 1000)
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    stream = windows.FrameStream(path)
    assert [f.time for f in stream] == pytest.approx([t / 1000 for t in times_ms])
    slider = windows.SlidingWindows(1.0, 1.0)
    closed = [w for f in windows.FrameStream(path) for w, _ in slider.push(f)]
    closed += [w for w, _ in slider.finish(2.8 + 0.2)]
    assert [(w.start, w.end, w.num_frames) for w in closed] == \
        [(0.0, 1.0, 10), (1.0, 2.0, 5), (2.0, pytest.approx(3.0), 5)]


def test_short_video_is_one_window_and_unreadable_is_reported(tmp_path, runs, caplog, capsys):
    short = str(tmp_path / "short.mp4")
    write_video(short, render_clip("grow", 6, 48, 60, np.random.default_rng(1)), fps=FPS)
    broken = str(tmp_path / "broken.mp4")
    with open(broken, "wb") as f:
        f.write(os.urandom(4096))
    loaded = load(runs["apt"])
    one, bad = prediction.predict_windows(loaded, [short, broken], 2.0, 1.0)
    assert [(w.start, w.end, w.num_frames) for w in one.windows] == \
        [(0.0, pytest.approx(0.6), 6)]
    assert "shorter than one window" in caplog.text
    expected = reference_scores(loaded.model, decoded_frames(short), 0, 6)
    assert torch.tensor(one.scores[0]) == pytest.approx(expected, abs=1e-5)
    assert bad.windows == [] and "PyAV cannot open it" in bad.error
    out = tmp_path / "t.csv"
    status = predict.main(["--resume", runs["apt"], short, broken, "--device", "cpu",
                           "--window", "2", "--output", str(out)])
    assert status == 0
    assert "1 of 2 videos could not be read: " + broken in capsys.readouterr().out
    rows = list(csv.DictReader(open(out)))
    assert [r["video"] for r in rows] == [short, broken] and rows[1]["error"]
    assert predict.main(["--resume", runs["apt"], broken, "--device", "cpu",
                         "--window", "2"]) == 1


def test_window_flags_are_refused_before_any_model(tmp_path, caplog):
    video = str(tmp_path / "v.mp4")
    for flags, message in ((["--stride", "1"], "--stride needs --window"),
                           (["--plot", "p.png"], "--plot needs --window"),
                           (["--window", "0"], "--window must be > 0"),
                           (["--window", "1", "--stride", "-1"], "--stride must be > 0"),
                           (["--window", "1", "--plot", "p.txt"], "--plot p.txt")):
        assert predict.main(["--resume", "none.pth", video, *flags]) == 2
        assert message in caplog.text
