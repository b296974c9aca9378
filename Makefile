# samrl: RL for reasoning segmentation with SAM2 in the reward loop.
# `make test` sets up the locked environment when needed and runs the tests.

PYTHON ?= python3
VENV ?= .venv
UV_VERSION := 0.13.8
BIN := $(VENV)/bin
STAMP := $(VENV)/.samrl-setup
# The CUDA extension of sam2 only fills mask holes, which the image predictor does not use here.
export SAM2_BUILD_CUDA ?= 0
# Ray and vLLM stay on loopback on one machine and in tests.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER ?= 0
export VLLM_HOST_IP ?= 127.0.0.1

PYTEST_ARGS ?=

.PHONY: setup test lint format bench bench-reward lock clean-venv

setup: $(STAMP)

# Re-runs only when the lock or the project metadata change, so a second `make setup` is instant.
$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip sync --python $(BIN)/python requirements.lock
	$(BIN)/uv pip install --python $(BIN)/python --no-deps --editable .
	@touch $@

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python -m bench

# SAM2 reward server versus the naive predictor loop; pass flags with ARGS="--model sam2.1_hiera_l ...".
bench-reward: $(STAMP)
	$(BIN)/python -m bench.reward $(ARGS)

# Regenerates requirements.lock from pyproject.toml: one universal lock (CPython 3.11 and 3.12, CPU-only and GPU
# nodes alike) with hashes.
lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 --generate-hashes \
		--no-header --quiet -o requirements.lock

clean-venv:
	rm -rf $(VENV)
