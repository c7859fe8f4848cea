# Two commands for a new user:  `make demo`  and  `make test`.
# Needs only python3 (>= 3.11); everything else is installed into .venv by these targets.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test lint typecheck bench proto clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

## Set up (first run only) and open the console on a simulated market with the paper broker.
demo: $(STAMP)
	$(BIN)/spy-console --demo $(ARGS)

## Set up (first run only), then lint, type-check and run the whole test suite.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

## Benchmarks: print throughput and latency figures (not pass/fail).
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m pytest tests/bench -m bench -s -p no:cacheprovider $(PYTEST_ARGS)

## Regenerate the Python code of the wire contract after editing proto/spyops/v1/spyops.proto.
proto: $(STAMP)
	$(BIN)/python -m proto.generate

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
