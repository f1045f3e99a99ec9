"""Check the import layers (the import-linter contracts in pyproject.toml) over the whole checkout.

import-linter builds its graph with grimp, which scans packages only: the top-level modules of
this checkout (``engine.py``, ``run_class_apt.py``, ...) are not packages, so ``lint-imports``
alone would see imports *of* them (as external modules) but not the imports they make. This
entry point adds those: it builds grimp's graph of the packages, then reads the imports of every
top-level module (all of them, function-local ones included, as grimp does) and adds them to the
graph before the contracts are checked.

Usage (from anywhere; ``make lint-imports`` runs it, and so does tests/test_layers.py)::

    python tools/lint_imports.py
"""
from __future__ import annotations

import ast
import glob
import os
import sys
from typing import List, Optional, Sequence

import grimp
from importlinter import configuration
from importlinter.adapters.building import GraphBuilder
from importlinter.application import use_cases
from importlinter.application.app_config import settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # entry point; grimp finds the packages on sys.path, as an import would
CONFIG = os.path.join(ROOT, "pyproject.toml")


def top_level_modules(root: str = ROOT) -> List[str]:
    """The importable ``*.py`` files in the checkout's root (modules, not packages).

    Args:
        root: the checkout.
    """
    return sorted(os.path.splitext(os.path.basename(p))[0]
                  for p in glob.glob(os.path.join(root, "*.py")))


def _target(graph: grimp.ImportGraph, name: str) -> Optional[str]:
    """The deepest module of ``name`` (``a.b.c``) the graph holds, or None if none is ours."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in graph.modules:
            return candidate
    return None


def add_top_level_imports(graph: grimp.ImportGraph, root: str = ROOT) -> None:
    """Add the top-level modules and the project imports they make (anywhere in the file).

    A top-level module has no submodules, so it is added as a squashed module: the same node
    ``include_external_packages`` gives it when a package imports it.

    Args:
        graph: grimp's graph of the packages, built with external packages included.
        root: the checkout.
    """
    names = top_level_modules(root)
    for name in names:
        if name not in graph.modules:
            graph.add_module(name, is_squashed=True)
    for name in names:
        path = os.path.join(root, name + ".py")
        with open(path, encoding="utf-8") as f:
            source = f.read()
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source, filename=path)):
            if isinstance(node, ast.Import):
                targets = [_target(graph, alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                # ``from pkg import sub`` imports the submodule ``pkg.sub`` when there is one.
                targets = [_target(graph, f"{node.module}.{alias.name}") for alias in node.names]
            else:
                continue
            for target in {t for t in targets if t and t != name}:
                graph.add_import(importer=name, imported=target, line_number=node.lineno,
                                 line_contents=lines[node.lineno - 1].strip())


class CheckoutGraphBuilder(GraphBuilder):
    """grimp's graph of the root packages plus the checkout's top-level modules."""

    def build(self, root_package_names: List[str], cache_dir: Optional[str],
              include_external_packages: bool = False,
              exclude_type_checking_imports: bool = False) -> grimp.ImportGraph:
        graph = grimp.build_graph(*root_package_names, include_external_packages=True,
                                  exclude_type_checking_imports=exclude_type_checking_imports,
                                  cache_dir=None)
        add_top_level_imports(graph)
        return graph


def lint(config: str = CONFIG, verbose: bool = False) -> bool:
    """Check the contracts of ``config``; prints import-linter's report.

    Args:
        config: the file holding ``[tool.importlinter]``.
        verbose: print import-linter's progress.

    Returns:
        True when every contract is kept.
    """
    configuration.configure()
    settings.configure(GRAPH_BUILDER=CheckoutGraphBuilder())
    return use_cases.lint_imports(config_filename=config, cache_dir=None, no_logo=True,
                                  verbose=verbose) == use_cases.SUCCESS


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point: exit status 0 when every contract is kept, 1 otherwise."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    return 0 if lint(verbose="--verbose" in args) else 1


if __name__ == "__main__":
    sys.exit(main())
