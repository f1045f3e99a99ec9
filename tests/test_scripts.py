"""The launch scripts: valid shell, and every flag they pass parses with ``get_args_parser``."""
import glob
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

import run_class_apt
from models.transfer import TRANSFER_TYPES, canonical_transfer_type
from tests.engine_helpers import ROOT

SCRIPTS = sorted(glob.glob(os.path.join(ROOT, "scripts", "**", "*.sh"), recursive=True) +
                 glob.glob(os.path.join(ROOT, "scripts", "**", "*.sbatch"), recursive=True))
DATASETS = {"ucf101": ("UCF101", 101, 5), "hmdb51": ("HMDB51", 51, 10),
            "ssv2": ("SSV2", 174, 2), "kinetics": ("Kinetics-400", 400, 5)}
KINDS = ("finetune", "linear", "vpt", "end2end", "eval")

# The command of the original project's README (SSv2, ViT-B), paths and launcher aside.
ORIGINAL_README = """--model vit_base_patch16_224 --transfer_type prompt --prompt_start 0 --prompt_end 11
--prompt_num_tokens 2 --prompt_dropout 0.1 --data_set SSV2 --nb_classes 174 --data_path DATA
--finetune MODEL.pth --log_dir OUT --output_dir OUT --batch_size 8 --batch_size_val 8
--num_sample 2 --input_size 224 --short_side_size 224 --save_ckpt_freq 10 --num_frames 16
--opt adamw --lr 0.05 --weight_decay 0.00001 --epochs 100 --warmup_epochs 10
--test_num_segment 2 --test_num_crop 3 --dist_eval --pin_mem --enable_deepspeed
--prompt_reparam --is_aa --aa rand-m4-n2-mstd0.2-inc1"""


