# Everything runs from a local .venv made with the system's Python 3.11+; nothing else needed.

PYTHON ?= $(shell for p in python3 python3.13 python3.12 python3.11; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	2>/dev/null && { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --quiet --disable-pip-version-check
CODE := $(wildcard src tests examples benchmarks)

.PHONY: help demo test lint fmt typecheck bench clean

help:
	@echo "make demo   run examples/demo.py (retries, timeout, cancel, crash recovery)"
	@echo "make test   lint, type-check and run the whole test suite"
	@echo "make lint   ruff check + ruff format --check"
	@echo "make fmt    format and auto-fix with ruff"
	@echo "make bench  drain 20,000 runs on SQLite (benchmarks/drain.py)"

$(BIN)/python:
	@test -n "$(PYTHON)" || { echo "error: Python 3.11 or newer is required (python3, python3.12 or python3.11 on PATH)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

# Stamps: reinstall only when pyproject.toml changes.
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(PIP) install -e .
	@touch $@

$(VENV)/.installed-dev: $(BIN)/python pyproject.toml
	$(PIP) install -e '.[dev]'
	@touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/python examples/demo.py

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check $(CODE)
	$(BIN)/ruff format --check $(CODE)

fmt: $(VENV)/.installed-dev
	$(BIN)/ruff format $(CODE)
	$(BIN)/ruff check --fix $(CODE)

typecheck: $(VENV)/.installed-dev
	$(BIN)/pyright

test: lint typecheck
	$(BIN)/pytest -q -p no:cacheprovider

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/drain.py --backend sqlite --runs 20000

clean:
	rm -rf .perdure .pytest_cache .ruff_cache
