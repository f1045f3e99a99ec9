"""A transfer type added as two files, its settings and its method: its flag, training,
checkpoint and ``--eval`` work without any other edit (the promise of
``models/transfer/__init__.py`` and docs/CONVENTIONS.md).

The repository's code is copied into a temporary folder, one settings module is written into its
``models/transfer_settings`` and one method module into its ``models/transfer``; nothing else of
the copy is touched.
"""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import torch

from tests.engine_helpers import ROOT, final_record, make_data, subprocess_env, tiny_argv

# A per-block learned shift of the tokens (one vector per adapted block), with its own flag: its
# settings (no torch: the command line reads them before torch is imported) ...
NEW_SETTINGS = textwrap.dedent('''
    """Token shift's settings."""
    from dataclasses import dataclass

    from .base import BlockRange, register_settings, setting


    @register_settings("token_shift", "token shift")
    @dataclass(frozen=True)
    class TokenShiftConfig(BlockRange):
        token_shift_init: float = setting(0.0, "initial value of every shift")

        def validate(self) -> None:
            super().validate()
            if abs(self.token_shift_init) > 1:
                raise ValueError(f"--token_shift_init must be in [-1, 1], got "
                                 f"{self.token_shift_init}")
''')

# ... and its method.
NEW_METHOD = textwrap.dedent('''
    """Token shift: a learned vector added to every token before each block of the range."""
    from typing import List

    import torch
    import torch.nn as nn

    from .base import TransferMethod, register_transfer
    from ..transfer_settings.token_shift import TokenShiftConfig


    @register_transfer("token_shift")
    class TokenShift(TransferMethod):
        config_class = TokenShiftConfig

        def inject(self, model: nn.Module) -> List[nn.Parameter]:
            self.start, self.end = self.config.blocks(model.depth)
            shape = (self.end - self.start + 1, model.embed_dim)
            model.token_shifts = nn.Parameter(torch.full(shape, self.config.token_shift_init))
            return [model.token_shifts]

        def no_weight_decay(self, model: nn.Module) -> List[nn.Parameter]:
            return [model.token_shifts]

        def before_block(self, model, index, x):
            if self.start <= index <= self.end:
                return x + model.token_shifts[index - self.start]
            return x
''')


def _copy_code(dst: str) -> None:
    """The code a run needs (top-level scripts and packages), as a user's checkout has it."""
    for name in os.listdir(ROOT):
        src = os.path.join(ROOT, name)
        if name.endswith(".py"):
            shutil.copy(src, dst)
        elif name in ("models", "datasets", "utils", "tools"):
            shutil.copytree(src, os.path.join(dst, name),
                            ignore=shutil.ignore_patterns("__pycache__"))


def _run(code_dir: str, args, check: bool = True) -> subprocess.CompletedProcess:
    env = subprocess_env({"PYTHONPATH": code_dir})
    proc = subprocess.run([sys.executable, "run_class_apt.py", *args], cwd=code_dir, env=env,
                          capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc


def test_a_new_transfer_type_is_two_files(tmp_path):
    code = str(tmp_path / "code")
    os.makedirs(code)
    _copy_code(code)
    with open(os.path.join(code, "models", "transfer_settings", "token_shift.py"), "w") as f:
        f.write(NEW_SETTINGS)
    with open(os.path.join(code, "models", "transfer", "token_shift.py"), "w") as f:
        f.write(NEW_METHOD)
    data = make_data(str(tmp_path / "data"))

    help_text = _run(code, ["--help"]).stdout
    assert "--token_shift_init" in help_text and "token_shift" in help_text

    out = str(tmp_path / "run")
    argv = tiny_argv(data, out, "token_shift", prompt_num_tokens=None, prompt_dropout=None,
                     prompt_reparam=None, token_shift_init=0.05, prompt_start=1,
                     weight_decay=0.5)
    _run(code, argv)
    ckpt = torch.load(os.path.join(out, "checkpoint-last.pth"), weights_only=True)
    assert ckpt["transfer_type"] == "token_shift" and ckpt["args"]["token_shift_init"] == 0.05
    shifts = ckpt["model"]["token_shifts"]  # blocks 1..last of the 2-block micro model
    assert shifts.shape == (1, 64) and not torch.allclose(shifts, torch.full_like(shifts, 0.05))
    trained = final_record(out)

    # --eval takes the architecture from the checkpoint, whatever the command line says.
    bad = _run(code, argv + ["--eval", "--token_shift_init", "0.9", "--prompt_start", "0"])
    assert "using the checkpoint's --prompt_start 1" in bad.stderr + bad.stdout
    evaluated = final_record(out)
    assert evaluated["tested"] == "resume"
    assert evaluated["Final top-1"] == trained["Final top-1"]

    # The settings' own validation names the flag.
    refused = _run(code, argv + ["--token_shift_init", "3"], check=False)
    assert refused.returncode == 2 and "--token_shift_init must be in [-1, 1]" in refused.stderr

    with open(os.path.join(out, "args.json")) as f:
        assert json.load(f)["token_shift_init"] == 0.05
