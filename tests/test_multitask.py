"""Many tasks on one frozen backbone (models/multitask.py): one mixed batch, one forward pass,
each clip's logits equal to its own task's model; padded prompts masked out of the attention;
the types and backbones that cannot be shared refused with their reason."""
import os

import pytest
import torch

from engine_checkpoints import TrainingCheckpoints
from models import load_pretrained
from models.multitask import MultiTaskModel
from models.vit import Attention
from tests.helpers import TINY, tiny_clip, tiny_model

# tiny_model's backbone is vit_micro_patch16 with 4 blocks: an override the flags cannot record.
ARCH = dict(depth=TINY["depth"])
TOL = dict(rtol=1e-5, atol=1e-5)

# name -> (transfer type, classes, run_class_apt.py flags, create_model keywords)
TASKS = {
    "apt2": ("prompt", 5, ["--prompt_num_tokens", "2", "--prompt_start", "0", "--prompt_end", "3",
                           "--prompt_reparam"],
             dict(prompt_num_tokens=2, prompt_start=0, prompt_end=3, prompt_reparam=True)),
    "apt5": ("prompt", 3, ["--prompt_num_tokens", "5", "--prompt_start", "1", "--prompt_end", "2"],
             dict(prompt_num_tokens=5, prompt_start=1, prompt_end=2)),
    "linear": ("linear", 4, [], {}),
    # Per-head prompts (the tables become per head) and --use_cls pooling through `norm`.
    "apt3_heads_cls": ("prompt", 6, ["--prompt_num_tokens", "3", "--prompt_start", "2",
                                     "--prompt_end", "3", "--prompt_per_head", "--prompt_reparam",
                                     "--use_cls"],
                       dict(prompt_num_tokens=3, prompt_start=2, prompt_end=3,
                            prompt_per_head=True, prompt_reparam=True, use_mean_pooling=False)),
    "vpt": ("vpt", 3, ["--prompt_num_tokens", "2"], dict(prompt_num_tokens=2)),
    "lora": ("lora", 3, ["--lora_rank", "2"], dict(lora_rank=2)),
    "end2end": ("end2end", 3, [], {}),
}


def _flags(out, transfer_type, classes, extra, input_size=32):
    """The flags a run_class_apt.py run saves in its checkpoints."""
    import run_class_apt
    from utils.config import plain_dict
    argv = ["--model", "vit_micro_patch16", "--transfer_type", transfer_type, "--num_frames",
            "4", "--input_size", str(input_size), "--data_set", "custom", "--nb_classes",
            str(classes), "--data_path", str(out), "--output_dir", str(out), *extra]
    return plain_dict(run_class_apt.get_args_parser().parse_args(argv))


def _backbone_file(folder, seed=0):
    """A backbone file in the fine-tuned layout: the tiny model's backbone tensors only."""
    torch.manual_seed(seed)
    state = tiny_model("end2end").state_dict()
    path = os.path.join(folder, f"backbone{seed}.pth")
    torch.save({"model": {k: v for k, v in state.items()
                          if not k.startswith(("head.", "fc_norm."))}}, path)
    return path


