# The README's two commands: `make demo` (set up, run the built-in demo) and
# `make test` (set up, run every test). `make bench` runs the benchmarks.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint bench wheel-check

$(BIN)/vqtrace: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	touch $@

setup: $(BIN)/vqtrace
	./scripts/setup-system.sh

demo: setup
	$(BIN)/vqtrace demo

lint: setup
	$(BIN)/ruff check .

test: setup lint
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python benchmarks/run_all.py

wheel-check: setup
	./scripts/wheel-check.sh $(BIN)/python
