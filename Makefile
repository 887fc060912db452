# The two commands: `make run` starts Lamplighter, `make test` runs the whole suite.
# Both create .venv and install what they need on first use.

PYTHON ?= python3
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
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

# The web chat's browser tests drive Debian's Chromium through Playwright (which never downloads
# a browser of its own); installed here when missing.
$(CHROMIUM):
	@command -v apt-get >/dev/null || { echo "install Chromium at $(CHROMIUM) for the browser tests" >&2; exit 1; }
	$(SUDO) apt-get install -y --no-install-recommends chromium || \
		{ $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends chromium; }

# Two workers (a core each here), a test file each at a time so that a file's module fixtures
# are made once: about three quarters of the serial wall time. The slowest tests are listed at
# the end, to keep the suite's time in view.
test: check $(CHROMIUM)
	$(BIN)/pytest -n 2 --dist loadfile --durations=15

bench: install-dev
	$(BIN)/python -m bench.decode

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache test-output