def test_every_dataset_and_backbone_has_its_scripts():
    for ds in DATASETS:
        for bb in ("vit_small", "vit_base"):
            for kind in KINDS:
                assert os.path.isfile(os.path.join(ROOT, "scripts", ds, bb, f"{kind}.sh")), (ds, bb, kind)
    assert glob.glob(os.path.join(ROOT, "scripts", "slurm", "*.sbatch"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: os.path.relpath(p, ROOT))
def test_bash_syntax(script):
    proc = subprocess.run(["bash", "-n", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def fake_bin(tmp_path_factory):
    """``torchrun``, ``srun``, ``scontrol`` and ``python`` stand-ins that record their argv."""
    folder = tmp_path_factory.mktemp("bin")
    recorder = (f"#!{sys.executable}\nimport json, os, sys\n"
                "with open(os.environ['LAUNCH_LOG'], 'a') as f:\n"
                "    f.write(json.dumps([os.path.basename(sys.argv[0])] + sys.argv[1:]) + '\\n')\n")
    for name in ("torchrun", "srun", "fakepython"):
        path = folder / name
        path.write_text(recorder)
        path.chmod(0o755)
    scontrol = folder / "scontrol"
    scontrol.write_text("#!/bin/sh\necho node001\necho node002\n")
    scontrol.chmod(0o755)
    return str(folder)


def _launched_flags(script, fake_bin, tmp_path, extra_env=None):
    log = tmp_path / "launch.jsonl"
    env = dict(os.environ, PATH=fake_bin + os.pathsep + os.environ["PATH"], LAUNCH_LOG=str(log),
               OUTPUT_DIR=str(tmp_path / "out"), SLURM_JOB_NODELIST="node[001-002]",
               SLURM_NNODES="2", SLURM_JOB_ID="42", SLURM_SUBMIT_DIR=ROOT, PYTHON="fakepython",
               **(extra_env or {}))
    proc = subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=60,
                          cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(calls) == 1
    argv = calls[0]
    i = next(k for k, a in enumerate(argv) if a.endswith("run_class_apt.py"))
    assert os.path.samefile(argv[i], os.path.join(ROOT, "run_class_apt.py"))
    return argv[:i], run_class_apt.get_args_parser().parse_args(argv[i + 1:])


# scripts/launch.sh is sourced by the others, not run (bash -n still checks it above).
@pytest.mark.parametrize("script", [s for s in SCRIPTS
                                    if s.endswith(".sh") and os.path.basename(s) != "launch.sh"],
                         ids=lambda p: os.path.relpath(p, ROOT))
def test_script_flags_parse(script, fake_bin, tmp_path):
    launcher, args = _launched_flags(script, fake_bin, tmp_path,
                                     {"NUM_GPUS": "4", "MASTER_PORT": "29123"})
    assert launcher[0] == "torchrun" and "--nproc_per_node=4" in launcher
    assert "--master_port=29123" in launcher
    ds, bb, name = os.path.relpath(script, os.path.join(ROOT, "scripts")).split(os.sep)
    data_set, nb, segments = DATASETS[ds]
    assert (args.data_set, args.nb_classes, args.test_num_segment, args.test_num_crop) == \
        (data_set, nb, segments, 3)
    assert args.model == ("vit_small_patch16_224" if bb == "vit_small" else "vit_base_patch16_224")
    assert args.output_dir == str(tmp_path / "out")
    kind = name[:-3]
    if kind == "finetune":  # the published APT settings (values: ORIGINAL_SETTINGS below)
        assert args.transfer_type == "apt"
    elif kind == "eval":
        assert args.eval and args.resume == ""
    else:
        assert args.transfer_type == {"linear": "linear", "vpt": "vpt", "end2end": "end2end"}[kind]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: os.path.relpath(p, ROOT))
def test_scripts_spell_transfer_types_by_their_registered_names(script):
    """The scripts show the documented spelling (``apt``), not a former name the parser still
    accepts (``prompt``)."""
    with open(script) as f:
        names = re.findall(r"--transfer_type[ =]+(\S+)", f.read())
    assert all(n in TRANSFER_TYPES for n in names), names


def test_eval_script_passes_the_checkpoint(fake_bin, tmp_path):
    script = os.path.join(ROOT, "scripts", "hmdb51", "vit_base", "eval.sh")
    _, args = _launched_flags(script, fake_bin, tmp_path, {"CHECKPOINT": "/ckpt/with space.pth"})
    assert args.eval and args.resume == "/ckpt/with space.pth"


@pytest.mark.parametrize("script", [s for s in SCRIPTS if s.endswith(".sbatch")],
                         ids=lambda p: os.path.basename(p))
def test_slurm_examples_parse(script, fake_bin, tmp_path):
    launcher, args = _launched_flags(script, fake_bin, tmp_path)
    assert launcher[0] == "srun"
    if "torchrun" in launcher:
        assert "--nnodes=2" in launcher and "--rdzv_endpoint=node001:29500" in launcher
    assert args.transfer_type == "apt" and args.prompt_num_tokens == 400


def test_original_readme_command_parses_unchanged():
    args = run_class_apt.get_args_parser().parse_args(shlex.split(ORIGINAL_README))
    assert args.enable_deepspeed and args.dist_eval and args.prompt_reparam and args.is_aa
    assert (args.prompt_num_tokens, args.prompt_end, args.test_num_segment) == (2, 11, 2)
    for flag in ("--local_rank=3", "--local-rank=3"):  # both spellings of the old launcher
        assert run_class_apt.get_args_parser().parse_args([flag]).local_rank == 3


# The settings of the original code's scripts, one row per (data set, backbone, kind) that has
# one, each naming its source file: the APT paper's code (wgcban/apt) for APT and linear probing,
# VideoMAE's (MCG-NJU/VideoMAE) for end-to-end fine-tuning. Only flags the source file passes
# are listed. Where wgcban/apt has two variants (finetune_viu2.sh, finetune_viu3.sh), the viu2
# one is the source throughout (it has the paper's P: 400, and 2 on SSv2 ViT-B).
# No row (no original script): vpt.sh everywhere (the original code has no VPT), linear.sh
# except UCF101 ViT-B, end2end.sh on HMDB51 (both backbones) and UCF101 ViT-S.
_APT = ("wgcban/apt: scripts/{ds}/"
        "videomae_vpt_vit_{bb}_patch16_224_tubemasking_ratio_0.9_epoch_2400/{f}")
_VMAE = ("MCG-NJU/VideoMAE: scripts/{ds}/"
         "videomae_vit_{bb}_patch16_224_tubemasking_ratio_{r}/finetune.sh")
_APT_COMMON = dict(transfer_type="prompt", prompt_start=0, prompt_end=11, prompt_dropout=0.1,
                   num_sample=2, input_size=224, short_side_size=224, save_ckpt_freq=10,
                   num_frames=16, opt="adamw", weight_decay=1e-5, warmup_epochs=10,
                   test_num_crop=3, dist_eval=True, pin_mem=True, enable_deepspeed=True,
                   prompt_reparam=True, is_aa=True, aa="rand-m4-n2-mstd0.2-inc1")
_VMAE_COMMON = dict(transfer_type="end2end", input_size=224, short_side_size=224, num_frames=16,
                    opt="adamw", opt_betas=[0.9, 0.999], weight_decay=0.05, test_num_crop=3,
                    dist_eval=True, enable_deepspeed=True)


def _apt(ds, bb, **kw):
    return (ds, bb, "finetune.sh", dict(_APT_COMMON, **kw),
            _APT.format(ds=ds, bb=bb, f="finetune_viu2.sh"))


def _vmae(ds, bb, ratio, **kw):
    return (ds, bb, "end2end.sh", dict(_VMAE_COMMON, **kw),
            _VMAE.format(ds=ds, bb=bb, r=ratio))


ORIGINAL_SETTINGS = [
    _apt("ucf101", "base", prompt_num_tokens=400, batch_size=8, batch_size_val=8, lr=0.05,
         epochs=50, test_num_segment=5),
    _apt("ucf101", "small", prompt_num_tokens=400, batch_size=8, batch_size_val=8, lr=0.05,
         epochs=100, test_num_segment=5),
    _apt("hmdb51", "base", prompt_num_tokens=400, batch_size=8, batch_size_val=8, lr=0.05,
         epochs=100, test_num_segment=10),
    _apt("hmdb51", "small", prompt_num_tokens=400, batch_size=8, batch_size_val=8, lr=0.05,
         epochs=100, test_num_segment=10),
    _apt("kinetics", "base", prompt_num_tokens=400, batch_size=8, batch_size_val=8, lr=0.05,
         epochs=100, test_num_segment=5),
    _apt("kinetics", "small", prompt_num_tokens=400, batch_size=8, batch_size_val=8, lr=0.05,
         epochs=100, test_num_segment=5),
    _apt("ssv2", "base", prompt_num_tokens=2, batch_size=8, batch_size_val=8, lr=0.05,
         epochs=100, test_num_segment=2),
    _apt("ssv2", "small", prompt_num_tokens=400, batch_size=16, batch_size_val=16, lr=0.05,
         epochs=100, test_num_segment=2),
    ("ucf101", "base", "linear.sh",
     dict(transfer_type="linear", batch_size=8, batch_size_val=8, num_sample=2, input_size=224,
          short_side_size=224, save_ckpt_freq=10, num_frames=16, opt="adamw", lr=0.01,
          weight_decay=1e-5, epochs=100, warmup_epochs=10, test_num_segment=5, test_num_crop=3,
          dist_eval=True, pin_mem=True, enable_deepspeed=True, is_aa=True,
          aa="rand-m4-n2-mstd0.2-inc1"),
     _APT.format(ds="ucf101", bb="base", f="linearprobe_viu3.sh")),
    _vmae("kinetics", "base", "0.9_epoch_1600", batch_size=6, num_sample=2, save_ckpt_freq=10,
          sampling_rate=4, lr=5e-4, epochs=75, test_num_segment=5),
    _vmae("kinetics", "small", "0.9_epoch_1600", batch_size=12, num_sample=2, save_ckpt_freq=10,
          sampling_rate=4, lr=5e-4, epochs=150, test_num_segment=5),
    _vmae("ssv2", "base", "0.9_epoch_2400", batch_size=6, num_sample=2, save_ckpt_freq=10,
          lr=5e-4, epochs=30, test_num_segment=2),
    _vmae("ssv2", "small", "0.9_epoch_2400", batch_size=12, num_sample=2, save_ckpt_freq=10,
          lr=1e-3, layer_decay=0.7, epochs=40, test_num_segment=2),
    _vmae("ucf101", "base", "0.75_epoch_3200", batch_size=16, save_ckpt_freq=50,
          sampling_rate=4, num_sample=2, lr=5e-4, warmup_lr=1e-8, min_lr=1e-5, layer_decay=0.7,
          epochs=100, test_num_segment=5, fc_drop_rate=0.5, drop_path=0.2, use_checkpoint=True),
]


def test_original_settings_table_is_one_row_per_script():
    keys = [(ds, bb, kind) for ds, bb, kind, _, _ in ORIGINAL_SETTINGS]
    assert len(keys) == len(set(keys))
    for ds, bb, kind, _, source in ORIGINAL_SETTINGS:
        repo, path = source.split(": ")
        assert repo in ("wgcban/apt", "MCG-NJU/VideoMAE") and f"/{ds}/" in path
        assert f"vit_{bb}_" in path


@pytest.mark.parametrize("row", ORIGINAL_SETTINGS, ids=lambda r: "/".join(r[:3]))
def test_script_matches_the_original(row, fake_bin, tmp_path):
    ds, bb, kind, expected, source = row
    # The original code names APT `prompt`, this project's former name of `apt`: the same value.
    expected = {**expected, "transfer_type": canonical_transfer_type(expected["transfer_type"])}
    script = os.path.join(ROOT, "scripts", ds, f"vit_{bb}", kind)
    _, args = _launched_flags(script, fake_bin, tmp_path)
    got = {key: getattr(args, key) for key in expected}
    mismatched = {k: (got[k], v) for k, v in expected.items() if got[k] != v}
    assert not mismatched, f"{script} differs from {source} (got, original): {mismatched}"
