# ganaug: two commands on a fresh machine.
#   make repro   set up the virtualenv and run the whole DVC pipeline on the embedded default
#   make test    set up the virtualenv and run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1
export DO_NOT_TRACK := 1

.PHONY: setup repro test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --progress-bar off -e ".[test]"
	touch $@

repro: setup
	@test -d .git || (git init -q && git add -A && git -c user.name=ganaug -c user.email=ganaug@localhost commit -qm "initial")
	$(BIN)/dvc repro
	@echo
	@echo "Report:  reports/eval.md   (metrics: dvc metrics show; plots: plots/, dvc plots show)"
	@cat reports/eval.md

# Three pytest-xdist workers on two cores: much of the suite waits (Prefect servers, workers and polls), so a
# third worker fills the cores (5:11 against 6:18-6:52 with two, 6:28 with four; docs/benchmarks.md). The
# tests of one Prefect module run on one worker (xdist_group marks), sharing its test server.
TEST_WORKERS ?= 3

test: setup
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

bench: setup
	$(BIN)/python -m bench.throughput

clean:
	rm -rf data/prepared data/synthetic data/augmented models metrics reports plots dvclive checkpoints
