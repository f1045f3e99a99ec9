"""Training augmentation: shapes, clip-consistent RandAugment/erasing, no flips on SSV2, repeated
augmentation, collate functions, and video Mixup/CutMix."""
import random

import numpy as np
import pytest
import torch

from datasets import Mixup, build_dataset, collate_eval, collate_train
from datasets.rand_augment import GEOMETRIC, OPS, ClipRandAugment, OpDraw
from datasets.transforms import ToModelInput, normalize_video, random_resized_crop_params
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
    assert clips.shape == (2, 3, 8, 48, 48) and clips.dtype == torch.uint8
    assert labels.tolist() == [0, 0] and labels.dtype == torch.long and index == 0 and bad == []
    assert not torch.equal(clips[0], clips[1])  # two different augmentations of one decode
    batch = collate_train([ds[0], ds[1], ds[0]])
    assert batch[0].shape == (6, 3, 8, 48, 48) and batch[1].tolist() == [0, 0, 1, 1, 0, 0]
    assert batch[2] == []


def test_randaugment_and_erasing_are_clip_consistent(media, tmp_path):
    # A static clip stays static: every frame received the same ops, crop and flip; random
    # erasing (on the device, by the engine's ToModelInput) puts its box at the same place in
    # every frame, with new noise per frame (VideoMAE's cube erasing).
    write_list(str(tmp_path / "train.csv"), [(str(media / "still"), 0)])
    args = make_args(str(tmp_path), nb_classes=1, num_frames=8, input_size=32, is_aa=True,
                     aa="rand-m9-n4-mstd0.5-inc1", reprob=1.0, recount=2)
    ds, _ = build_dataset(True, False, args)
    np.random.seed(0)
    torch.manual_seed(0)
    batch = torch.stack([ds[0][0][0] for _ in range(6)])
    for clip in batch:
        for t in range(1, clip.shape[1]):
            assert torch.equal(clip[:, t], clip[:, 0])
    assert len({c.sum().item() for c in batch}) == 6  # but the clips differ from each other
    plain = normalize_video(batch)
    erased = ToModelInput.for_training(reprob=1.0, recount=2)(batch)
    for e, p in zip(erased, plain):
        changed = (e != p).any(dim=0)  # (T, H, W)
        assert changed[0].any()  # erased (reprob 1)
        assert all(torch.equal(changed[t], changed[0]) for t in range(1, len(changed)))
        box = e[:, :, changed[0]]  # (3, T, pixels): fresh noise in every frame
        assert not torch.equal(box[:, 0], box[:, 1])
        assert torch.equal(e[:, :, ~changed[0]], p[:, :, ~changed[0]])


RA_CONFIGS = ["rand-m9-n3-mstd0.5", "rand-m4-n2-mstd0.2-inc1", "rand-m10-n4-mstd1-inc1",
              "rand-m7-mstd0.5-tweights", "rand-m9-n2-mstd101-inc1"]


@pytest.mark.parametrize("config", RA_CONFIGS)
@pytest.mark.parametrize("interpolation", ["bicubic", "random"])
def test_clip_randaugment_draws_what_timm_draws(config, interpolation):
    """From the same generator states, a clip draws exactly the ops, arguments and interpolation
    that timm's RandAugment applies to one image, and leaves the generators as timm does: the
    distribution of ops is timm's (and the old per-frame PIL path's) by construction."""
    from PIL import Image
    clip_ra = ClipRandAugment(config, 112, interpolation)
    timm_ra = ClipRandAugment(config, 112, interpolation).ra  # the same timm policy object
    applied = []

    def recorder(name):
        def aug(img, *args, **kwargs):
            resample = kwargs.get("resample")
            # What timm's _check_args_tf draws, called by its affine ops only.
            if name in GEOMETRIC and isinstance(resample, (list, tuple)):
                resample = random.choice(resample)
            mode = {Image.Resampling.BILINEAR: "bilinear", Image.Resampling.NEAREST: "nearest"}
            applied.append((name, args, mode.get(resample, "bicubic")))
            return img
        return aug

    for op in timm_ra.ops:
        op.aug_fn = recorder(op.name)
    image = Image.new("RGB", (8, 8))
    names = set()
    for seed in range(300):
        np.random.seed(seed)
        random.seed(seed)
        drawn = clip_ra.draw()
        states = (np.random.get_state()[1].copy(), random.getstate())
        np.random.seed(seed)
        random.seed(seed)
        applied.clear()
        timm_ra(image)
        geometric = [(d.name, d.args, d.interpolation) for d in drawn]
        want = [(n, a, m if n in GEOMETRIC else "bicubic") for n, a, m in applied]
        assert geometric == want, seed
        assert np.array_equal(states[0], np.random.get_state()[1]) and states[1] == random.getstate()
        names.update(d.name for d in drawn)
    assert len(names) >= 10  # many different ops were drawn


