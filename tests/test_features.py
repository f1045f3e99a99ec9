"""Feature extraction (engine_for_features, tools/extract_features.py; docs/FEATURES.md): the
features equal the model's own forward up to the head on the same test views, resumption,
bad videos, the .npz / .h5 contents, and two gloo processes against one."""
import argparse
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from datasets import VideoClsDataset, VideoRecord, collate_eval
from datasets.transforms import normalize_video
from engine_for_features import Output, extract, load_feature_model, read_features, read_videos
from models import create_model, load_pretrained
from models.transfer import folded_for_inference
from tests.engine_helpers import ROOT, subprocess_env

VIEWS = dict(test_num_segment=2, test_num_crop=2)


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A VideoMAE fine-tuned .pth of the micro ViT (5 classes) with its saved flags."""
    torch.manual_seed(4)
    model = create_model("vit_micro_patch16", num_classes=5, all_frames=4, img_size=32,
                         init_scale=1.0)
    path = str(tmp_path_factory.mktemp("released") / "videomae_finetuned.pth")
    torch.save({"model": model.state_dict(), "args": argparse.Namespace(
        num_frames=4, input_size=32, short_side_size=32, sampling_rate=2, **VIEWS)}, path)
    return path


def reference(fm, paths, tokens=False):
    """Each video's views as the test reads them, through the model's own forward_features
    (forward_tokens), averaged over the views."""
    records = [VideoRecord(p, 0, i + 1) for i, p in enumerate(paths)]
    ds = VideoClsDataset(records, "test", fm.data)
    out = []
    with torch.inference_mode(), folded_for_inference(fm.model):
        for i in range(len(ds)):
            views, _, _, _ = collate_eval([ds[i]])
            clips = normalize_video(views.flatten(0, 1))
            x = fm.model.forward_tokens(clips) if tokens else fm.model.forward_features(clips)
            out.append(x.float().mean(0).numpy())
    return out


def test_npy_features_equal_the_models_forward_and_resume(tmp_path, data, released):
    fm = load_feature_model(released, torch.device("cpu"))
    assert fm.pooling == "mean+fc_norm" and fm.data.test_views == 4
    videos = read_videos(os.path.join(data, "test.csv"))
    out = Output(str(tmp_path / "feats"), "npy", tokens=True)
    summary = extract(fm, videos, out, batch_size=4, num_workers=0)
    assert (summary["written"], summary["skipped"], summary["bad"], summary["dim"]) == (9, 0, 0, 64)
    ref, ref_tokens = reference(fm, videos.paths), reference(fm, videos.paths, tokens=True)
    for vid, r, t in zip(videos.ids, ref, ref_tokens):
        got = np.load(out.part(vid))
        assert got.shape == (64,) and np.array_equal(got, r)
        assert np.array_equal(np.load(out.part(vid, tokens=True)), t)
    assert videos.ids[0].startswith("videos/") and os.path.isfile(
        os.path.join(out.path, videos.ids[0] + ".npy"))
    # Resumed: nothing left; one removed file is extracted again, the others untouched.
    os.remove(out.part(videos.ids[4]))
    stamp = os.path.getmtime(out.part(videos.ids[0]))
    again = extract(fm, videos, out, batch_size=4, num_workers=0)
    assert (again["written"], again["skipped"]) == (1, 8)
    assert os.path.getmtime(out.part(videos.ids[0])) == stamp
    assert np.array_equal(np.load(out.part(videos.ids[4])), ref[4])


def test_other_settings_are_not_mixed_into_an_output(tmp_path, data, released):
    fm = load_feature_model(released, torch.device("cpu"), {"test_num_crop": 1})
    videos = read_videos(os.path.join(data, "test.csv"))
    extract(fm, videos, Output(str(tmp_path / "f"), "npy"), batch_size=4, num_workers=0)
    other = load_feature_model(released, torch.device("cpu"))
    with pytest.raises(ValueError, match="holds features of other settings.*views"):
        extract(other, videos, Output(str(tmp_path / "f"), "npy"), num_workers=0)


def test_a_bad_video_is_counted_and_listed(tmp_path, data, released):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    lines = open(os.path.join(data, "test.csv")).read().splitlines()[:3]
    lines = [f"{os.path.join(data, line.rsplit(' ', 1)[0])} {line.rsplit(' ', 1)[1]}"
             for line in lines] + [f"{broken} 1"]
    listed = tmp_path / "list.csv"
    listed.write_text("\n".join(lines) + "\n")
    fm = load_feature_model(released, torch.device("cpu"))
    out = Output(str(tmp_path / "feats.npz"), "npz")
    summary = extract(fm, read_videos(str(listed)), out, batch_size=4, num_workers=0)
    assert summary["bad"] == 1 and summary["written"] == 3 and summary["bad_paths"] == [str(broken)]
    assert open(out.bad_list).read().splitlines() == [str(broken)]
    table = read_features(out.path)
    assert table["features"].shape == (3, 64) and "broken" not in table["videos"]
    assert not os.path.exists(out.parts)


@pytest.mark.parametrize("fmt", ["npz", "h5"])
def test_single_file_contents_and_resume(tmp_path, data, released, fmt):
    fm = load_feature_model(released, torch.device("cpu"))
    videos = read_videos(os.path.join(data, "test.csv"))
    part = type(videos)(videos.paths[:5], videos.ids[:5], videos.labels[:5], videos.source)
    out = Output(str(tmp_path / f"feats.{fmt}"), fmt, tokens=True)
    assert extract(fm, part, out, batch_size=4, num_workers=0)["written"] == 5
    summary = extract(fm, videos, out, batch_size=4, num_workers=0)
    assert (summary["written"], summary["skipped"]) == (4, 5)
    table = read_features(out.path)
    assert table["videos"] == videos.ids
    assert table["labels"].tolist() == videos.labels
    assert table["features"].shape == (9, 64) and table["tokens"].shape == (9, 8, 64)
    assert table["settings"]["views"] == "2x2" and table["settings"]["tokens"] is True
    ref = reference(fm, videos.paths)
    assert all(np.array_equal(a, r) for a, r in zip(table["features"], ref))


def test_a_backbone_gives_its_mean_token_through_a_fresh_fc_norm(tmp_path, data, backbone):
    fm = load_feature_model(backbone, torch.device("cpu"),
                            {"num_frames": 4, "input_size": 32, "short_side_size": 32, **VIEWS})
    assert fm.kind == "videomae-pretrain backbone" and fm.class_names is None
    own = create_model("vit_micro_patch16", num_classes=0, all_frames=4, img_size=32)
    load_pretrained(own, backbone)
    videos = read_videos(os.path.join(data, "videos"))  # a folder: every video in it
    assert len(videos.ids) == 21 and videos.labels is None
    clip = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        assert torch.equal(own.eval()(clip), fm.model.eval().forward_features(clip))


def test_two_gloo_processes_give_the_features_of_one(tmp_path, data, released):
    """The reference is one process in this interpreter; the command line runs under torchrun
    with two gloo processes (each every other video, rank 0 writes the file)."""
    from utils.dist import free_port
    fm = load_feature_model(released, torch.device("cpu"))
    listed = os.path.join(data, "test.csv")
    extract(fm, read_videos(listed), Output(str(tmp_path / "one.npz"), "npz"), batch_size=4,
            num_workers=0)
    script = os.path.join(ROOT, "tools", "extract_features.py")
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
         "--master_addr=127.0.0.1", f"--master_port={free_port()}", script,
         "--checkpoint", released, "--videos", listed, "--format", "npz", "--device", "cpu",
         "--num_workers", "0", "--batch_size", "4", "--output", str(tmp_path / "two.npz")],
        cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert '"written": 9' in two.stdout and "rank 0 of 2" in two.stderr
    assert "5 on this rank" in two.stderr  # rank 0 took every other video of the 9
    a, b = read_features(str(tmp_path / "one.npz")), read_features(str(tmp_path / "two.npz"))
    assert a["videos"] == b["videos"] and len(a["videos"]) == 9
    assert np.array_equal(a["features"], b["features"])
