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

# Three pytest-xdist workers on two cores: part of the suite waits (Prefect workers and polls, locks), so a
# third worker keeps both cores busy (docs/benchmarks.md, "Test suite time"). `--dist loadgroup` keeps any
# xdist_group on one worker; the Prefect tests share one session server (tests/conftest.py), not a group.
TEST_WORKERS ?= 3

test: setup
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

bench: setup
	$(BIN)/python -m bench.throughput

clean:
	rm -rf data/prepared data/synthetic data/augmented models metrics reports plots dvclive checkpoints
