# Two commands set everything up: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.securefed-install-stamp
HASH   := $(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
PYTEST_ARGS ?=
# `make test` runs one pytest-xdist worker per core; a file's tests stay on one worker, the
# longest files start first (tests/support/scheduling.py). WORKERS=0 runs in this process.
WORKERS ?= auto

.PHONY: demo test test-fast lint install clean-venv bench

$(VENV)/bin/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need Python 3.11 as '$(PYTHON)' (set PYTHON=...)"; exit 2; }
	$(PYTHON) -m venv $(VENV)

install: $(VENV)/bin/python
	@if [ "$$(cat $(STAMP) 2>/dev/null)" = "$(HASH)" ]; then \
		echo "environment up to date ($(VENV), $(HASH))"; \
	else \
		$(PY) -m pip install --quiet --upgrade pip && \
		$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]' && \
		echo "$(HASH)" > $(STAMP); \
	fi

demo: install
	$(VENV)/bin/securefed demo $(DEMO_ARGS)

# Every test (CI runs this).
test: install
	$(PY) -m pytest -n $(WORKERS) --dist loadfile $(PYTEST_ARGS)

# The developer's loop: no Flower/Ray, no whole studies, no slow tests (markers in pyproject.toml,
# given by folder in tests/support/markers.py), on the same workers; target <= 2 minutes on 2
# cores (benchmarks/results/tests.md: 2 min 35 s).
test-fast: install
	$(PY) -m pytest -n $(WORKERS) --dist loadfile -m "not slow and not flower and not study" $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check securefed tests benchmarks
	$(VENV)/bin/ruff format --check securefed tests benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench: install
	benchmarks/demo_bench.sh

clean-venv:
	rm -rf $(VENV)
