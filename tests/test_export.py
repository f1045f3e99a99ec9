"""``tools/export.py``: a trained checkpoint exported with torch.export (.pt2) and to ONNX gives
the eager, unfolded model's logits at the checkpoint's clip shape, and the exported graphs do
no per-forward reparameterisation work (APT's scales and LoRA's factors are folded in).

The reference is the model the test trained-like and saved itself (not the tool's own loading
path), evaluated eagerly before any folding. The graphs are compared with independent ones:
the LoRA export against the frozen backbone's (``--transfer_type linear``), the APT export with
learned scales against APT without scales, node by node.
"""
import collections
import os
import shutil
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch

import run_class_apt
import utils
from engine_checkpoints import TrainingCheckpoints
from models import create_model, create_model_from_config, load_pretrained
from tests.engine_helpers import ROOT, make_data, parse, run_main, subprocess_env, tiny_argv
from tools import export, exporting

TOL = 1e-4
LORA_RANK = 5  # alpha / rank = 2; 5 is no other dimension of the model
# The ONNX exporter's optimizer folds operations on constants of up to 8192 elements by itself,
# which would hide an unfolded APT scale on a tiny model; 2 blocks x 300 prompts x 16 exceed
# that, as the prompts of every real model do.
APT_PROMPTS = 300
FRAMES, SIZE, CLASSES = 4, 32, 3  # tiny_argv's clip shape and class count


def onnxruntime():
    return pytest.importorskip("onnxruntime", reason="onnxruntime cannot be imported (it is "
                               "pinned in requirements.txt: make install)")


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    """A VideoMAE pre-training style checkpoint of the tiny backbone (``encoder.`` keys)."""
    torch.manual_seed(1)
    model = create_model("vit_micro_patch16", num_classes=3, all_frames=FRAMES, img_size=SIZE,
                         use_mean_pooling=False)
    state = {f"encoder.{k}": v for k, v in model.state_dict().items() if not k.startswith("head.")}
    path = str(tmp_path_factory.mktemp("backbone") / "videomae_micro_pretrain.pth")
    torch.save({"model": state, "epoch": 10}, path)
    return path


def trained_like(out: str, backbone: str, transfer_type: str, **flags):
    """A checkpoint as a training run writes it (its flags, its backbone file), with every
    trained tensor set away from its initialisation: prompts, APT scales on both sides of 1
    (``max(s, 1)`` clamps), LoRA factors with B != 0, ``fc_norm`` and a non-zero head.

    Returns:
        The checkpoint's path and the eager model it holds, in eval mode and unfolded.
    """
    args = parse(tiny_argv(os.path.join(out, "no_data"), out, transfer_type, finetune=backbone,
                           **flags))
    cfg = run_class_apt.make_config(args)
    utils.seed_everything(cfg.run.seed)
    model = create_model_from_config(cfg.model)
    load_pretrained(model, backbone)
    seed = zlib.crc32(f"{transfer_type} {sorted(flags.items())}".encode())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            if name == "prompt_scale":
                p.copy_(torch.empty(p.shape).uniform_(0.3, 3.0, generator=gen))
            else:
                p.add_(torch.randn(p.shape, generator=gen) * 0.3)
    os.makedirs(out, exist_ok=True)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    from utils.backend import PlainBackend
    backend = PlainBackend(model, optimizer, torch.device("cpu"), None, distributed=False)
    path = TrainingCheckpoints(out, cfg.flags, backbone).save("last", 3, 12, backend)
    return path, model.eval()


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, backbone):
    """name -> (checkpoint, eager model)."""
    root = tmp_path_factory.mktemp("ckpts")
    made = {
        "apt": trained_like(str(root / "apt"), backbone, "prompt",
                            prompt_num_tokens=APT_PROMPTS),
        "apt_plain": trained_like(str(root / "apt_plain"), backbone, "prompt",
                                  prompt_num_tokens=APT_PROMPTS, prompt_reparam=None),
        "lora": trained_like(str(root / "lora"), backbone, "lora", lora_rank=LORA_RANK,
                             lora_alpha=10.0),
        "linear": trained_like(str(root / "linear"), backbone, "linear"),
    }
    scale = made["apt"][1].prompt_scale
    assert (scale > 1).any() and (scale < 1).any()  # folding changes prompts, and clamps
    return made


