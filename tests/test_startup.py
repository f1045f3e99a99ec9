"""The command lines build their flags without the heavy libraries (docs/CONVENTIONS.md, "Entry
points: flags first, torch after"): ``--help`` and a refused flag answer without importing torch,
timm, decord, DeepSpeed or matplotlib, and a run that does not ask for DeepSpeed never imports
it. Every command line is found (``benchmarks.bench_startup.command_lines``: ``run_*.py``, and
each ``tools/*.py`` and ``benchmarks/*.py`` with a ``__main__`` block); one that may not be light
is named below with why. Import behaviour
is asserted, never a time (benchmarks/bench_startup.py measures those)."""
import json
import os
import subprocess
import sys

import pytest

from benchmarks.bench_startup import command_lines
from tests.engine_helpers import tiny_argv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = ("torch", "timm", "decord", "deepspeed", "matplotlib", "transformers")

# Command lines whose --help may still import a heavy library, each with why. For tools this
# list stays empty: a tool's flags never need torch.
HEAVY_HELP = {
    # A benchmark's module is its measurement code: torch at its top, after benchmarks.common
    # (which must set OpenMP's wait policy before torch loads). A light --help would mean moving
    # each one's code to a library module, as tools/export.py -> tools/exporting.py; not done
    # yet, since benchmarks are run (benchmarks/run_all.py, itself light), not explored flag by
    # flag. Their --help cost (about 840 MB) is in BENCHMARKS.md, "Start-up".
    **{f"benchmarks/{name}.py": "measurement code at module level" for name in (
        "bench_cache", "bench_cost", "bench_data", "bench_latency", "bench_learnability",
        "bench_multitask", "bench_train_step", "gpu_check")},
}


LIGHT_COMMANDS = [c for c in command_lines(ROOT) if c not in HEAVY_HELP]


def _heavy_modules_after(code: str) -> list:
    """The heavy libraries in ``sys.modules`` after ``code`` ran in a fresh interpreter."""
    probe = (code + "\nimport json, sys\n"
             f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("script", ["run_class_apt", "run_mae_pretraining"])
def test_building_a_scripts_parser_imports_no_heavy_library(script):
    code = (f"import {script}\nparser = {script}.get_args_parser()\n"
            f"assert '--help' in parser.format_help()\n")
    assert _heavy_modules_after(code) == []


def test_the_settings_of_a_run_are_made_without_torch():
    """The flags become a FinetuneConfig (every transfer type's settings included) and a
    refused flag is refused, all before torch is imported."""
    code = ("import run_class_apt\nfrom utils.config import ConfigError\n"
            "p = run_class_apt.get_args_parser()\n"
            "for t in ('apt', 'vpt', 'lora', 'adapter', 'approx', 'linear', 'end2end'):\n"
            "    cfg = run_class_apt.make_config(p.parse_args(['--transfer_type', t]))\n"
            "    assert cfg.model.transfer_type == t\n"
            "try:\n    run_class_apt.make_config(p.parse_args(['--prompt_num_tokens', '0']))\n"
            "except ValueError:\n    pass\nelse:\n    raise AssertionError('not refused')\n")
    assert _heavy_modules_after(code) == []


@pytest.mark.parametrize("command", LIGHT_COMMANDS)
def test_help_imports_no_heavy_library(command):
    code = ("import runpy, sys\n"
            f"sys.argv = [{command!r}, '--help']\n"
            f"try:\n    runpy.run_path({command!r}, run_name='__main__')\n"
            "except SystemExit as e:\n    assert e.code in (0, None), e.code\n")
    assert _heavy_modules_after(code) == []


@pytest.mark.parametrize("argv", [["tools/export.py", "--resume", "x.pth", "--out", "x.onnx",
                                   "--format", "onnx", "--opset", "17"],
                                  ["tools/sweep.py", "--output_dir", "x", "--cluster", "nowhere"]])
def test_a_refused_flag_imports_no_heavy_library(argv):
    code = ("import runpy, sys\n"
            f"sys.argv = {argv!r}\n"
            f"try:\n    runpy.run_path({argv[0]!r}, run_name='__main__')\n"
            "except SystemExit as e:\n    assert e.code == 2, e.code\n"
            "else:\n    raise AssertionError('not refused')\n")
    assert _heavy_modules_after(code) == []


def test_the_command_lines_are_found_and_the_exceptions_exist():
    """The enumeration sees the scripts and the tools (and no library module), and every
    exception names a command line that exists (a stale entry would hide nothing)."""
    found = command_lines(ROOT)
    assert {"run_class_apt.py", "run_mae_pretraining.py", "tools/demo.py", "tools/export.py",
            "tools/sweep.py", "tools/predict.py", "tools/compare_runs.py",
            "tools/extract_features.py", "tools/analyze_prompts.py",
            "benchmarks/bench_startup.py"} <= set(found)
    assert not {"tools/worlds.py", "tools/plots.py", "tools/run_table.py", "benchmarks/common.py"
                } & set(found)
    assert set(HEAVY_HELP) <= set(found)
    assert not [c for c in HEAVY_HELP if c.startswith("tools/")], "a tool's flags need no torch"


def test_a_run_without_deepspeed_never_imports_it(tmp_path, data):
    """DeepSpeed is imported only for ``--enable_deepspeed``: a whole fine-tuning run (train,
    validate, multi-view test) and a ``--flops`` report leave it out of ``sys.modules``."""
    run = tiny_argv(data, str(tmp_path / "run"), "prompt", epochs=1)
    flops = ["--model", "vit_micro_patch16", "--transfer_type", "lora", "--data_set", "custom",
             "--nb_classes", "3", "--input_size", "32", "--num_frames", "4", "--flops"]
    code = ("import sys\nimport run_class_apt\n"
            f"assert run_class_apt.cli({run!r}) == 0\n"
            f"assert run_class_apt.cli({flops!r}) == 0\n"
            "assert 'torch' in sys.modules and 'timm' in sys.modules\n")  # the run did import
    assert "deepspeed" not in _heavy_modules_after(code)


def test_the_packages_re_export_their_names_on_first_use():
    """``utils``, ``models`` and ``datasets`` import their heavy submodules only when one of
    their names is used, and then give the same objects as the submodules."""
    code = ("import utils, models, datasets\n"
            "assert 'torch' not in sys.modules\n"
            "from utils.dist import DistState\nassert utils.DistState is DistState\n"
            "from models.factory import create_model\nassert models.create_model is create_model\n"
            "from datasets.listfile import parse_list_file\n"
            "assert datasets.parse_list_file is parse_list_file\n"
            "assert set(utils.__all__) <= set(dir(utils))\n")
    assert "torch" in _heavy_modules_after("import sys\n" + code)


def test_an_unknown_name_of_a_lazy_package_is_an_attribute_error():
    import utils
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        utils.not_a_name  # noqa: B018
