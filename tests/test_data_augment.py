"""Training augmentation: shapes, clip-consistent RandAugment/erasing, no flips on SSV2, repeated
augmentation, collate functions, and video Mixup/CutMix."""
import random

import numpy as np
import pytest
import torch

from datasets import Mixup, build_dataset, collate_eval, collate_train
from datasets.transforms import ClipRandAugment
from tests.data_helpers import (denormalize, gradient_frames, make_args, textured_frames,
                                write_frame_folder, write_list, write_video)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("augment")
    write_video(str(root / "moving.mp4"), textured_frames(20, 48, 64))
    write_video(str(root / "gradient.mp4"), gradient_frames(6, 64, 112))
    # A static clip as a frame folder: every frame is the same JPEG file content.
    still = np.repeat(textured_frames(1, 48, 64), 8, axis=0)
    write_frame_folder(str(root / "still"), still)
    return root


def test_training_clip_shapes_and_repeated_augmentation(media, tmp_path):
    write_list(str(tmp_path / "train.csv"),
               [(str(media / "moving.mp4"), 0), (str(media / "still"), 1)])
    args = make_args(str(tmp_path), nb_classes=2, num_frames=8, sampling_rate=2, input_size=48,
                     num_sample=2, is_aa=True, reprob=0.25)
    ds, _ = build_dataset(True, False, args)
    clips, labels, index, bad = ds[0]
    assert clips.shape == (2, 3, 8, 48, 48) and clips.dtype == torch.float32
    assert labels.tolist() == [0, 0] and labels.dtype == torch.long and index == 0 and bad == []
    assert not torch.equal(clips[0], clips[1])  # two different augmentations of one decode
    batch = collate_train([ds[0], ds[1], ds[0]])
    assert batch[0].shape == (6, 3, 8, 48, 48) and batch[1].tolist() == [0, 0, 1, 1, 0, 0]
    assert batch[2] == []


def test_randaugment_and_erasing_are_clip_consistent(media, tmp_path):
    # A static clip stays static: every frame received the same ops, crop, flip and box.
    write_list(str(tmp_path / "train.csv"), [(str(media / "still"), 0)])
    args = make_args(str(tmp_path), nb_classes=1, num_frames=8, input_size=32, is_aa=True,
                     aa="rand-m9-n4-mstd0.5-inc1", reprob=1.0, recount=2)
    ds, _ = build_dataset(True, False, args)
    np.random.seed(0)
    clips = [ds[0][0][0] for _ in range(6)]
    for clip in clips:
        for t in range(1, clip.shape[1]):
            assert torch.equal(clip[:, t], clip[:, 0])
    assert len({c.sum().item() for c in clips}) == 6  # but the clips differ from each other


def test_clip_randaugment_replays_timm_draws():
    # Each frame gets exactly what timm's RandAugment gives the first frame from the same state.
    frames = textured_frames(3, 48, 64)
    ra = ClipRandAugment("rand-m9-n3-mstd0.5", input_size=48)
    import random

    from PIL import Image

    np.random.seed(3)
    random.seed(3)
    out = ra(np.stack([frames[0]] * 3))
    after_clip = (np.random.get_state()[1].copy(), random.getstate())
    np.random.seed(3)
    random.seed(3)
    ref = np.asarray(ra.ra(Image.fromarray(frames[0])))
    for t in range(3):
        np.testing.assert_array_equal(out[t], ref)
    # The generators moved on exactly as after one image, so the next clip gets new draws.
    assert np.array_equal(after_clip[0], np.random.get_state()[1])
    assert after_clip[1] == random.getstate()


def _flipped_fraction(args, n=30):
    ds, _ = build_dataset(True, False, args)
    np.random.seed(0)
    flipped = 0
    for _ in range(n):
        clip = denormalize(ds[0][0][0])
        half = clip.shape[-1] // 2
        left, right = clip[..., :half].mean(), clip[..., half:].mean()
        assert abs(float(left - right)) > 1  # a crop of the gradient is never flat
        flipped += int(left > right)
    return flipped / n


def test_ssv2_is_never_flipped_other_sets_are(media, tmp_path):
    ssv2 = tmp_path / "ssv2"
    ssv2.mkdir()
    write_list(str(ssv2 / "train.csv"), [(str(media / "gradient.mp4"), c) for c in range(174)])
    assert _flipped_fraction(make_args(str(ssv2), data_set="SSV2", nb_classes=174)) == 0.0
    ucf = tmp_path / "ucf"
    ucf.mkdir()
    write_list(str(ucf / "train.csv"), [(str(media / "gradient.mp4"), c) for c in range(101)])
    frac = _flipped_fraction(make_args(str(ucf), data_set="UCF101", nb_classes=101))
    assert 0.15 < frac < 0.85  # about half
    # --no_flip: for other sets whose labels depend on left/right (e.g. the synthetic motions)
    no_flip = make_args(str(ucf), data_set="UCF101", nb_classes=101)
    no_flip.no_flip = True
    assert _flipped_fraction(no_flip) == 0.0