@pytest.fixture(scope="module")
def vpt(tmp_path_factory, backbone):
    """A real (one-epoch) VPT-deep run's checkpoint-last, and its model rebuilt here from the
    run's flags, the backbone and the checkpoint's tensors."""
    data = make_data(str(tmp_path_factory.mktemp("synthetic")))
    out = str(tmp_path_factory.mktemp("vpt_run"))
    argv = tiny_argv(data, out, "vpt", finetune=backbone, vpt_mode="deep", prompt_reparam=None,
                     test_num_segment=1, test_num_crop=1, init_scale=1.0)  # a non-zero head
    run_main(argv)
    path = os.path.join(out, "checkpoint-last.pth")
    model = create_model_from_config(run_class_apt.make_config(parse(argv)).model)
    load_pretrained(model, backbone)
    trained = torch.load(path, weights_only=True)["model"]
    assert {"head.weight", "fc_norm.weight"} < set(trained)  # and the prompts
    model.load_state_dict(trained, strict=False)
    return path, model.eval()


@pytest.fixture(scope="module")
def exported(ckpts, tmp_path_factory):
    """``exported(name, fmt, batch)``: the file ``tools/export.py`` writes for checkpoint
    ``name``, written once per module."""
    done = {}

    def get(name: str, fmt: str, batch: int = 1) -> str:
        if (name, fmt, batch) not in done:
            suffix = "onnx" if fmt == "onnx" else "pt2"
            out = str(tmp_path_factory.mktemp("exports") / f"{name}.{suffix}")
            assert export.main(["--resume", ckpts[name][0], "--format", fmt, "--out", out,
                                "--batch", str(batch)]) == 0
            done[name, fmt, batch] = out
        return done[name, fmt, batch]
    return get


def clip(batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, FRAMES, SIZE, SIZE,
                       generator=torch.Generator().manual_seed(1234))


def eager(model, x: torch.Tensor) -> torch.Tensor:
    assert not model.training
    with torch.no_grad():
        return model(x)


def run_onnx(path: str, x: torch.Tensor) -> np.ndarray:
    ort = onnxruntime()
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, out.name) == ("video", "logits")
    assert inp.shape == list(x.shape)  # fixed at the checkpoint's clip shape
    return session.run(["logits"], {"video": x.numpy()})[0]


def onnx_graph(path: str):
    import onnx
    model = onnx.load(path)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    return model, collections.Counter(n.op_type for n in model.graph.node), inits


# ------------------------------------------------------------------------------ torch.export
@pytest.mark.parametrize("name", ["apt", "lora"])
def test_torch_program_gives_the_eager_logits(ckpts, exported, name):
    path = exported(name, "torch", batch=2)
    program = torch.export.load(path)
    x = clip(2)
    (video,) = [n for n in program.graph.nodes if n.op == "placeholder"
                and n.name in program.graph_signature.user_inputs]
    assert tuple(video.meta["val"].shape) == (2, 3, FRAMES, SIZE, SIZE)
    with torch.no_grad():
        got = program.module()(x)
    want = eager(ckpts[name][1], x)
    assert got.shape == (2, CLASSES)
    assert (got - want).abs().max().item() < TOL


def test_torch_program_reads_no_scale_and_no_lora_factor(ckpts, exported):
    """The folded graphs read the parameters of the frozen model (plus the folded prompts),
    and no ``maximum`` (APT's clamp of its scales) or low-rank matmul is left."""
    def used_params(name):
        program = torch.export.load(exported(name, "torch", batch=2))
        used = {n.name for n in program.graph.nodes if n.op == "placeholder" and n.users}
        targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
        return {p for node, p in program.graph_signature.inputs_to_parameters.items()
                if node in used}, targets

    frozen = {n for n, _ in ckpts["linear"][1].named_parameters()}
    apt, apt_ops = used_params("apt")
    assert apt == frozen | {"prompt_embeddings_k", "prompt_embeddings_v"}
    assert not any("maximum" in t for t in apt_ops)
    lora, _ = used_params("lora")
    assert lora == frozen


