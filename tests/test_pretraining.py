"""VideoMAE pre-training pieces (docs/PRETRAINING.md): tube masks, the masked encoder, targets,
the data."""
import argparse

import numpy as np
import pytest
import torch

from datasets.masking import RandomMaskingGenerator, TubeMaskingGenerator, build_masking_generator
from datasets.pretrain_dataset import (MULTI_SCALES, build_pretraining_dataset, collate_pretrain,
                                       multi_scale_crop_params)
from datasets.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize_video
from engine_for_pretraining import masked_targets, patch_targets
from models import create_model
from models.pretrain import create_pretrain_model, finetune_model_for, list_pretrain_models
from models.vit import sincos_position_table
from tests.pretrain_helpers import synthetic_videos  # noqa: F401  (fixture)
from tests.pretrain_helpers import tiny_pretrain_model
from utils.config import PretrainDataConfig


# ------------------------------------------------------------------------------------ masking
@pytest.mark.parametrize("grid,ratio", [((4, 3, 5), 0.75), ((2, 4, 4), 0.9), ((8, 2, 2), 0.5)])
def test_tube_mask_hides_the_same_positions_in_every_frame_at_the_ratio(grid, ratio):
    t, h, w = grid
    gen = TubeMaskingGenerator(grid, ratio)
    rng = np.random.RandomState(0)
    per_frame_masked = int(ratio * h * w)  # VideoMAE rounds the per-frame count down
    seen = set()
    for _ in range(20):
        mask = gen(rng)
        assert mask.dtype == bool and mask.shape == (t * h * w,)
        frames = mask.reshape(t, h, w)  # token (i, y, x) sits at i*h*w + y*w + x
        for i in range(1, t):
            np.testing.assert_array_equal(frames[i], frames[0])
        assert frames[0].sum() == per_frame_masked
        assert mask.sum() == t * per_frame_masked == gen.total_masks
        seen.add(frames[0].tobytes())
    assert len(seen) > 1, "the spatial positions must be drawn anew for each clip"


def test_tube_mask_ratio_is_exact_when_it_divides_and_seeded_masks_repeat():
    gen = TubeMaskingGenerator((2, 4, 5), 0.9)  # 20 positions per frame, 18 masked
    mask = gen(np.random.RandomState(3))
    assert mask.mean() == pytest.approx(0.9, abs=0)
    np.testing.assert_array_equal(mask, gen(np.random.RandomState(3)))


def test_random_mask_count_and_bad_settings_name_the_flag():
    gen = RandomMaskingGenerator((2, 3, 3), 0.5)
    masks = np.stack([gen(np.random.RandomState(s)) for s in range(10)])
    assert (masks.sum(1) == 9).all()
    # Unlike tubes, random masks differ between frames at least once in ten draws.
    assert any((m.reshape(2, 9)[0] != m.reshape(2, 9)[1]).any() for m in masks)
    with pytest.raises(ValueError, match="--mask_ratio"):
        TubeMaskingGenerator((2, 2, 2), 1.0)
    with pytest.raises(ValueError, match="--mask_type"):
        build_masking_generator("block", (2, 2, 2), 0.5)


# ------------------------------------------------------------------------------------ model
def test_encoder_runs_the_finetuning_backbone_on_the_visible_tokens_only():
    model = tiny_pretrain_model().eval()
    B, t, h, w = 2, 2, 2, 2
    x = torch.randn(B, 3, 4, 32, 32)
    mask = torch.from_numpy(np.stack([TubeMaskingGenerator((t, h, w), 0.5)(np.random.RandomState(s))
                                      for s in range(B)]))
    widths = []
    hook = model.encoder.blocks[0].register_forward_pre_hook(
        lambda m, a: widths.append(a[0].shape[1]))
    with torch.no_grad():
        out = model.encoder(x, mask)
    hook.remove()
    assert widths == [4] and out.shape == (B, 4, 64)  # 8 tokens, 4 visible

    # Reference: the fine-tuning backbone with the encoder's weights, by hand on visible tokens.
    vit = create_model("vit_micro_patch16", img_size=32, all_frames=4, num_classes=0,
                       use_mean_pooling=False).eval()
    missing, unexpected = vit.load_state_dict(model.encoder.state_dict(), strict=False)
    assert missing == [] and unexpected == []
    with torch.no_grad():
        tokens = vit.patch_embed(x) + sincos_position_table(8, 64)
        ref = []
        for b in range(B):
            v = tokens[b][~mask[b]][None]  # (1, 4, 64)
            for blk in vit.blocks:
                v = blk(v)
            ref.append(vit.norm(v))
    torch.testing.assert_close(out, torch.cat(ref), rtol=0, atol=1e-5)


