"""The registered pre-training variants as plain data, importable without torch (the
``--model`` choices of ``run_mae_pretraining.py``); ``models.pretrain`` builds them."""
from typing import Dict, Tuple

# name: (encoder dim, depth, heads, decoder dim, decoder heads, matching fine-tuning --model);
# the patch size is the fine-tuning variant's.
PRETRAIN_VARIANTS: Dict[str, Tuple[int, int, int, int, int, str]] = {
    "pretrain_videomae_micro_patch16": (64, 2, 4, 32, 2, "vit_micro_patch16"),
    "pretrain_videomae_mini_patch8": (128, 4, 4, 64, 2, "vit_mini_patch8"),
    "pretrain_videomae_mini_patch16": (128, 4, 4, 64, 2, "vit_mini_patch16"),
    "pretrain_videomae_tiny_patch16_224": (192, 12, 3, 96, 3, "vit_tiny_patch16_224"),
    "pretrain_videomae_small_patch16_224": (384, 12, 6, 192, 3, "vit_small_patch16_224"),
    "pretrain_videomae_base_patch16_224": (768, 12, 12, 384, 6, "vit_base_patch16_224"),
    "pretrain_videomae_large_patch16_224": (1024, 24, 16, 512, 8, "vit_large_patch16_224"),
    "pretrain_videomae_huge_patch16_224": (1280, 32, 16, 640, 8, "vit_huge_patch16_224"),
}
