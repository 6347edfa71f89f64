# catenary — one Makefile for setup, checks and tests.
# Everything runs from a project-local virtual environment created on demand,
# so a fresh machine needs only python3.11, pip, gcc and make.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NODES  ?= 3
DATA   ?= .catenary-dev

.PHONY: venv test check lint format run bench sim clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q

check: $(STAMP)
	$(BIN)/ruff format --check src tests
	$(BIN)/ruff check src tests
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format src tests
	$(BIN)/ruff check --fix src tests

run: $(STAMP)
	$(BIN)/catenary dev --nodes $(NODES) --data-dir $(DATA)

bench: $(STAMP)
	$(BIN)/catenary bench storage
	$(BIN)/catenary bench metadata
	$(BIN)/catenary bench log

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
