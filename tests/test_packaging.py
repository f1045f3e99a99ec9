"""pyproject.toml installs no top-level package or module of the checkout.

The project runs from the repository root; its folders have generic names (``datasets`` would
shadow Hugging Face's ``datasets`` in site-packages), so ``pip install .`` must install the
dependencies only. Read from pyproject.toml; no wheel is built here.
"""
import os

import pytest

from tests.engine_helpers import ROOT

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

# The checkout's top-level packages and modules: none of them may be installed.
TOP_LEVEL = sorted(
    name[:-3] if name.endswith(".py") else name for name in os.listdir(ROOT)
    if (name.endswith(".py") and os.path.isfile(os.path.join(ROOT, name)))
    or os.path.isfile(os.path.join(ROOT, name, "__init__.py")))


@pytest.fixture(scope="module")
def pyproject():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def test_the_generic_names_are_top_level_here():
    assert {"datasets", "models", "utils", "tools", "run_class_apt", "engine"} <= set(TOP_LEVEL)


def test_setuptools_installs_no_package_and_no_module(pyproject):
    tool = pyproject.get("tool", {}).get("setuptools", {})
    # Explicit empty lists: anything else installs code, and leaving both out would make
    # setuptools discover packages by itself.
    assert tool.get("packages") == [], tool.get("packages")
    assert tool.get("py-modules") == [], tool.get("py-modules")
    for key in ("package-dir", "package-data", "data-files", "ext-modules"):
        assert key not in tool, f"[tool.setuptools] {key} would install files"


def test_no_entry_point_needs_an_installed_module(pyproject):
    project = pyproject["project"]
    for table in ("scripts", "gui-scripts"):
        for name, target in project.get(table, {}).items():
            module = target.split(":")[0].split(".")[0]
            assert module not in TOP_LEVEL, f"[project.{table}] {name} = {target!r}"


def test_the_dependencies_stay_declared(pyproject):
    deps = {d.split("<")[0].split(">")[0].split("=")[0].strip() for d in
            pyproject["project"]["dependencies"]}
    assert {"torch", "timm", "transformers"} <= deps
