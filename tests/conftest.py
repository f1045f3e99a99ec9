"""Shared test set-up: repository root on sys.path, deterministic torch, one thread per worker."""
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)  # two xdist workers on two cores: avoid oversubscription


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