def test_randaugment_at_full_magnitude_never_crashes():
    """Magnitude 10 made timm's PosterizeIncreasing ask Pillow for 0 bits (a ValueError)."""
    from datasets.transforms import ClipRandAugment
    ra = ClipRandAugment("rand-m10-n15-mstd0.5-inc1", 32)
    frames = np.random.RandomState(0).randint(0, 255, (2, 32, 32, 3)).astype(np.uint8)
    for seed in range(10):  # 150 op draws: posterize is applied several times
        np.random.seed(seed)
        random.seed(seed)
        assert ra(frames).shape == frames.shape


def test_train_crop_scale_bounds_the_crop_area():
    from datasets.transforms import TrainTransform
    frames = np.zeros((2, 60, 80, 3), dtype=np.uint8)
    frames[:, :, :40] = 255  # left half white: the white share of a crop tells its extent

    def white_shares(transform, n=20):
        np.random.seed(0)
        return [float((transform(frames)[0] > 0).float().mean()) for _ in range(n)]

    # Whole-frame crops (area 1) always straddle the middle; the default (0.08-1) often does not.
    assert all(0.2 < w < 0.8 for w in white_shares(TrainTransform(32, crop_scale=(1.0, 1.0))))
    assert any(w in (0.0, 1.0) for w in white_shares(TrainTransform(32)))
    with pytest.raises(ValueError, match="--train_crop_scale"):
        TrainTransform(32, crop_scale=(0.5, 1.5))


def test_eval_items_and_collate(media, tmp_path):
    write_list(str(tmp_path / "val.csv"), [(str(media / "moving.mp4"), 1)])
    write_list(str(tmp_path / "test.csv"), [(str(media / "moving.mp4"), 1)] * 2)
    args = make_args(str(tmp_path), nb_classes=2, num_frames=4, input_size=32, short_side_size=40,
                     test_num_segment=2, test_num_crop=3)
    val, _ = build_dataset(False, False, args)
    clip, label, index, bad = val[0]
    assert clip.shape == (3, 4, 32, 32) and (label, index, bad) == (1, 0, [])
    # ImageNet normalisation: the reverse transform gives pixels in [0, 255].
    pixels = denormalize(clip)
    assert pixels.min() > -1 and pixels.max() < 256
    test, _ = build_dataset(False, True, args)
    videos, labels, indices, bad = collate_eval([test[0], test[1]])
    assert videos.shape == (2, 6, 3, 4, 32, 32) and labels.tolist() == [1, 1]
    assert indices.tolist() == [0, 1] and bad == []
    assert torch.equal(videos[0], videos[1])  # evaluation is deterministic


def _constant_batch(b=4, t=4, size=16):
    x = torch.stack([torch.full((3, t, size, size), float(i + 1)) for i in range(b)])
    return x, torch.arange(b)


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
def test_cutmix_box_spans_all_frames(mode):
    np.random.seed(0)
    mix = Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, prob=1.0, mode=mode, label_smoothing=0.0,
                num_classes=4)
    x, y = _constant_batch()
    out, target = mix(x.clone(), y)
    assert out.shape == x.shape and target.shape == (4, 4)
    for i in range(4):
        kept = out[i] == x[i]
        box = ~kept[0, 0]
        # The same spatial box in every channel and every frame.
        assert torch.equal(kept, (~box).expand_as(kept))
        assert abs(float(kept.float().mean()) - float(target[i, i])) < 1e-6  # lam = kept area


def test_mixup_blends_whole_clips():
    np.random.seed(1)
    mix = Mixup(mixup_alpha=1.0, cutmix_alpha=0.0, prob=1.0, mode="batch", label_smoothing=0.1,
                num_classes=4)
    x, y = _constant_batch()
    out, target = mix(x.clone(), y)
    lam = (float(out[0, 0, 0, 0, 0]) - 4.0) / (1.0 - 4.0)  # sample 0 is mixed with sample 3
    assert torch.allclose(out, lam * x + (1 - lam) * x.flip(0))
    assert torch.allclose(target.sum(1), torch.ones(4))
