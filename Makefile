# The two commands: `make run` starts Lamplighter, `make test` runs the whole suite.
# Both create .venv and install what they need on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test check bench install install-dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# llama-cpp-python compiles llama.cpp on first install (several minutes on 2 cores); pip caches
# the wheel, so later installs take seconds.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

run: install
	$(BIN)/lamplighter serve

check: install-dev
	$(BIN)/ruff check lamplighter tests bench
	$(BIN)/ruff format --check lamplighter tests bench
	$(BIN)/mypy

test: check
	$(BIN)/pytest

bench: install-dev
	$(BIN)/python -m bench.decode

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
