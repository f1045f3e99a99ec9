"""The command lines build their flags without the heavy libraries (docs/CONVENTIONS.md, "Entry
points: flags first, torch after"): ``--help`` and a refused flag answer without importing torch,
timm, decord, DeepSpeed or matplotlib. Import behaviour is asserted, never a time
(benchmarks/bench_startup.py measures those)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = ("torch", "timm", "decord", "deepspeed", "matplotlib", "transformers")

# Commands whose --help is torch-free. tools/demo.py and tools/export.py still import torch at
# the top (their heavy code is not yet apart from their flags); they are not listed, so this
# test does not pretend otherwise.
LIGHT_COMMANDS = ["run_class_apt.py", "run_mae_pretraining.py", "tools/analyze_prompts.py",
                  "tools/build_lists.py", "tools/compare_runs.py", "tools/extract_features.py",
                  "tools/extract_frames.py", "tools/make_synthetic.py", "tools/predict.py",
                  "tools/run_digests.py"]


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
