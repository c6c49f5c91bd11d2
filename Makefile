# One-command set-up: `make demo` runs the main job, `make test` runs the tests.
# Both create .venv when missing. torch is installed first from the CPU wheel
# pinned below (a plain `pip install torch` would pull a multi-GB CUDA build).
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install system-deps demo demo-full test test-full test-random coverage lint clean

# Debian packages for the native runner on the host and on ARM: the host and cross compilers, qemu-user
# (emulated aarch64), valgrind (instruction counts) and OpenSSH (the ssh device and its loopback test).
# Outside CI the tests that need one skip naming it; under CI (CI=true) they fail.
SYSTEM_DEPS := g++ g++-aarch64-linux-gnu qemu-user valgrind openssh-client openssh-server
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

system-deps:
	@missing=$$(for p in $(SYSTEM_DEPS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "apt-get install $$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
			--no-install-recommends $$missing >/dev/null; \
	fi

# the main job in a few minutes (README states the time measured here); demo-full: the whole walkthrough
demo: $(STAMP)
	$(BIN)/mobilevits demo

demo-full: $(STAMP)
	$(BIN)/mobilevits demo --full

# Two xdist workers (this host has 2 cores: 17 min instead of 32, measured with coverage); a fixed order
# here, `make test-random` for pytest-randomly's shuffled order (it prints the seed to replay). The 30 slowest
# tests are listed at the end, to keep the suite near its 20-minute goal. `make test` leaves out the int8
# cells of the tiny families marked `matrix` (tests/conftest.py); `make test-full` runs everything.
test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -p no:randomly -n 2 --durations=30 -m "not matrix" tests

test-full: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -p no:randomly -n 2 --durations=30 tests

test-random: $(STAMP)  # not -q: the header names the seed (replay with -p randomly --randomly-seed=N)
	$(BIN)/python -m pytest -p no:cacheprovider -n 2 -m "not matrix" tests

coverage: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -p no:randomly -n 2 --cov=mobilevits --cov=converters \
		--cov-report=term tests

lint: $(STAMP)
	$(BIN)/ruff check mobilevits converters tests benchmarks
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) out .pytest_cache
