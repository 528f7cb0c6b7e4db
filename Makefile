# Two commands on a fresh machine:  `make run` (set up + main job)  and  `make test` (set up + tests).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stamp-install

.PHONY: setup run test test-slow test-all fuzz lint bench clean ui

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

fuzz: setup   # the long fuzz campaign (RELIABILITY.md): 10,000 inputs per reader; N=, SEED= to change
	$(BIN)/python bench/fuzz/run.py --reader all --inputs $(or $(N),10000) --seed $(or $(SEED),1) --cli 1000 --json bench/results/fuzz.jsonl

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

ui: setup
	$(BIN)/msaflow ui

clean:
	rm -rf .msaflow .pytest_cache .ruff_cache
