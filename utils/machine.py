"""What a reader needs to judge a measured number: hardware, software, date, code revision.

The header of every benchmark table (``benchmarks/common.py``) and of the demo's table
(``tools/demo.py``), hence here, below both.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from typing import Dict, List

import timm
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return f"{rev}{' + uncommitted changes' if dirty else ''}" if rev else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_info() -> Dict[str, str]:
    """What a reader needs to judge a number: hardware, software, date, code revision."""
    try:
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    except (ValueError, OSError):
        mem_gb = float("nan")
    info = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{_cpu_model()}, {os.cpu_count()} logical cores, {mem_gb:.0f} GiB RAM",
        "torch threads": str(torch.get_num_threads()),
        "gpu": (f"{torch.cuda.get_device_name(0)} (x{torch.cuda.device_count()})"
                if torch.cuda.is_available() else "none (no GPU available on this machine)"),
        "versions": (f"python {platform.python_version()}, torch {torch.__version__}, "
                     f"timm {timm.__version__}"),
        "code": _git_revision(),
    }
    return info


def info_lines(info: Dict[str, str]) -> List[str]:
    """``info`` (from :func:`machine_info`) as Markdown list items, one per fact.

    Args:
        info: fact name -> value.
    """
    return [f"- {k}: {v}" for k, v in info.items()]