# ------------------------------------------------------------------------------------- ONNX
@pytest.mark.parametrize("name", ["apt", "lora"])
def test_onnx_gives_the_eager_logits_in_onnxruntime(ckpts, exported, name):
    onnxruntime()
    path = exported(name, "onnx")
    x = clip(1)
    got = run_onnx(path, x)
    want = eager(ckpts[name][1], x).numpy()
    assert got.shape == (1, CLASSES)
    assert np.abs(got - want).max() < TOL
    model, _, _ = onnx_graph(path)
    assert {o.domain: o.version for o in model.opset_import}[""] == export.DEFAULT_OPSET


def test_onnx_lora_graph_is_the_frozen_backbones(ckpts, exported):
    """LoRA merged into qkv: the same nodes and as many weights as the frozen backbone's
    export, so no side branch is left; and the logits are not the backbone's (B != 0)."""
    onnxruntime()
    _, lora_ops, lora_inits = onnx_graph(exported("lora", "onnx"))
    _, frozen_ops, frozen_inits = onnx_graph(exported("linear", "onnx"))
    assert lora_ops == frozen_ops
    assert sum(a.size for a in lora_inits.values()) == sum(a.size for a in frozen_inits.values())
    # No factor A (rank, D) or B (3 D, rank) is left as a weight.
    assert not any(a.ndim == 2 and LORA_RANK in a.shape for a in lora_inits.values())
    lora = ckpts["lora"][1]
    x = clip(1)
    without_lora = create_model("vit_micro_patch16", transfer_type="linear",
                                num_classes=CLASSES, all_frames=FRAMES, img_size=SIZE).eval()
    without_lora.load_state_dict(
        {k: v for k, v in lora.state_dict().items() if "lora_" not in k}, strict=True)
    assert (eager(lora, x) - eager(without_lora, x)).abs().max() > 100 * TOL


def test_onnx_apt_prompts_are_folded_constants(ckpts, exported):
    """APT with learned scales exports to the graph of APT without scales: the prompts, each
    multiplied by ``max(scale, 1)`` once, are constants; no Max or scaling node is left."""
    onnxruntime()
    _, ops, inits = onnx_graph(exported("apt", "onnx"))
    _, plain_ops, _ = onnx_graph(exported("apt_plain", "onnx"))
    assert ops == plain_ops
    assert "Max" not in ops
    model = ckpts["apt"][1]
    scale = torch.clamp(model.prompt_scale.detach(), min=1.0).unsqueeze(-1)  # (L, 2, P, 1)
    folded = {"k": model.prompt_embeddings_k.detach() * scale[:, 0],
              "v": model.prompt_embeddings_v.detach() * scale[:, 1]}  # (L, P, hd)
    layers, p, hd = folded["k"].shape
    arrays = [a for a in inits.values() if a.size % (p * hd) == 0]

    def held(target: torch.Tensor) -> bool:  # a constant holding ``target`` (maybe broadcast)
        t = target.numpy()
        return any(np.allclose(s, t, rtol=0, atol=1e-7) for a in arrays
                   for s in a.reshape(-1, p, hd))

    for side in ("k", "v"):
        for i in range(layers):
            assert held(folded[side][i]), f"folded {side} prompts of block {i} not a constant"
    raw = model.prompt_embeddings_k.detach()
    changed = [i for i in range(layers) if not torch.allclose(raw[i], folded["k"][i])]
    assert changed and not any(held(raw[i]) for i in changed)  # the unfolded ones are not
    assert not any(a.shape == tuple(model.prompt_scale.shape) for a in inits.values())