def test_forward_predicts_every_masked_token_and_rejects_uneven_masks():
    model = tiny_pretrain_model()
    mask = torch.tensor([[1, 1, 0, 1, 0, 1, 1, 1], [0, 1, 1, 1, 1, 1, 0, 1]], dtype=torch.bool)
    out = model(torch.randn(2, 3, 4, 32, 32), mask)
    assert out.shape == (2, 6, 3 * 2 * 16 * 16)
    with pytest.raises(ValueError, match="same number"):
        model(torch.randn(2, 3, 4, 32, 32), torch.tensor([[1] * 8, [0] * 8], dtype=torch.bool))


def test_checkpoint_keys_follow_videomae_pretraining_layout():
    sd = tiny_pretrain_model().state_dict()
    vit_keys = create_model("vit_micro_patch16", img_size=32, all_frames=4).state_dict().keys()
    backbone = {k for k in vit_keys if not k.startswith(("fc_norm.", "head."))}
    assert {k[len("encoder."):] for k in sd if k.startswith("encoder.")} == backbone | {
        "norm.weight", "norm.bias"}
    assert {"encoder.patch_embed.proj.weight", "encoder.blocks.0.attn.qkv.weight",
            "encoder.blocks.0.attn.q_bias", "encoder.norm.weight", "encoder_to_decoder.weight",
            "mask_token", "decoder.head.weight", "decoder.norm.weight"} <= set(sd)
    assert sd["decoder.head.weight"].shape == (1536, 32)  # 3 * tubelet 2 * 16 * 16 pixels
    assert all(k.startswith(("encoder.", "decoder.", "encoder_to_decoder.", "mask_token"))
               for k in sd)


def test_registered_variants_pair_with_finetuning_backbones():
    assert {"pretrain_videomae_small_patch16_224", "pretrain_videomae_base_patch16_224",
            "pretrain_videomae_large_patch16_224", "pretrain_videomae_micro_patch16",
            "pretrain_videomae_mini_patch16"} <= set(list_pretrain_models())
    with torch.device("meta"):  # shapes only, no storage
        base = create_pretrain_model("pretrain_videomae_base_patch16_224")
    assert base.encoder.embed_dim == 768 and len(base.encoder.blocks) == 12
    assert base.decoder.embed_dim == 384 and len(base.decoder.blocks) == 4
    assert finetune_model_for("pretrain_videomae_mini_patch16") == "vit_mini_patch16"
    with pytest.raises(ValueError, match="--model"):
        create_pretrain_model("vit_base_patch16_224")


