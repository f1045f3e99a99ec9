"""The optimizer of every training script in ``scripts/`` equals the original code's.

Each script is run with a fake launcher (``tests/test_scripts.py``), its flags are parsed by
``run_class_apt``, the model of those flags is built at a small width (the transfer type, its
settings and the depth of 12 blocks are the script's), and the parameter groups our optimizer gets
(``optim_factory.build_optimizer``, as the engine calls it) are compared, tensor by tensor, with
the grouping rule of the original code written out below.
"""
import glob
import os

import pytest

import optim_factory
from models.transfer import setting_fields
from tests.engine_helpers import ROOT
from tests.helpers import tiny_model
from tests.test_scripts import _launched_flags, fake_bin  # noqa: F401  (fake_bin: a fixture)
from utils.config import OptimConfig, from_namespace

TRAINING_SCRIPTS = sorted(
    s for s in glob.glob(os.path.join(ROOT, "scripts", "**", "*.sh"), recursive=True)
    + glob.glob(os.path.join(ROOT, "scripts", "**", "*.sbatch"), recursive=True)
    if os.path.basename(s) not in ("eval.sh", "launch.sh"))

# VideoMAE's skip list, the original model's ``no_weight_decay()``.
ORIGINAL_SKIP = {"pos_embed", "cls_token"}
# The original APT code has no VPT: its prompt tokens keep this project's exemption (they are
# inputs, not weights; VPT's own code is not the reference here). Named, so the test says it.
NOT_IN_ORIGINAL = {"vpt": {"prompt_embeddings", "deep_prompt_embeddings"}}


def original_layer_id(name: str, num_layers: int) -> int:
    """VideoMAE's ``get_num_layer_for_vit`` (``num_max_layer = num_layers + 2``)."""
    if name in ("cls_token", "mask_token", "pos_embed") or name.startswith("patch_embed"):
        return 0
    if name.startswith("rel_pos_bias"):
        return num_layers + 1
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return num_layers + 1


def original_groups(model, weight_decay: float, layer_decay: float, transfer_type: str):
    """name -> (weight decay, lr scale) of the original ``get_parameter_groups``: for each
    trainable tensor, no decay if it is 1-D, its name ends in '.bias' or is in the skip list,
    else the base weight decay; with layer decay < 1, ``LayerDecayValueAssigner``'s scale
    ``layer_decay ** (num_layers + 1 - layer_id)``."""
    num_layers = len(model.blocks)
    exempt = NOT_IN_ORIGINAL.get(transfer_type, set())
    groups = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = (len(param.shape) == 1 or name.endswith(".bias") or name in ORIGINAL_SKIP
                    or name in exempt)
        scale = 1.0
        if layer_decay < 1.0:
            scale = layer_decay ** (num_layers + 1 - original_layer_id(name, num_layers))
        groups[name] = (0.0 if no_decay else weight_decay, scale)
    return groups


def script_model(args):
    """The script's network, narrow: its transfer type and settings on 12 blocks of width 64."""
    settings = {k: getattr(args, k) for k in setting_fields(args.transfer_type)}
    return tiny_model(args.transfer_type, depth=12, num_classes=args.nb_classes,
                      use_learnable_pos_emb=args.use_learnable_pos_emb, **settings)


def our_groups(optimizer):
    return {name: (group["weight_decay"], group["lr_scale"])
            for group in optimizer.param_groups for name in group["param_names"]}


@pytest.mark.parametrize("script", TRAINING_SCRIPTS, ids=lambda p: os.path.relpath(p, ROOT))
def test_script_optimizer_groups_equal_the_original(script, fake_bin, tmp_path):  # noqa: F811
    _, args = _launched_flags(script, fake_bin, tmp_path)
    assert not args.eval
    model = script_model(args)
    ours = our_groups(optim_factory.build_optimizer(from_namespace(OptimConfig, args), model))
    expected = original_groups(model, args.weight_decay, args.layer_decay, args.transfer_type)
    assert ours == expected
    if args.transfer_type == "apt":  # the case this test exists for: APT's prompts decay
        decayed = {n for n, (wd, _) in ours.items() if wd > 0}
        assert {"prompt_embeddings_k", "prompt_embeddings_v"} <= decayed
        assert "prompt_scale" in decayed or not args.prompt_reparam


def test_scripts_cover_every_kind():
    kinds = {os.path.basename(s) for s in TRAINING_SCRIPTS}
    assert {"finetune.sh", "linear.sh", "vpt.sh", "end2end.sh"} <= kinds


@pytest.mark.parametrize("flag, decayed", [([], True), (["--decay_prompts"], True),
                                           (["--no_decay_prompts"], False)])
def test_apt_prompt_decay_flags(flag, decayed):
    import run_class_apt
    args = run_class_apt.get_args_parser().parse_args(
        ["--transfer_type", "prompt", "--prompt_reparam", "--prompt_num_tokens", "2",
         "--nb_classes", "5"] + flag)
    model = script_model(args)
    ours = our_groups(optim_factory.build_optimizer(from_namespace(OptimConfig, args), model))
    for name in ("prompt_embeddings_k", "prompt_embeddings_v", "prompt_scale"):
        assert (ours[name][0] > 0) == decayed, name
