# Everything runs from a local .venv made with the system's Python 3.11+; nothing else needed.

PYTHON ?= $(shell for p in python3 python3.13 python3.12 python3.11; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	2>/dev/null && { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --quiet --disable-pip-version-check
CODE := $(wildcard src tests examples benchmarks)

.PHONY: help demo test lint fmt typecheck bench bench-peers clean

help:
	@echo "make demo   run examples/demo.py (retries, timeout, cancel, crash recovery)"
	@echo "make test   lint, type-check and run the whole test suite"
	@echo "make lint   ruff check + ruff format --check"
	@echo "make fmt    format and auto-fix with ruff"
	@echo "make bench  perdure's workloads on SQLite and PostgreSQL (benchmarks/harness.py)"
	@echo "make bench-peers  perdure beside DBOS, Procrastinate, PgQueuer, Celery (own venv)"

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

# Results: benchmarks/results/<date>.md (+ .json). PostgreSQL: $$PERDURE_TEST_POSTGRES_URL.
bench: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/harness.py perdure

# The peers live in their own virtualenv: never a dependency of perdure.
PEERS_VENV := benchmarks/.peers-venv
$(PEERS_VENV)/.installed: benchmarks/peers/requirements.txt
	@test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip --quiet --disable-pip-version-check install -r $<
	@touch $@

bench-peers: $(VENV)/.installed-dev $(PEERS_VENV)/.installed
	$(BIN)/python benchmarks/harness.py peers

clean:
	rm -rf .perdure .pytest_cache .ruff_cache