# ------------------------------------------------------------------------------------ targets
def _reference_targets(videos, patch, tubelet, normalise):
    """Per-token targets by explicit loops: token (i, y, x) of the (T/t, H/p, W/p) grid, its
    pixels un-normalised to [0, 1], then per channel c over the t*p*p pixels of the patch:
    ``(v - mean_c) / (std_c + 1e-6)`` with the unbiased std; laid out (t, p, p, c)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(3, 1, 1, 1)
    B, _, T, H, W = videos.shape
    out = []
    for b in range(B):
        pixels = videos[b].double() * std + mean  # (3, T, H, W) in [0, 1]
        rows = []
        for i in range(T // tubelet):
            for y in range(H // patch):
                for x in range(W // patch):
                    cube = pixels[:, i * tubelet:(i + 1) * tubelet, y * patch:(y + 1) * patch,
                                  x * patch:(x + 1) * patch]  # (3, t, p, p)
                    chans = []
                    for c in range(3):
                        v = cube[c].reshape(-1)  # (t*p*p,) in (t, p, p) order
                        if normalise:
                            n = v.numel()
                            m = v.sum() / n
                            s = (((v - m) ** 2).sum() / (n - 1)).sqrt()
                            v = (v - m) / (s + 1e-6)
                        chans.append(v)
                    rows.append(torch.stack(chans, dim=1).reshape(-1))  # (t*p*p*3,)
        out.append(torch.stack(rows))
    return torch.stack(out).float()


@pytest.mark.parametrize("normalise", [True, False])
def test_patch_targets_match_the_per_patch_normalisation_equation(normalise):
    torch.manual_seed(1)
    videos = torch.randn(2, 3, 4, 32, 48)
    got = patch_targets(videos, patch_size=16, tubelet_size=2, normalize_target=normalise)
    ref = _reference_targets(videos, 16, 2, normalise)
    assert got.shape == (2, 2 * 2 * 3, 2 * 16 * 16 * 3)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    if normalise:  # each channel of each patch: zero mean, unit (unbiased) std
        per_channel = got.view(2, 12, 512, 3)
        torch.testing.assert_close(per_channel.mean(2), torch.zeros(2, 12, 3), atol=1e-4, rtol=0)
        torch.testing.assert_close(per_channel.std(2), torch.ones(2, 12, 3), atol=1e-3, rtol=0)


def test_masked_targets_are_the_masked_rows_of_all_targets_in_grid_order():
    torch.manual_seed(2)
    videos = torch.randn(3, 3, 4, 32, 32)
    mask = torch.from_numpy(np.stack([TubeMaskingGenerator((2, 2, 2), 0.5)(np.random.RandomState(s))
                                      for s in range(3)]))
    for normalise in (True, False):
        full = patch_targets(videos, 16, 2, normalize_target=normalise)
        got = masked_targets(videos, mask, 16, 2, normalize_target=normalise)
        torch.testing.assert_close(got, full[mask].view(3, 4, -1), rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------ data
def _data_args(data_path, **kw):
    args = dict(data_path=data_path, data_root="", num_frames=4, sampling_rate=2, input_size=32,
                tubelet_size=2, mask_type="tube", mask_ratio=0.75, video_backend="decord",
                max_bad_fraction=0.5, cache_videos=False, flip=False, data_set="custom")
    args.update(kw)
    return PretrainDataConfig.from_args(argparse.Namespace(**args))


def test_multi_scale_crop_uses_videomae_sizes_and_fixed_offsets():
    rng = np.random.RandomState(0)
    sides = [int(240 * s) for s in MULTI_SCALES]  # 240, 210, 180, 158
    for _ in range(200):
        top, left, h, w = multi_scale_crop_params(240, 320, 224, rng=rng)
        assert h in sides and w in sides  # none is within 3 pixels of 224, so none snaps
        assert abs(sides.index(h) - sides.index(w)) <= 1  # at most one scale step of distortion
        hs, ws = (240 - h) // 4, (320 - w) // 4
        assert top in {0, hs, 2 * hs, 3 * hs, 4 * hs} and left in {0, ws, 2 * ws, 3 * ws, 4 * ws}


def test_dataset_items_are_normalised_clips_with_tube_masks(synthetic_videos):
    dataset = build_pretraining_dataset(_data_args(synthetic_videos))
    assert len(dataset) == 16
    np.random.seed(0)
    videos, masks, bad = collate_pretrain([dataset[i] for i in range(3)])
    assert videos.shape == (3, 3, 4, 32, 32) and videos.dtype == torch.uint8
    assert masks.shape == (3, 8) and masks.dtype == torch.bool and bad == []
    assert (masks.view(3, 2, 4)[:, 0] == masks.view(3, 2, 4)[:, 1]).all()
    assert (masks.sum(1) == 6).all()
    normalised = normalize_video(videos)  # what the pre-training step feeds the model
    pixels = (normalised * torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)
              + torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1))
    assert torch.allclose(pixels * 255, videos.float(), atol=1e-3)
    assert pixels.min() >= -1e-4 and pixels.max() <= 1 + 1e-4 and pixels.std() > 0.05


def test_cached_dataset_gives_the_same_clips_and_replaces_bad_videos(synthetic_videos, tmp_path):
    lines = open(f"{synthetic_videos}/train.csv").read().splitlines()
    listed = tmp_path / "list.csv"
    absolute = [f"{synthetic_videos}/{line}" for line in lines[:3]]
    listed.write_text("\n".join(absolute + [f"{tmp_path}/missing.mp4 0"]) + "\n")
    plain = build_pretraining_dataset(_data_args(str(listed)))
    cached = build_pretraining_dataset(_data_args(str(listed), cache_videos=True))
    assert cached.preload(num_workers=0) == [f"{tmp_path}/missing.mp4"]
    for i in range(3):
        np.random.seed(i)
        a = plain[i]
        np.random.seed(i)
        b = cached[i]
        torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
        assert torch.equal(a[1], b[1])
    np.random.seed(0)
    clip, mask, bad = cached[3]  # the missing video is replaced by a good one and reported
    assert bad == [f"{tmp_path}/missing.mp4"] and clip.shape == (3, 4, 32, 32)


def test_flip_is_refused_for_ssv2(synthetic_videos):
    with pytest.raises(ValueError, match="--flip"):
        build_pretraining_dataset(_data_args(synthetic_videos, flip=True, data_set="SSV2"))
