# make install : .venv from requirements.txt (re-made when requirements.txt changes)
# make test    : install if needed, then the test suite
# make demo    : install if needed, then the end-to-end demo on synthetic videos (both worlds)
# make compare : the fair comparison protocol on both demo worlds (tools/sweep.py --world)
# make lint-imports : check the import layers (pyproject.toml's import-linter contracts)
# make demo-backbone : redo the demo's VideoMAE pre-training into assets/demo_backbone
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
REQ_HASH := $(shell sha256sum requirements.txt | cut -c1-16)
STAMP := $(VENV)/.installed-$(REQ_HASH)
PYTEST_ARGS ?=
DEMO_ARGS ?=
COMPARE_ARGS ?= --jobs 2 --threads 1

.PHONY: install test demo demo-backbone compare bench lint-imports clean

install: $(STAMP)

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	@rm -f $(VENV)/.installed-*
	@touch $@

test: install
	$(PY) -m pytest -q -n 2 --dist loadfile $(PYTEST_ARGS) tests

demo: install
	$(PY) tools/demo.py --output_dir demo_output $(DEMO_ARGS)

compare: install
	$(PY) tools/sweep.py --world motion,pairs --output_dir compare_output $(COMPARE_ARGS)

demo-backbone: install
	$(PY) tools/demo.py --build_backbone --output_dir demo_output/backbone $(DEMO_ARGS)

bench: install
	$(PY) benchmarks/run_all.py

lint-imports: install
	$(PY) tools/lint_imports.py

clean:
	rm -rf demo_output compare_output .pytest_cache
