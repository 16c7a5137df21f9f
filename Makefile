# The commands: `make demo`, `make examples` and `make test`. They work from a
# clean clone: they create .venv and install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
INTEROP := tests/interop
NODE_STAMP := $(INTEROP)/node_modules/.installed
DEMO_PORT ?= 5000
ISSUER_PORT ?= 5000
PROVIDER_PORT ?= 5001

.PHONY: install node test lint demo examples bench clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[redis,postgres,msgpack,examples,test,dev]'
	touch $@

install: $(STAMP)

# ably-js for the interop tests, pinned by package-lock.json. Skipped (and the
# interop tests skip, or fail under TOKENREQ_TEST_STRICT=1) when npm is absent.
$(NODE_STAMP): $(INTEROP)/package.json $(INTEROP)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --prefix $(INTEROP) --no-audit --no-fund --loglevel=error && touch $@; \
	else echo "npm not found: interop tests will skip"; fi

node: $(NODE_STAMP)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: install node lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: install
	$(BIN)/python examples/demo.py --port $(DEMO_PORT)

# The two example apps the README's ably-js and ably-python snippets talk to:
# issuer on :5000, provider on :5001. Ctrl-C stops both.
examples: install
	$(BIN)/python examples/run.py --issuer-port $(ISSUER_PORT) --provider-port $(PROVIDER_PORT)

bench: install
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) $(INTEROP)/node_modules .mypy_cache .ruff_cache .pytest_cache
