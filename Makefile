# Two commands on a fresh machine:  `make run` (set up + main job)  and  `make test` (set up + tests).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stamp-install

.PHONY: setup run test test-slow test-all lint bench clean ui

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	PY=$(PY) bash scripts/setup.sh
	touch $(STAMP)

run: setup
	$(BIN)/msaflow run $(ARGS)

test: setup
	$(BIN)/pytest -q $(ARGS)

test-slow: setup
	bash scripts/system-deps.sh
	$(BIN)/pytest -q -m slow $(ARGS)

test-all: test test-slow   # what CI runs: the fast suite, then the slow one

lint: setup
	$(BIN)/ruff check .

ui: setup
	$(BIN)/msaflow ui

clean:
	rm -rf .msaflow .pytest_cache .ruff_cache