def _trained(name, backbone, seed):
    """Task ``name``'s own model on ``backbone``, its trained tensors moved far from their
    initialisation (prompts, scales below, at and above the clamp at 1, norms, head)."""
    transfer_type, classes, _, kwargs = TASKS[name]
    torch.manual_seed(seed)
    model = tiny_model(transfer_type, num_classes=classes, **kwargs)
    load_pretrained(model, backbone)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if not p.requires_grad:
                continue
            if pname == "prompt_scale":
                p.copy_(torch.empty_like(p).uniform_(0.5, 2.0))
            elif pname.endswith("norm.weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p))
    return model.eval()


def _checkpoint(folder, name, model, backbone, input_size=32):
    """checkpoint-best.pth of ``model`` as a training run writes it (tests/test_engine_units.py
    ``_save``), with the backbone file it was trained on."""
    from utils.backend import PlainBackend
    transfer_type, classes, extra, _ = TASKS[name]
    out = os.path.join(folder, name)
    os.makedirs(out, exist_ok=True)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    backend = PlainBackend(model, optimizer, torch.device("cpu"), None, distributed=False)
    flags = _flags(out, transfer_type, classes, extra, input_size)
    return TrainingCheckpoints(out, flags, backbone_path=backbone).save("best", 3, 12, backend)


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    """name -> (checkpoint path, own model) for every task of TASKS, on one backbone file."""
    folder = str(tmp_path_factory.mktemp("multitask"))
    backbone = _backbone_file(folder)
    out = {}
    for seed, name in enumerate(TASKS, start=1):
        model = _trained(name, backbone, seed)
        out[name] = (_checkpoint(folder, name, model, backbone), model)
    return backbone, folder, out


# --- one mixed batch equals every task's own model -------------------------------------------
@pytest.mark.parametrize("fused", [True, False], ids=["sdpa", "math"])
@pytest.mark.parametrize("names", [("apt2", "apt5", "linear"),
                                   ("apt2", "apt5", "linear", "apt3_heads_cls")],
                         ids=["shared-prompts", "with-per-head-and-cls"])
def test_mixed_batch_equals_each_tasks_own_model(tasks, names, fused, monkeypatch):
    backbone, _, made = tasks
    mt = MultiTaskModel({n: made[n][0] for n in names}, backbone=backbone, architecture=ARCH)
    assert mt.num_classes == [TASKS[n][1] for n in names]
    mt.backbone.set_fused_attn(fused)
    torch.manual_seed(10)
    ids = torch.tensor([0, 2, 1, 1, 0, 2, 1, 0, 3, 3, 2][:len(names) * 2 + 3]) % len(names)
    clips = tiny_clip(batch=len(ids))
    with torch.no_grad():
        out = mt(clips, ids)
        for i, t in enumerate(ids.tolist()):
            own = made[names[t]][1]
            own.set_fused_attn(fused)
            ref = own(clips[i:i + 1])[0]
            assert out[i].shape == (TASKS[names[t]][1],)
            torch.testing.assert_close(out[i], ref, **TOL, msg=f"clip {i}, task {names[t]}")
    # The prompts matter: without them, task apt5's clip would get other logits.
    pos = ids.tolist().index(names.index("apt5"))
    with torch.no_grad(), monkeypatch.context() as m:
        m.setattr(made["apt5"][1].transfer, "extra_kv", lambda model: None)
        without = made["apt5"][1](clips[pos:pos + 1])[0]
    assert (out[pos] - without).abs().max() > 1e-2


def test_batches_with_absent_tasks_single_tasks_and_no_clips(tasks):
    backbone, _, made = tasks
    names = ("apt2", "apt5", "linear")
    mt = MultiTaskModel([made[n][0] for n in names], architecture=ARCH)  # backbone: recorded
    assert mt.task_names == [made[n][0] for n in names]
    assert os.path.samefile(mt.backbone_path, backbone)
    torch.manual_seed(11)
    clips = tiny_clip(batch=5)
    with torch.no_grad():
        for ids in ([0, 2, 2, 0, 0], [1, 1, 1, 1, 1], [2, 2, 2, 2, 2], [0, 1, 0, 1, 0]):
            grouped = mt.forward_grouped(clips, torch.tensor(ids))
            assert sorted(grouped) == sorted(set(ids))  # absent tasks: no entry
            for t, (positions, logits) in grouped.items():
                assert positions.tolist() == [i for i, x in enumerate(ids) if x == t]
                ref = made[names[t]][1](clips[positions])
                torch.testing.assert_close(logits, ref, **TOL)
        assert mt(clips[:0], torch.zeros(0, dtype=torch.long)) == []
        assert mt.forward_grouped(clips[:0], []) == {}
    with pytest.raises(ValueError, match=r"task_ids must lie in \[0, 3\)"):
        mt(clips, torch.tensor([0, 1, 2, 3, 0]))
    with pytest.raises(ValueError, match="task_ids must be a \\(B,\\) integer tensor"):
        mt(clips, torch.tensor([0, 1]))
    with pytest.raises(RuntimeError, match="inference only"):
        mt.train()
    assert mt.task_id(made["linear"][0]) == 2


# --- refusals --------------------------------------------------------------------------------
@pytest.mark.parametrize("name, reason", [
    ("vpt", "VPT inserts its prompts into the token sequence"),
    ("lora", "LoRA changes the shared qkv weights"),
    ("end2end", "end2end trains the backbone itself"),
])
def test_types_that_change_the_backbone_are_refused_with_the_reason(tasks, name, reason):
    backbone, _, made = tasks
    path = made[name][0]
    with pytest.raises(Exception, match=reason) as err:
        MultiTaskModel({"apt2": made["apt2"][0], name: path}, backbone=backbone,
                       architecture=ARCH)
    assert path in str(err.value) and f"--transfer_type {name}" in str(err.value)


def test_checkpoints_naming_apt_by_its_former_name_share_the_backbone(tasks, tmp_path):
    """Checkpoints of old runs say ``transfer_type: "prompt"`` (APT's former name): the same
    task, the same logits."""
    backbone, _, made = tasks
    ckpt = torch.load(made["apt5"][0], weights_only=False)
    assert ckpt["transfer_type"] == "apt" == ckpt["args"]["transfer_type"]  # what runs save now
    ckpt["transfer_type"] = ckpt["args"]["transfer_type"] = "prompt"
    old = str(tmp_path / "old_apt5.pth")
    torch.save(ckpt, old)
    mt = MultiTaskModel({"old": old, "linear": made["linear"][0]}, backbone=backbone,
                        architecture=ARCH)
    assert mt.transfer_types == ["apt", "linear"]
    clips = tiny_clip(batch=3)
    with torch.no_grad():
        out = mt(clips, torch.tensor([0, 1, 0]))
        for i in (0, 2):
            torch.testing.assert_close(out[i], made["apt5"][1](clips[i:i + 1])[0], **TOL)


def test_another_backbone_file_is_refused_naming_both_files(tasks):
    backbone, folder, made = tasks
    other = _backbone_file(folder, seed=5)
    path = _checkpoint(os.path.join(folder, "other"), "apt5", _trained("apt5", other, 7), other)
    with pytest.raises(Exception, match="same backbone file") as err:
        MultiTaskModel([made["apt2"][0], path], backbone=backbone, architecture=ARCH)
    assert path in str(err.value) and other in str(err.value) and backbone in str(err.value)
    # Without an explicit backbone, the first task's recorded file is taken: the same refusal.
    with pytest.raises(Exception, match="same backbone file"):
        MultiTaskModel([made["apt2"][0], path], architecture=ARCH)


def test_another_clip_shape_is_refused_naming_the_flag_and_both_files(tasks):
    backbone, folder, made = tasks
    path = _checkpoint(os.path.join(folder, "size64"), "linear", made["linear"][1], backbone,
                       input_size=64)
    with pytest.raises(Exception, match="--input_size 64") as err:
        MultiTaskModel([made["apt2"][0], path], backbone=backbone, architecture=ARCH)
    assert path in str(err.value) and made["apt2"][0] in str(err.value)


# --- the attention's key mask ----------------------------------------------------------------
@pytest.mark.parametrize("fused", [True, False], ids=["sdpa", "math"])
def test_masked_extra_keys_equal_attention_without_them(fused):
    """Per-sample prompts padded to 4 with large garbage: each sample's output equals the
    attention over its tokens and only its own prompts (counts 2, 4 and 0)."""
    torch.manual_seed(3)
    attn = Attention(64, num_heads=4, qkv_bias=True).eval()
    attn.fused_attn = fused
    with torch.no_grad():
        attn.q_bias.normal_()
        attn.v_bias.normal_()
    x = torch.randn(3, 8, 64)
    pk, pv = 5 * torch.randn(3, 1, 4, 16), 5 * torch.randn(3, 1, 4, 16)  # (B, 1, P, hd)
    counts = [2, 4, 0]
    mask = torch.arange(4)[None, :] < torch.tensor(counts)[:, None]  # (B, P)
    with torch.no_grad():
        out = attn(x, (pk, pv), mask)
        for b, c in enumerate(counts):
            ref = attn(x[b:b + 1], (pk[b, :, :c], pv[b, :, :c])) if c else attn(x[b:b + 1])
            torch.testing.assert_close(out[b:b + 1], ref, rtol=1e-5, atol=1e-6)
        # The padding would matter if it were not masked.
        assert (attn(x, (pk, pv)) - out).abs().max() > 1e-2
        # An all-True mask is the unmasked attention.
        torch.testing.assert_close(attn(x, (pk, pv), torch.ones(4, dtype=torch.bool)),
                                   attn(x, (pk, pv)), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="no extra_kv"):
        attn(x, None, mask)
    with pytest.raises(ValueError, match="boolean"):
        attn(x, (pk, pv), mask[:, :3])
