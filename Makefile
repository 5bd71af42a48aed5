# Thin targets; `make run` and `make test` install what they need first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CLI_VERSION := 2.1.328
PY_STAMP := $(VENV)/.installed
CLI_STAMP := node_modules/.installed-$(CLI_VERSION)

.PHONY: install run test lint bench clean

install: $(PY_STAMP) $(CLI_STAMP)

$(PY_STAMP): setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $@

# The pinned Claude Code CLI, into ./node_modules (never globally). Its postinstall copies the platform's native
# binary over the placeholder; if npm skipped install scripts, run it ourselves.
$(CLI_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	node_modules/.bin/claude --version 2>/dev/null | grep -q '^$(CLI_VERSION) ' || \
		(cd node_modules/@anthropic-ai/claude-code && node install.cjs)
	node_modules/.bin/claude --version | grep -q '^$(CLI_VERSION) '
	touch $@

run: install
	$(BIN)/maxproxy

lint: install
	$(BIN)/ruff check maxproxy tests
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

bench: install
	$(BIN)/python -m maxproxy.bench

clean:
	rm -rf $(VENV) node_modules .mypy_cache .pytest_cache .ruff_cache
