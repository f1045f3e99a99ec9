"""Comments and pages cite only what the repository holds: no reference to the external product
spec, and every ``docs/<page>.md`` (and section) a comment or page names exists."""
import contextlib
import importlib
import io
import os
import re

import pytest

from tests.engine_helpers import ROOT

# Built from pieces so this file does not match its own patterns.
SPEC_WORD = re.compile(r"\b" + "SP" + r"EC\b")
SECTION_SIGN = "\u00a7"
DOCS_PATH = re.compile(r"\bdocs/[\w.-]+\.md\b")
# "(docs/DATA.md, 'Test views')": a page and one of its '## ' sections.
DOCS_SECTION = re.compile(r"\b(docs/[\w.-]+\.md), '([^']+)'")
# Build outputs and run outputs that may sit in a checkout (see .gitignore): not our sources.
SKIPPED_DIRS = {"__pycache__", "build", "dist", "node_modules", "demo_output", "output",
                "outputs", "runs", "data"}


def _source_files(suffixes):
    """Repository files with these suffixes, skipping hidden folders (.venv, .git, ...),
    virtual environments and build/run outputs."""
    found = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIPPED_DIRS
                         and not d.endswith(".egg-info")
                         and not os.path.exists(os.path.join(folder, d, "pyvenv.cfg")))
        found += [os.path.join(folder, f) for f in sorted(files) if f.endswith(suffixes)]
    return found


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def _rel(path):
    return os.path.relpath(path, ROOT)


PY_FILES = _source_files((".py",))
MD_FILES = _source_files((".md",))


def test_the_walk_finds_the_sources():
    rel = {_rel(p) for p in PY_FILES + MD_FILES}
    assert {"run_class_apt.py", os.path.join("models", "pretrained.py"), "README.md",
            os.path.join("docs", "FORMATS.md")} <= rel


@pytest.mark.parametrize("path", PY_FILES + MD_FILES, ids=_rel)
def test_no_citation_of_the_external_spec(path):
    bad = [f"{_rel(path)}:{n}: {line.strip()}"
           for n, line in enumerate(_read(path).splitlines(), start=1)
           if SPEC_WORD.search(line) or SECTION_SIGN in line]
    assert not bad, ("cite docs/<page>.md (inside the repository) instead of the external spec:\n"
                     + "\n".join(bad))


def _headings(page):
    return {line[3:].strip() for line in _read(os.path.join(ROOT, page)).splitlines()
            if line.startswith("## ")}


@pytest.mark.parametrize("path", PY_FILES + MD_FILES, ids=_rel)
def test_cited_docs_pages_and_sections_exist(path):
    text = re.sub(r"\s+", " ", _read(path))  # a citation may wrap over lines
    missing = sorted({p for p in DOCS_PATH.findall(text)
                      if not os.path.isfile(os.path.join(ROOT, p))})
    assert not missing, f"{_rel(path)} cites pages that do not exist: {missing}"
    bad_sections = sorted({f"{page}, '{section}'" for page, section in DOCS_SECTION.findall(text)
                           if section not in _headings(page)})
    assert not bad_sections, f"{_rel(path)} cites sections that do not exist: {bad_sections}"


def test_python_comments_cite_the_docs():
    cited = {p for path in PY_FILES for p in DOCS_PATH.findall(_read(path))}
    assert {"docs/FORMATS.md", "docs/DATA.md", "docs/METHODS.md", "docs/PRETRAINING.md"} <= cited


# --- the pages themselves: links, issue numbers, the front page, the commands ----------------

DOC_PAGES = [p for p in MD_FILES if _rel(p) == "README.md" or _rel(p).startswith("docs" + os.sep)]
# Built from pieces so this file does not match its own patterns.
ISSUE_NUMBER = re.compile(r"\b" + "issue" + r"s?\s*(#|no\.?\s*|item\s+)?\d+|\(#\d+\)",
                          re.IGNORECASE)


