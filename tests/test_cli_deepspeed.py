"""DeepSpeed as the second engine, on CPU with gloo: one and two processes train an epoch, save,
and resume; no DeepSpeed op is compiled; its checkpoints are evaluated like any other."""
import json
import os

import pytest

import utils
from models import read_checkpoint
from tests.engine_helpers import final_record, read_log, run_cli, run_main, tiny_argv

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


def test_deepspeed_run_leaves_no_process_group_alive(tmp_path, data, monkeypatch):
    """After ``main`` returns, no process group made during the run is alive. DeepSpeed keeps a
    world group of its own (``dist.new_group``) in a module global, which torch's
    ``destroy_process_group`` left alive with its gloo threads and sockets until interpreter
    exit, where a peer tearing down aborted a two-process run now and then ("terminate called
    without an active exception"); the run must tear down through ``deepspeed.comm``."""
    import gc
    import weakref

    import torch.distributed as dist

    made = []
    new_group = dist.new_group

    def recording_new_group(*args, **kwargs):
        group = new_group(*args, **kwargs)
        made.append(weakref.ref(group))
        return group

    monkeypatch.setattr(dist, "new_group", recording_new_group)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)  # one process, the run makes its own group
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "torch_extensions"))
    run_main(tiny_argv(data, str(tmp_path / "ds"), "lora", epochs=1, enable_deepspeed=True,
                       disable_eval_during_finetuning=True))
    gc.collect()
    assert made, "DeepSpeed made no group of its own: this test checks nothing"
    assert not dist.is_initialized()
    assert [ref() for ref in made] == [None] * len(made)
