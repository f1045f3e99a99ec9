"""Shared test set-up: repository root on sys.path, deterministic torch, one thread per worker,
and the tiny synthetic data set and backbone file of the CLI tests (one per test module)."""
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


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The tiny synthetic data set (tests/engine_helpers.py ``SYNTH``): the --data_path."""
    from tests.engine_helpers import make_data
    return make_data(str(tmp_path_factory.mktemp("synthetic")))


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    """A VideoMAE pre-training style checkpoint of the tiny backbone (``encoder.`` keys)."""
    from tests.engine_helpers import write_tiny_backbone
    return write_tiny_backbone(str(tmp_path_factory.mktemp("backbone")))
