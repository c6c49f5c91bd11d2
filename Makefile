# One-command set-up: `make demo` runs the main job, `make test` runs the tests.
# Both create .venv when missing. torch is installed first from the CPU wheel
# pinned below (a plain `pip install torch` would pull a multi-GB CUDA build).
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-random coverage lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/mobilevits demo

# Two xdist workers (this host has 2 cores: 17 min instead of 32, measured with coverage); a fixed order
# here, `make test-random` for pytest-randomly's shuffled order (it prints the seed to replay).
test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -p no:randomly -n 2 tests

test-random: $(STAMP)  # not -q: the header names the seed (replay with -p randomly --randomly-seed=N)
	$(BIN)/python -m pytest -p no:cacheprovider -n 2 tests

coverage: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -p no:randomly -n 2 --cov=mobilevits --cov=converters \
		--cov-report=term tests

lint: $(STAMP)
	$(BIN)/ruff check mobilevits converters tests benchmarks
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) out .pytest_cache
