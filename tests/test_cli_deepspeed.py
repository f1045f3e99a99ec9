"""DeepSpeed as the second engine, on CPU with gloo: one and two processes train an epoch, save,
and resume; no DeepSpeed op is compiled; its checkpoints are evaluated like any other."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

import utils
from models import read_checkpoint
from tests.engine_helpers import (ROOT, final_record, read_log, run_cli, run_main,
                                  subprocess_env, tiny_argv)

pytest.importorskip("deepspeed")


@pytest.mark.parametrize("nproc", [1, 2])
def test_deepspeed_trains_saves_and_resumes(tmp_path, data, nproc):
    out = str(tmp_path / "ds")
    ext = str(tmp_path / "torch_extensions")
    env = {"TORCH_EXTENSIONS_DIR": ext}
    flags = dict(enable_deepspeed=True, dist_eval=nproc > 1, clip_grad=1.0, opt_betas=[0.9, 0.95],
                 disable_eval_during_finetuning=True, init_scale=1.0)
    port = utils.free_port() if nproc > 1 else 0
    run_cli(tiny_argv(data, out, "lora", epochs=1, **flags), nproc=nproc if nproc > 1 else 0,
            port=port, env=env, timeout=300)
    with open(os.path.join(out, "deepspeed_config.json")) as f:
        config = json.load(f)
    assert config["gradient_clipping"] == 1.0 and config["train_batch_size"] == 2 * nproc
    assert config["zero_optimization"]["stage"] == 0 and not config["bf16"]["enabled"]
    last = os.path.join(out, "checkpoint-last", "mp_rank_00_model_states.pt")
    assert os.path.isfile(last)
    saved = read_checkpoint(os.path.join(out, "checkpoint-last"))
    assert saved["epoch"] == 0 and saved["transfer_type"] == "lora"
    # frozen backbone left out: only LoRA factors, fc_norm and head
    assert all(".qkv_delta." in k or k.startswith(("fc_norm.", "head.")) for k in saved["model"])

    run_cli(tiny_argv(data, out, "lora", epochs=2, **flags), nproc=nproc if nproc > 1 else 0,
            port=utils.free_port() if nproc > 1 else 0, env=env, timeout=300)
    with open(os.path.join(out, "run.log")) as f:
        assert "resumed from" in f.read()
    assert [r["epoch"] for r in read_log(out) if "epoch" in r] == [0, 1]
    resumed = read_checkpoint(os.path.join(out, "checkpoint-last"))
    assert resumed["epoch"] == 1 and resumed["step"] == 2 * saved["step"]
    assert not os.path.exists(ext) or not os.listdir(ext), "a DeepSpeed op was compiled"

    # The DeepSpeed checkpoint evaluates (without DeepSpeed) to the same final numbers.
    trained = final_record(out)
    run_main(tiny_argv(data, str(tmp_path / "eval"), "lora", eval=True,
                       resume=os.path.join(out, "checkpoint-last")))
    again = final_record(str(tmp_path / "eval"))
    assert (again["Final top-1"], again["Final top-5"]) == (trained["Final top-1"], trained["Final top-5"])



GROUPS_SCRIPT = textwrap.dedent('''
    import gc, json, sys, weakref
    sys.path.insert(0, sys.argv[1])
    import torch.distributed as dist
    made = []
    init_process_group, new_group = dist.init_process_group, dist.new_group
    def recording_init(*args, **kwargs):
        init_process_group(*args, **kwargs)
        made.append(("default", weakref.ref(dist.group.WORLD)))
    def recording_new_group(*args, **kwargs):
        group = new_group(*args, **kwargs)
        made.append(("new_group", weakref.ref(group)))
        return group
    dist.init_process_group, dist.new_group = recording_init, recording_new_group
    import run_class_apt
    assert "deepspeed" not in sys.modules  # imported by the run, as from the command line
    status = run_class_apt.cli(sys.argv[3:])
    gc.collect()
    with open(sys.argv[2], "w") as f:
        json.dump({"status": status, "alive": [kind for kind, ref in made if ref() is not None],
                   "made": [kind for kind, _ in made]}, f)
''')


def test_deepspeed_run_leaves_no_process_group_alive(tmp_path, data):
    """After a DeepSpeed run no process group it made is alive in the process. DeepSpeed keeps
    a world group of its own (``dist.new_group``) in a module global, which torch's
    ``destroy_process_group`` leaves alive, and its TorchBackend, imported after the group
    exists, holds the default group as a default argument: both kept gloo threads and sockets
    running into interpreter exit, where a peer tearing down aborted a two-process run now and
    then ("terminate called without an active exception")."""
    script = tmp_path / "groups.py"
    script.write_text(GROUPS_SCRIPT)
    result = tmp_path / "groups.json"
    argv = tiny_argv(data, str(tmp_path / "ds"), "lora", epochs=1, enable_deepspeed=True,
                     disable_eval_during_finetuning=True)
    env = {"TORCH_EXTENSIONS_DIR": str(tmp_path / "torch_extensions")}
    proc = subprocess.run([sys.executable, str(script), ROOT, str(result), *argv], cwd=ROOT,
                          env=subprocess_env(env), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    groups = json.loads(result.read_text())
    assert groups["status"] == 0
    assert groups["made"] == ["default", "new_group"]  # the run's group and DeepSpeed's own
    assert groups["alive"] == []
