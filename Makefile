# Layerswarm: the two set-up commands are `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: install model demo test test-fast lint format bench clean

$(STAMP): requirements/node.txt requirements/portal.txt requirements/dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/dev.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

## Fetch the default model (SmolLM2-135M-Instruct) into $LAYERSWARM_HOME (~/.cache/layerswarm).
model: install
	$(PY) -m swarmnode models fetch smollm2

## Run a local swarm (3 nodes x 10 blocks) in the foreground; Ctrl-C stops everything.
demo: model
	$(PY) -m swarmnode demo --model smollm2 --nodes 3

## The whole test suite (CI calls exactly this).
test: model
	$(PY) -m pytest -q

## Everything but the slow end-to-end tests.
test-fast: model
	$(PY) -m pytest -q -m "not slow"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

## Swarm vs local transformers, same run.
bench: model
	$(PY) -m swarmnode bench --model smollm2 --nodes 3 --new-tokens 64 --json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
