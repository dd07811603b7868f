# `make grade` grades katas/; `make test` runs the project's own tests. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Where no NVIDIA GPU is found, torch is pinned to the release whose CPU build our machines keep on disk;
# with a GPU, pip takes the newest torch. Override either way: make CPU_TORCH='torch==2.5.1' test
CPU_TORCH ?= torch==2.13.0
TORCH := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo torch || echo '$(CPU_TORCH)')

.PHONY: grade test lint setup
grade: $(VENV)/.ready
	$(BIN)/pytest grader/ $(ARGS)

# Two workers (pytest-xdist): most tests grade in-process and wait on nothing, so both cores stay busy. Tests
# marked with one xdist_group run on one worker, so that what they share (the reference's grading) is made once.
# The tests start many fresh grading processes; where the environment sets PYTHONDONTWRITEBYTECODE each would
# compile the grader again, pytest's assertion rewriting included. A submission's modules are never cached
# (lora_kata/grading/implementation.py compiles them from source).
test: $(VENV)/.ready
	PYTHONDONTWRITEBYTECODE= $(BIN)/pytest -n 2 --dist loadgroup $(ARGS)

lint: $(VENV)/.ready
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

setup: $(VENV)/.ready

$(VENV)/.ready: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@