def _smooth_clip(t=3, h=60, w=80, seed=0):
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.integers(0, 256, (t, 3, h // 6, w // 6)).astype(np.float32))
    fine = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear")
    return (fine * 0.8 + 20).round().to(torch.uint8)


# (op, args, largest difference to Pillow in grey levels, largest mean difference)
PIL_CASES = [
    ("AutoContrast", (), 0, 0), ("Equalize", (), 0, 0), ("Invert", (), 0, 0),
    ("Posterize", (3,), 0, 0), ("Posterize", (1,), 0, 0), ("Solarize", (100,), 0, 0),
    ("SolarizeAdd", (60,), 0, 0), ("Color", (1.6,), 0, 0), ("Color", (0.3,), 0, 0),
    ("Contrast", (1.5,), 0, 0), ("Contrast", (0.4,), 0, 0), ("Brightness", (1.4,), 0, 0),
    ("Brightness", (0.6,), 0, 0), ("Sharpness", (1.8,), 0, 0), ("Sharpness", (0.2,), 0, 0),
    ("Rotate", (17.0,), 8, 1.0), ("ShearX", (0.2,), 1, 0.02), ("ShearY", (-0.25,), 1, 0.02),
    ("TranslateXRel", (0.3,), 1, 0.02), ("TranslateYRel", (-0.21,), 1, 0.02),
    ("TranslateX", (13.5,), 1, 0.02), ("GaussianBlur", (1.0,), 4, 1.0),
]


@pytest.mark.parametrize("name,args,max_diff,mean_diff", PIL_CASES)
def test_clip_ops_match_pillow(name, args, max_diff, mean_diff):
    """Each tensor op on a whole clip against timm's Pillow op on each frame (what the old
    per-frame path computed): identical pixels for the colour and filter ops; shears and translations
    within one level (Pillow's cubic, float rounding); rotation within a few levels
    (grid_sample's cubic kernel is not Pillow's); the same fill outside."""
    import timm.data.auto_augment as timm_aa
    from PIL import Image
    clip = _smooth_clip()
    fill = (124, 116, 104)
    ours = OPS[name](clip, OpDraw(name, args, "bicubic"), fill)
    ref = np.stack([np.asarray(timm_aa.NAME_TO_OP[name](
        Image.fromarray(f), *args, fillcolor=fill, resample=Image.Resampling.BICUBIC))
        for f in clip.permute(0, 2, 3, 1).numpy()])
    diff = np.abs(ours.permute(0, 2, 3, 1).numpy().astype(int) - ref.astype(int))
    assert diff.max() <= max_diff and diff.mean() <= mean_diff, (diff.max(), diff.mean())
    if name in GEOMETRIC:  # bilinear: Pillow's within one level
        ours = OPS[name](clip, OpDraw(name, args, "bilinear"), fill)
        ref = np.stack([np.asarray(timm_aa.NAME_TO_OP[name](
            Image.fromarray(f), *args, fillcolor=fill, resample=Image.Resampling.BILINEAR))
            for f in clip.permute(0, 2, 3, 1).numpy()])
        assert np.abs(ours.permute(0, 2, 3, 1).numpy().astype(int) - ref).max() <= 1


@pytest.mark.parametrize("name,args", [(n, a) for n, a, _, _ in PIL_CASES])
def test_clip_ops_apply_identical_parameters_to_every_frame(name, args):
    """A clip op equals the op applied to each frame alone with the same parameters (one draw
    per clip; frame statistics such as autocontrast's range stay per frame), and a static clip
    stays static."""
    clip = _smooth_clip(t=4, seed=1)
    op = OpDraw(name, args, "bicubic")
    fill = (124, 116, 104)
    out = OPS[name](clip, op, fill)
    for t in range(clip.shape[0]):
        assert torch.equal(out[t:t + 1], OPS[name](clip[t:t + 1], op, fill))
    still = clip[:1].expand(4, -1, -1, -1).contiguous()
    out = OPS[name](still, op, fill)
    assert all(torch.equal(out[t], out[0]) for t in range(4))


def test_clip_randaugment_on_the_crop_equals_the_whole_frame_then_crop():
    """Computing only the crop's pixels gives the crop of the whole augmented frame: exactly for
    colour, filter and statistics ops; for affine ops up to float rounding of the sampling
    grid (a level now and then, which a following threshold op can turn into more)."""
    clip = _smooth_clip(t=2, h=120, w=160, seed=2)
    exact_ops = ClipRandAugment("rand-m9-n3-mstd0.5-inc1", 112)
    differing = total = 0
    np.random.seed(0)
    random.seed(0)
    for _ in range(150):
        drawn = exact_ops.draw()
        top, left, h, w = random_resized_crop_params(120, 160)
        full = exact_ops.apply(clip, drawn)[..., top:top + h, left:left + w]
        crop = exact_ops.apply(clip, drawn, (top, left, h, w))
        assert crop.shape == full.shape
        diff = (full.int() - crop.int()).abs()
        if not any(d.name in GEOMETRIC for d in drawn):
            assert diff.max() == 0, drawn
        elif not any(d.name.startswith(("Posterize", "Solarize")) for d in drawn):
            assert diff.max() <= 2, drawn
        differing += int((diff > 0).sum())
        total += diff.numel()
    assert differing / total < 0.01


def test_randaugment_at_full_magnitude_never_crashes():
    """Magnitude 10 made timm's PosterizeIncreasing ask Pillow for 0 bits (a ValueError)."""
    ra = ClipRandAugment("rand-m10-n15-mstd0.5-inc1", 32)
    clip = torch.from_numpy(np.random.RandomState(0).randint(0, 255, (2, 3, 32, 32)).astype(np.uint8))
    for seed in range(10):  # 150 op draws: posterize is applied several times
        np.random.seed(seed)
        random.seed(seed)
        assert ra(clip).shape == clip.shape


def test_unknown_randaugment_string_names_the_flag():
    with pytest.raises(ValueError, match="--aa"):
        ClipRandAugment("rand-m9-q3", 32)


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
    no_flip = make_args(str(ucf), data_set="UCF101", nb_classes=101, no_flip=True)
    assert _flipped_fraction(no_flip) == 0.0


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
