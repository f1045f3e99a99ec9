"""The original-style reference pipeline of benchmarks/bench_data.py: item shapes, and test views
that are the same work as ours (same frame indices, same crop positions); a --quick bench run."""
import os

import numpy as np
import pytest
import torch

from benchmarks.original_pipeline import MEAN, STD, OriginalStyleDataset
from datasets import build_dataset
from datasets.sampling import dense_test_indices
from tests.data_helpers import (decode_frame_codes, gradient_frames, index_coded_frames,
                                make_args, write_frame_folder, write_list, write_video)


def _pixels(clip: torch.Tensor) -> torch.Tensor:
    """Normalised float or uint8 (..., 3, T, H, W) -> float pixel values in [0, 255]."""
    if clip.dtype == torch.uint8:  # ours after the move of normalisation to the device
        return clip.float()
    mean = torch.tensor(MEAN).view(3, 1, 1, 1) * 255
    std = torch.tensor(STD).view(3, 1, 1, 1) * 255
    return clip.float() * std + mean


def _codes(clip: torch.Tensor):
    """Frame indices of an index-coded clip, whatever its dtype."""
    if clip.dtype == torch.uint8:
        mean, std = torch.tensor(MEAN).view(3, 1, 1, 1), torch.tensor(STD).view(3, 1, 1, 1)
        clip = (clip.float() / 255 - mean) / std
    return decode_frame_codes(clip)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("orig")
    write_video(str(root / "coded.mp4"), index_coded_frames(40, 32, 64))  # short side 32: no resize
    write_video(str(root / "grad.mp4"), gradient_frames(12, 64, 128, slope=1))  # resized to 32x64
    write_frame_folder(str(root / "coded_frames"), index_coded_frames(40, 32, 64), quality=90)
    write_list(str(root / "test.csv"), [("coded.mp4", 0), ("grad.mp4", 1), ("coded_frames", 2)])
    return root


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_train_items_shapes(videos, backend):
    paths = [str(videos / "coded.mp4"), str(videos / "coded_frames")]
    ds = OriginalStyleDataset(paths, [0, 1], "train", backend=backend, num_frames=4,
                              sampling_rate=2, input_size=32, num_sample=2, reprob=0.5)
    np.random.seed(0)
    for i in range(2):
        clips, labels, indices, _ = ds[i]
        assert len(clips) == 2 and labels == [i, i] and indices == [i, i]
        for clip in clips:
            assert clip.shape == (3, 4, 32, 32) and clip.dtype == torch.float32


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_test_views_match_ours(videos, backend):
    """View (segment s, crop c) of the reference has our view s*crops+c's frames and crop."""
    segments, crops = 5, 3
    args = make_args(str(videos), video_backend=backend, num_frames=4, sampling_rate=2,
                     input_size=32, short_side_size=32, test_num_segment=segments,
                     test_num_crop=crops)
    ours, _ = build_dataset(False, True, args)
    ref = OriginalStyleDataset([r.path for r in ours.records], [r.label for r in ours.records],
                               "test", backend=backend, num_frames=4, sampling_rate=2,
                               short_side_size=32, test_num_segment=segments, test_num_crop=crops)
    assert len(ref) == 3 * segments * crops
    for video in range(3):
        views = ours[video][0]
        expected = [v.tolist() for v in dense_test_indices(40, 4, 2, segments)]
        for s in range(segments):
            for c in range(crops):
                clip, label, _name, seg, crop = ref[ref.view_index(video, s, c)]
                assert clip.shape == (3, 4, 32, 32) and clip.dtype == torch.float32
                assert (label, seg, crop) == (video, s, c)
                mine = views[s * crops + c]
                if video != 1:  # index-coded: the same frames
                    assert _codes(clip) == _codes(mine) == expected[s]
                else:  # gradient 20 + x halved: level 20.5 + 2x', crops at x' 0, 16, 32
                    a, b = _pixels(clip), _pixels(mine)
                    assert (a - b).abs().mean() < 1.0, (s, c)
                    assert abs(float(a[0, 0, 16, 8]) - (20.5 + 2 * (16 * c + 8))) < 3, (s, c)


def test_bench_quick(tmp_path):
    from benchmarks import bench_data

    out = tmp_path / "data.md"
    assert bench_data.main(["--quick", "--out", str(out)]) == 0
    text = out.read_text()
    assert "| decord |" in text and "frame folder" in text and "ours/original" in text
    assert os.path.getsize(out) > 500
