"""benchmarks/gpu_check.sh --dry: every step of the GPU check runs at the smallest size on CPU
(gloo), so the prepared script cannot rot; the JSON it writes has every step, ok or skipped."""
import json
import os
import subprocess
import sys

from tests.engine_helpers import ROOT

STEPS = ("make_data", "ddp_amp", "eval_equals_final", "fp16_clip_grad", "deepspeed_bf16_stage0",
         "deepspeed_stage2_sgd", "deepspeed_stage2_adamw", "compile", "throughput")
NEEDS_CUDA = {"fp16_clip_grad", "deepspeed_stage2_sgd", "deepspeed_stage2_adamw"}


def test_gpu_check_dry_run(tmp_path):
    out = tmp_path / "gpu_check"
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHON"] = sys.executable
    proc = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_check.sh"), "--dry",
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    with open(out / "gpu_check.json") as f:
        summary = json.load(f)
    assert summary["mode"] == "dry" and summary["machine"]["processes"] == 2
    assert list(summary["steps"]) == list(STEPS)
    for name, step in summary["steps"].items():
        expected = "skipped-needs-cuda" if name in NEEDS_CUDA else "ok"
        assert step["status"] == expected, (name, step)
    assert "needs" in summary["steps"]["deepspeed_stage2_sgd"]["reason"]
    # the trained run's final numbers came back from --eval of its checkpoint
    ddp, again = summary["steps"]["ddp_amp"], summary["steps"]["eval_equals_final"]
    assert (ddp["Final top-1"], ddp["Final top-5"]) == (again["Final top-1"], again["Final top-5"])
    tp = summary["steps"]["throughput"]
    assert tp["clips_per_s"] > 0 and tp["prompts"] == 400
    table = (out / "gpu_check.md").read_text()
    for name in STEPS:
        assert f"| {name} |" in table
    assert "skipped: needs GPU" in proc.stdout + proc.stderr
