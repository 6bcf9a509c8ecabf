# envfence: `make check` evaluates every stack offline and runs every check;
# `make test` runs the whole suite. Both create .venv/ themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: check test bench lint clean contract

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall when the dependency list changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Evaluate every stack offline (summary of each), then run every rule across all stacks.
check: $(STAMP)
	$(BIN)/envfence plan --summary
	$(BIN)/envfence check

# Bytecode caching on, whatever the environment says: with PYTHONDONTWRITEBYTECODE set, every
# pytest-xdist worker re-compiles and re-rewrites every module it imports (seconds each).
test: $(STAMP)
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -q -n auto

# Re-record the worker's AWS calls into app/request-contract.json (review the diff).
contract: $(STAMP)
	ENVFENCE_RECORD_CONTRACT=1 $(BIN)/python -m pytest -q tests/test_request_contract.py

bench: $(STAMP)
	$(BIN)/python bench/run.py

lint: $(STAMP)
	$(BIN)/ruff check envfence infra policy tests app db
	$(BIN)/ruff format --check envfence infra policy tests app db
	$(BIN)/mypy envfence infra

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
