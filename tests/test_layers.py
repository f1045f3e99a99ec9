"""The import layers (pyproject.toml's import-linter contracts) and the sys.path rule hold."""
import ast
import os
import subprocess
import sys

import grimp

from tools import lint_imports

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP_DIRS = {"tests", ".git", ".venv", "demo_output", "__pycache__", "node_modules"}


def test_import_contracts_are_kept():
    """``python tools/lint_imports.py`` passes; on failure its report names each import."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "lint_imports.py")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout, proc.stdout


def test_graph_holds_the_top_level_modules_imports():
    """grimp scans packages only; the imports that ``engine.py`` and ``run_class_apt.py`` make
    are in the graph the contracts are checked on."""
    graph = lint_imports.CheckoutGraphBuilder().build(["utils", "datasets", "models", "tools",
                                                       "benchmarks"], cache_dir=None)
    assert "optim_factory" in graph.find_modules_directly_imported_by("engine")
    # the scripts import their run modules inside main (after the flags), and these the engine
    assert "finetuning" in graph.find_modules_directly_imported_by("run_class_apt")
    assert "pretraining" in graph.find_modules_directly_imported_by("run_mae_pretraining")
    assert "engine" in graph.find_modules_directly_imported_by("finetuning")
    assert "engine" in graph.find_modules_directly_imported_by("pretraining")


def test_function_local_imports_of_top_level_modules_count(tmp_path, monkeypatch):
    """An import inside a function of a top-level module is an edge like any other."""
    (tmp_path / "lowpkg").mkdir()
    (tmp_path / "lowpkg" / "__init__.py").write_text("")
    (tmp_path / "lowpkg" / "part.py").write_text("")
    (tmp_path / "script.py").write_text("def f():\n    from lowpkg import part\n    return part\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    graph = grimp.build_graph("lowpkg", include_external_packages=True, cache_dir=None)
    lint_imports.add_top_level_imports(graph, str(tmp_path))
    assert graph.find_modules_directly_imported_by("script") == {"lowpkg.part"}
    details = graph.get_import_details(importer="script", imported="lowpkg.part")
    assert details[0]["line_number"] == 2


def _project_names():
    return {"utils", "datasets", "models", "tools", "benchmarks", *lint_imports.top_level_modules()}


def _python_files():
    for dirpath, dirs, files in os.walk(ROOT):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
        for name in sorted(files):
            if name.endswith(".py"):
                yield os.path.join(dirpath, name)


def _module_name(path):
    rel = os.path.splitext(os.path.relpath(path, ROOT))[0].split(os.sep)
    return ".".join(rel[:-1] if rel[-1] == "__init__" else rel)


def _inserts_sys_path(node):
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
               and n.func.attr == "insert" and ast.unparse(n.func.value) == "sys.path"
               for n in ast.walk(node))


def _imports_project(node, project):
    names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
             [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
    return any(n.split(".")[0] in project for n in names)


def test_sys_path_is_changed_only_in_entry_points_first_lines():
    """A ``sys.path.insert`` sits in a script's module body before its first project import,
    never in a function, and never in a module that other project modules import (docs:
    the "sys.path" rule next to the layers)."""
    project = _project_names()
    graph = lint_imports.CheckoutGraphBuilder().build(
        ["utils", "datasets", "models", "tools", "benchmarks"], cache_dir=None)
    problems = []
    for path in _python_files():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=path)
        if not _inserts_sys_path(tree):
            continue
        rel = os.path.relpath(path, ROOT)
        body = tree.body
        first_insert = next(i for i, stmt in enumerate(body) if _inserts_sys_path(stmt))
        first_import = next((i for i, stmt in enumerate(body) if _imports_project(stmt, project)),
                            len(body))
        if first_insert > first_import:
            problems.append(f"{rel}: sys.path changed after a project import")
        if any(_inserts_sys_path(n) for n in ast.walk(tree)
               if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))):
            problems.append(f"{rel}: sys.path changed inside a function or class")
        if not any(isinstance(stmt, ast.If) and "__main__" in ast.unparse(stmt.test)
                   for stmt in body):
            problems.append(f"{rel}: changes sys.path but is no entry point (no __main__ block)")
        importers = graph.find_modules_that_directly_import(_module_name(path))
        if importers:
            problems.append(f"{rel}: changes sys.path but is imported by {sorted(importers)}")
    assert not problems, "\n".join(problems)


def _contracts() -> list:
    import tomllib
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["tool"]["importlinter"]["contracts"]


def test_every_module_of_the_checkout_is_in_a_layer():
    """A new top-level module or package, tool or benchmark cannot escape the contracts: the
    layers name every one, and the independence contracts every command line."""
    contracts = {c["id"]: c for c in _contracts()}
    in_layers = {name.strip() for layer in contracts["layers"]["layers"]
                 for name in layer.split("|")}
    top = {n[:-3] for n in os.listdir(ROOT) if n.endswith(".py") and n != "setup.py"}
    top |= {n for n in os.listdir(ROOT) if n not in SKIP_DIRS
            and os.path.isfile(os.path.join(ROOT, n, "__init__.py"))}
    assert top - in_layers == set(), "modules missing from the layers contract"
    # Libraries the command lines share, not command lines themselves.
    shared = {"tools.plots", "tools.worlds", "tools.run_table", "tools.class_table",
              "tools.exporting", "tools.demo_stages",
              "benchmarks.common", "benchmarks.setups", "benchmarks.naive_apt",
              "benchmarks.original_pipeline"}
    for package, contract in (("tools", "entry-points"), ("benchmarks", "benchmark-entry-points")):
        found = {f"{package}.{n[:-3]}" for n in os.listdir(os.path.join(ROOT, package))
                 if n.endswith(".py") and n != "__init__.py"}
        named = set(contracts[contract]["modules"])
        assert found - shared == named, f"{contract}: add or remove {sorted((found - shared) ^ named)}"


PROJECT = {"utils", "datasets", "models", "tools", "benchmarks", "engine", "engine_eval",
           "engine_checkpoints", "engine_for_pretraining", "engine_for_probe", "optim_factory",
           "runs", "prediction", "run_class_apt", "run_mae_pretraining", "finetuning", "pretraining"}


def _is_entry_point(tree: ast.Module) -> bool:
    """A command line: its module body ends in an ``if __name__ == "__main__":`` block."""
    return any(isinstance(stmt, ast.If) and "__main__" in ast.unparse(stmt.test)
               for stmt in tree.body)


def _function_local_imports():
    """(file, line number, source line, previous line, module, in an entry point) of every
    import inside a function of the checkout (tests aside)."""
    for dirpath, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS]
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(dirpath, name)
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
            seen = set()
            tree = ast.parse("\n".join(lines))
            entry_point = _is_entry_point(tree)
            for node in ast.walk(tree):
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                for sub in ast.walk(node):
                    if isinstance(sub, (ast.Import, ast.ImportFrom)) and id(sub) not in seen:
                        seen.add(id(sub))
                        module = ("." * sub.level + (sub.module or "")
                                  if isinstance(sub, ast.ImportFrom) else sub.names[0].name)
                        yield (os.path.relpath(path, ROOT), sub.lineno, lines[sub.lineno - 1],
                               lines[sub.lineno - 2], module, entry_point)


def _explained(line: str, previous: str) -> bool:
    return "#" in line or "#" in previous or previous.strip().startswith(("import", "from"))


def test_function_local_imports_are_lazy_optional_dependencies_with_a_why():
    """No library module imports a project module inside a function (the layers decide where
    code lives); every function-local import is a heavy or optional dependency with a comment
    saying why it is lazy (on its line, the line before, or the first import of its group).

    One exception, for start-up time: a command line (a module with a ``__main__`` block, in
    the top layer, which no project module imports) may import the project's torch layers
    inside the function that runs once its flags are parsed, with a comment saying so; its
    module body then imports only the torch-free flags and settings, and ``--help`` answers
    without torch (tests/test_startup.py). The layer contracts still see these imports
    (``tools/lint_imports.py`` reads function-local imports too)."""
    project, unexplained = [], []
    for path, lineno, line, previous, module, entry_point in _function_local_imports():
        if module.startswith(".") or module.split(".")[0] in PROJECT:
            if not entry_point:
                project.append(f"{path}:{lineno} {module}")
            elif not _explained(line, previous):
                unexplained.append(f"{path}:{lineno} {line.strip()}")
        elif not _explained(line, previous):
            unexplained.append(f"{path}:{lineno} {line.strip()}")
    assert project == [], "function-local imports of project modules outside a command line"
    assert unexplained == [], "lazy imports without a comment saying why"


def test_the_function_local_import_rule_refuses_a_library_module(tmp_path):
    """The exception is for command lines only: the same import in a module without a
    ``__main__`` block is a violation (the rule above would catch it)."""
    library = ast.parse("def f():\n    import engine  # lazy\n    return engine\n")
    script = ast.parse(ast.unparse(library) + "\nif __name__ == '__main__':\n    f()\n")
    assert not _is_entry_point(library) and _is_entry_point(script)


def test_a_long_file_says_why_at_its_top():
    """A module of more than 400 lines says why in its docstring ("Long on purpose: ...")."""
    unexplained = []
    for dirpath, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS]
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                with open(path, encoding="utf-8") as f:
                    source = f.read()
                doc = ast.get_docstring(ast.parse(source)) or ""
                if source.count("\n") > 400 and "Long on purpose:" not in doc:
                    unexplained.append(os.path.relpath(path, ROOT))
    assert unexplained == []
