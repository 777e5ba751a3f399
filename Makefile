# The README's two commands. Each does its own set-up: a virtualenv in .venv with the
# project installed (editable) and its test tools.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test setup lint browser postgres deploy-tools bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

setup: $(BIN)/.installed

# Serve on SQLite (hub.db) with the demo users, at http://127.0.0.1:8000.
run: setup
	$(BIN)/hub demo
	$(BIN)/hub serve

lint: setup
	$(BIN)/ruff check server tests bench examples host-client
	$(BIN)/ruff format --check server tests bench examples host-client
	$(BIN)/mypy

# Debian's Chromium for tests/browser (installed when run as root with apt-get, as on CI).
browser:
	scripts/ensure-chromium

# PostgreSQL for the tests about it (started when installed and stopped, as root, as on CI).
postgres:
	scripts/ensure-postgres

# Debian's nginx and systemd-analyze for tests/e2e/test_deploy.py (installed as root with
# apt-get, as on CI, without starting any service).
deploy-tools:
	scripts/ensure-deploy-tools

# Lint and type checks, the Python suite (hub, sessions, real browser, PostgreSQL) and the
# client's unit tests.
test: lint browser postgres deploy-tools
	$(BIN)/pytest
	scripts/node-tests

# The benchmark: hub, bare-websockets ceiling and python-socketio peer in one run, plus group
# commit against a commit per switch; writes bench/RESULTS.md and bench/latency.png (~10 min).
bench: setup
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python -m bench.run --write

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
