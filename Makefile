# Two commands set everything up: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.securefed-install-stamp
HASH   := $(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
PYTEST_ARGS ?=
# `make test` runs one pytest-xdist worker per core and one more: the pilot tests spend most of
# their wall time waiting on their SuperNodes' paced replies, and the extra worker uses that core
# meanwhile (benchmarks/results/tests.md). `make test-fast` (no pilot) runs one per core. A file's
# tests stay on one worker, the longest files start first (tests/support/scheduling.py).
# WORKERS=N sets both; WORKERS=0 runs in this process.
CORES  := $(shell $(PYTHON) -c "import os; print(len(os.sched_getaffinity(0)))" 2>/dev/null || echo 1)
WORKERS ?=
SUITE_WORKERS := $(if $(WORKERS),$(WORKERS),$(shell expr $(CORES) + 1))
FAST_WORKERS  := $(if $(WORKERS),$(WORKERS),$(CORES))

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
	$(PY) -m pytest -n $(SUITE_WORKERS) --dist loadfile $(PYTEST_ARGS)

# The developer's loop: no Flower/Ray, no whole studies, no slow tests (markers in pyproject.toml,
# given by folder in tests/support/markers.py), on the same workers; target <= 2 minutes on 2
# cores (benchmarks/results/tests.md: 2 min 35 s).
test-fast: install
	$(PY) -m pytest -n $(FAST_WORKERS) --dist loadfile -m "not slow and not flower and not study" $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check securefed tests benchmarks
	$(VENV)/bin/ruff format --check securefed tests benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench: install
	benchmarks/demo_bench.sh

clean-venv:
	rm -rf $(VENV)