# --------------------------------------------------------------------------- VPT (real run)
def test_vpt_checkpoint_of_a_real_run_exports_to_both_formats(vpt, tmp_path):
    path, model = vpt
    x = clip(1)
    want = eager(model, x)
    out = str(tmp_path / "vpt.pt2")
    assert export.main(["--resume", path, "--format", "torch", "--out", out]) == 0
    with torch.no_grad():
        got = torch.export.load(out).module()(x)
    assert (got - want).abs().max().item() < TOL
    onnxruntime()
    out = str(tmp_path / "vpt.onnx")
    assert export.main(["--resume", path, "--format", "onnx", "--out", out]) == 0
    assert np.abs(run_onnx(out, x) - want.numpy()).max() < TOL


# -------------------------------------------------------------------------- flags and errors
def test_moved_backbone_is_named_and_taken_from_finetune(ckpts, backbone, tmp_path, caplog):
    moved = str(tmp_path / "moved_backbone.pth")
    shutil.copy(backbone, moved)
    ckpt = str(tmp_path / "apt.pth")
    obj = torch.load(ckpts["apt"][0], weights_only=True)
    obj["backbone"]["path"] = str(tmp_path / "gone.pth")  # recorded where it no longer is
    torch.save(obj, ckpt)
    out = str(tmp_path / "sub" / "apt.pt2")
    assert export.main(["--resume", ckpt, "--format", "torch", "--out", out]) == 2
    assert "gone.pth" in caplog.text and "--finetune" in caplog.text
    assert not os.path.exists(out)
    caplog.clear()
    assert export.main(["--resume", ckpt, "--format", "torch", "--out", out,
                        "--finetune", moved]) == 0
    assert "wrote " + out in caplog.text and f"(1, 3, {FRAMES}, {SIZE}, {SIZE})" in caplog.text
    assert sorted(os.listdir(tmp_path / "sub")) == ["apt.pt2"]  # no temporary left behind
    with torch.no_grad():
        got = torch.export.load(out).module()(clip(1))
    assert (got - eager(ckpts["apt"][1], clip(1))).abs().max().item() < TOL


def test_checkpoint_without_flags_is_refused(ckpts, tmp_path, caplog):
    obj = torch.load(ckpts["linear"][0], weights_only=True)
    del obj["args"]
    ckpt = str(tmp_path / "no_args.pth")
    torch.save(obj, ckpt)
    assert export.main(["--resume", ckpt, "--format", "torch", "--out",
                        str(tmp_path / "x.pt2")]) == 2
    assert "no_args.pth" in caplog.text and "'args'" in caplog.text


def test_bad_flags_are_refused_before_reading_the_checkpoint(tmp_path, caplog, capsys):
    missing = str(tmp_path / "missing.pth")
    for flags, named in ((["--format", "onnx", "--opset", "17"], "--opset 17"),
                         (["--format", "torch", "--batch", "0"], "--batch")):
        with pytest.raises(SystemExit) as exit_:  # argparse's usage error
            export.main(["--resume", missing, "--out", str(tmp_path / "x"), *flags])
        assert exit_.value.code == 2 and named in capsys.readouterr().err
    assert export.main(["--resume", missing, "--out", str(tmp_path / "x"),
                        "--format", "torch"]) == 2
    assert "missing.pth" in caplog.text


def test_a_file_that_does_not_compute_the_model_fails_its_check(ckpts, tmp_path, monkeypatch,
                                                                caplog):
    real = exporting.run_exported
    monkeypatch.setattr(exporting, "run_exported", lambda *a: real(*a) + 1e-2)
    out = str(tmp_path / "bad.pt2")
    assert export.main(["--resume", ckpts["linear"][0], "--format", "torch", "--out", out]) == 1
    assert "bad.pt2" in caplog.text and "differ" in caplog.text


def test_help_runs_as_a_script():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "export.py"), "--help"],
                          cwd=ROOT, env=subprocess_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for flag in ("--resume", "--format", "--out", "--finetune", "--batch", "--opset"):
        assert flag in proc.stdout
