"""Loading every published checkpoint layout (docs/FORMATS.md)."""

import pytest
import torch

from models import CheckpointError, create_model, load_pretrained
from tests.helpers import tiny_clip, tiny_model, videomae_args

transformers = pytest.importorskip("transformers")


def _hf_config(use_mean_pooling: bool):
    return transformers.VideoMAEConfig(
        image_size=32, patch_size=16, num_channels=3, num_frames=4, tubelet_size=2,
        hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=256,
        hidden_act="gelu", qkv_bias=True, use_mean_pooling=use_mean_pooling, num_labels=7,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def _randomise(module: torch.nn.Module) -> None:
    """Non-trivial values everywhere (HF inits biases/norms to 0/1, which would hide mix-ups)."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.1 + (1.0 if p.ndim == 1 and "norm" in str(p) else 0.0))


@pytest.mark.parametrize("use_mean_pooling", [True, False])
def test_hf_videomae_folder_gives_the_same_logits(tmp_path, use_mean_pooling):
    torch.manual_seed(0)
    hf = transformers.VideoMAEForVideoClassification(_hf_config(use_mean_pooling)).eval()
    _randomise(hf)
    hf.save_pretrained(tmp_path / "hf")
    assert (tmp_path / "hf" / "model.safetensors").exists()
    model = tiny_model(use_mean_pooling=use_mean_pooling).eval()
    report = load_pretrained(model, str(tmp_path / "hf"))
    assert report.format == "hf-videomae" and report.missing == [] and report.dropped == []
    x = tiny_clip()
    with torch.no_grad():
        ref = hf(pixel_values=x.permute(0, 2, 1, 3, 4)).logits  # HF takes (B, T, C, H, W)
        out = model(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


def _backbone_state(model):
    return {k: v.clone() for k, v in model.state_dict().items()
            if not k.startswith(("head.", "fc_norm.", "norm."))}


def test_videomae_pretraining_layout_loads_with_weights_only(tmp_path):
    src = tiny_model(use_mean_pooling=False)  # pre-training encoders end with `norm`
    encoder = {f"encoder.{k}": v for k, v in src.state_dict().items() if not k.startswith(("head.",))}
    decoder = {"decoder.blocks.0.attn.qkv.weight": torch.randn(96, 32),
               "decoder.norm.weight": torch.ones(32), "decoder.head.weight": torch.randn(1536, 32),
               "encoder_to_decoder.weight": torch.randn(32, 64), "mask_token": torch.zeros(1, 1, 32)}
    path = tmp_path / "videomae_pretrain.pth"
    torch.save({"model": {**encoder, **decoder}, "args": videomae_args(), "epoch": 799}, path)

    model = tiny_model()  # mean pooling: `norm` is Identity, so encoder.norm.* is dropped too
    report = load_pretrained(model, str(path))
    assert report.format == "videomae-pretrain"
    assert set(decoder) <= set(report.dropped)
    assert {"norm.weight", "norm.bias"} <= set(report.dropped)
    assert not [k for k in report.missing if k.startswith(("blocks.", "patch_embed."))]
    assert sorted(report.missing) == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    torch.testing.assert_close(model.blocks[3].attn.qkv.weight, src.blocks[3].attn.qkv.weight)


def test_videomae_finetuned_layout_loads_and_head_of_other_class_count_is_dropped(tmp_path):
    src = tiny_model()
    path = tmp_path / "videomae_finetuned.pth"
    torch.save({"module": src.state_dict(), "args": videomae_args()}, path)

    same = tiny_model()
    report = load_pretrained(same, str(path))
    assert report.missing == [] and report.dropped == []
    x = tiny_clip()
    with torch.no_grad():
        torch.testing.assert_close(same.eval()(x), src.eval()(x))

    other = tiny_model(num_classes=3)
    report = load_pretrained(other, str(path))
    assert sorted(report.dropped) == ["head.bias", "head.weight"]
    assert sorted(report.missing) == ["head.bias", "head.weight"]


def test_backbone_prefix_and_model_prefix_and_ddp_prefix():
    src = tiny_model().state_dict()
    for sd in ({f"backbone.{k}": v for k, v in src.items()},
               {f"module.{k}": v for k, v in src.items()}):
        assert load_pretrained(tiny_model(), {"model": sd}).missing in ([], ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"])
    report = load_pretrained(tiny_model(), {"model": {f"net.{k}": v for k, v in src.items()}},
                             model_prefix="net.")
    assert report.missing == []


def test_shape_mismatch_names_keys_and_shapes(tmp_path):
    wide = create_model("vit_micro_patch16", num_classes=7, all_frames=4, img_size=32,
                        embed_dim=96, depth=4, num_heads=4)
    path = tmp_path / "wide.pth"
    torch.save({"model": wide.state_dict()}, path)
    with pytest.raises(CheckpointError) as err:
        load_pretrained(tiny_model(), str(path))
    msg = str(err.value)
    assert str(path) in msg and "blocks.0.attn.qkv.weight" in msg and "(288, 96)" in msg and "(192, 64)" in msg


def test_missing_encoder_keys_are_an_error():
    sd = {k: v for k, v in tiny_model().state_dict().items() if not k.startswith("blocks.3.")}
    with pytest.raises(CheckpointError, match="blocks.3.attn.qkv.weight"):
        load_pretrained(tiny_model(), sd)


def test_nonexistent_path_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_pretrained(tiny_model(), str(missing))


class NotAllowListed:
    pass


def test_unsafe_pickle_is_refused_with_the_flag_named(tmp_path):
    path = tmp_path / "odd.pth"
    torch.save({"model": tiny_model().state_dict(), "extra": NotAllowListed()}, path)
    with pytest.raises(CheckpointError, match="--unsafe_load"):
        load_pretrained(tiny_model(), str(path))


def test_learnable_pos_embed_of_another_grid_is_interpolated():
    src = create_model("vit_micro_patch16", num_classes=7, all_frames=8, img_size=64,
                       embed_dim=64, depth=4, num_heads=4, use_learnable_pos_emb=True)
    model = tiny_model(use_learnable_pos_emb=True)
    report = load_pretrained(model, src.state_dict())
    assert "pos_embed" in report.loaded and model.pos_embed.shape == (1, 8, 64)
    grid = src.pos_embed.reshape(4, 4, 4, 64)
    # Trilinear halving of a 4x4x4 grid averages 2x2x2 neighbourhoods exactly.
    expected = grid.reshape(2, 2, 2, 2, 2, 2, 64).mean(dim=(1, 3, 5)).reshape(1, 8, 64)
    torch.testing.assert_close(model.pos_embed.detach(), expected.detach())
