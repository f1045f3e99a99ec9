"""Comments and pages cite only what the repository holds: no reference to the external product
spec, and every ``docs/<page>.md`` (and section) a comment or page names exists."""
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
