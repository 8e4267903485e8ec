# One entry point for every routine task. `make test` is what CI runs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test check bench soak chaos lint format clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m ops.run_local

test: $(STAMP)
	$(BIN)/python -m pytest

check: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy common broker station vehicle ops

bench: $(STAMP)
	$(BIN)/python -m tests.bench

# 30 minutes of mixed legitimate and hostile traffic (not part of `make test`);
# SOAK_MINUTES=2 for a short run
SOAK_MINUTES ?= 30
soak: $(STAMP)
	$(BIN)/python -m tests.hostile.soak --minutes $(SOAK_MINUTES)

# The whole stack (regions profile) under random faults, then an invariant check
# (docs/reliability.md; not part of `make test`, which runs a 3-minute one);
# CHAOS_MINUTES=5 for a shorter run, CHAOS_SEED=N to replay a run.
CHAOS_MINUTES ?= 20
CHAOS_SEED ?=
chaos: $(STAMP)
	$(BIN)/python -m tests.chaos --minutes $(CHAOS_MINUTES) $(if $(CHAOS_SEED),--seed $(CHAOS_SEED))

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