def test_the_front_page_is_short_and_links_the_task_pages():
    readme = _read(os.path.join(ROOT, "README.md"))
    assert len(readme.splitlines()) <= 250, "README.md is the front page: move reference to docs/"
    for page in ("INSTALL", "DATASET", "DATA", "MODEL_ZOO", "FINETUNE", "METHODS", "EVALUATION",
                 "PRETRAINING", "FORMATS", "TESTING", "CONVENTIONS"):
        assert f"](docs/{page}.md)" in readme, f"README.md does not link docs/{page}.md"


@pytest.mark.parametrize("path", MD_FILES, ids=_rel)
def test_relative_links_resolve(path):
    folder = os.path.dirname(path)
    bad = [target for target in re.findall(r"\]\(([^)\s]+)\)", _read(path))
           if not re.match(r"[a-z]+:", target) and not target.startswith("#")
           and not os.path.exists(os.path.join(folder, target.split("#")[0]))]
    assert not bad, f"{_rel(path)} links to files that do not exist: {bad}"


@pytest.mark.parametrize("path", PY_FILES + MD_FILES, ids=_rel)
def test_no_issue_numbers(path):
    bad = [f"{_rel(path)}:{n}: {line.strip()}"
           for n, line in enumerate(_read(path).splitlines(), start=1) if ISSUE_NUMBER.search(line)]
    assert not bad, "say what the code does, not which ticket asked for it:\n" + "\n".join(bad)


def _shell_commands(text):
    """The commands of the fenced shell (and unlabelled) blocks: continuation lines joined,
    comments and a leading '$ ' dropped, split at '&&', ';' and '|'."""
    commands = []
    for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", text, re.M | re.S):
        if lang not in ("", "bash", "sh"):
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s)#.*", "", line).strip()
            line = line[2:] if line.startswith("$ ") else line
            commands += [c.strip() for c in re.split(r"&&|;|\|", line) if c.strip()]
    return commands


LAUNCHERS = {"python", "python3", "torchrun", "sh", "bash"}


def _invocations():
    """(page, script, arguments) for every documented run of a repository script."""
    found = []
    for page in DOC_PAGES:
        for command in _shell_commands(_read(page)):
            words = command.split()
            if not LAUNCHERS & set(words):
                continue
            scripts = [i for i, w in enumerate(words) if w.endswith((".py", ".sh"))]
            if scripts:
                i = scripts[0]
                found.append((_rel(page), words[i], [w.strip("[]") for w in words[i + 1:]]))
    return found


INVOCATIONS = _invocations()


def test_the_docs_show_commands():
    scripts = {script for _, script, _ in INVOCATIONS}
    assert {"run_class_apt.py", "run_mae_pretraining.py", "tools/predict.py",
            "tools/export.py", "tools/compare_runs.py", "tools/build_lists.py"} <= scripts


def _known_flags(script, arguments):
    """Option strings of a Python script's parser (of its sub-command, if it has one), from the
    options section of its --help."""
    module = importlib.import_module(script[:-3].replace("/", "."))
    if hasattr(module, "get_args_parser"):
        text = module.get_args_parser().format_help()
    else:
        sub = [a for a in arguments[:1] if not a.startswith("-")]
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
            module.main(sub + ["--help"])
        text = out.getvalue()
    return {flag for line in text.splitlines() if re.match(r"\s{2}-", line)
            for flag in re.findall(r"--[\w-]+", re.split(r"\s{2,}", line.strip())[0])}


@pytest.mark.parametrize("page,script,arguments", INVOCATIONS,
                         ids=[f"{p}:{s}" for p, s, _ in INVOCATIONS])
def test_documented_commands_run_a_script_that_takes_their_flags(page, script, arguments):
    assert os.path.isfile(os.path.join(ROOT, script)), f"{page} runs {script}, which does not exist"
    if not script.endswith(".py"):
        return
    known = _known_flags(script, arguments)
    unknown = sorted({a.split("=")[0] for a in arguments if a.startswith("--")} - known)
    assert not unknown, f"{page}: {script} has no flags {unknown}"
