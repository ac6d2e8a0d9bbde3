# Two commands from a fresh clone (prerequisites: Python >= 3.10 with venv, a C++ compiler
# with OpenMP such as gcc, about 2 GB of disk for torch; a CUDA toolkit only for the CUDA
# kernels):
#   make demo    create .venv, install torch and adamw8 (builds the C++ kernels), run the demo
#   make test    the test suite, in the same .venv
# TORCH=... picks the torch to install (default: torch; CI uses torch==2.13.0).
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch
BIN := $(VENV)/bin

.PHONY: demo test
demo: $(VENV)/.installed
	@echo "== the demo: 8-bit against 32-bit AdamW on a small language model (about a minute on 2 CPU cores)"
	$(BIN)/python -m adamw8.demo

test: $(VENV)/.installed
	@echo "== the tests (a few minutes; GPU tests are skipped without CUDA)"
	$(BIN)/python -m pytest -q tests

$(VENV)/.installed: pyproject.toml setup.py $(wildcard csrc/*.cpp csrc/*.h csrc/*.cu csrc/*.cuh csrc/cpu/*.cpp csrc/cpu/*.h)
	@echo "== creating the virtual environment $(VENV)"
	$(PYTHON) -m venv $(VENV)
	@echo "== installing $(TORCH) and the build tools"
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)" ninja setuptools wheel
	@echo "== building and installing adamw8 (compiles the C++ kernels: about a minute)"
	$(BIN)/python -m pip install -q --no-build-isolation -e ".[test]"
	$(BIN)/python -c "import adamw8, torch; print('adamw8', adamw8.__version__, 'on torch', torch.__version__, '| compiled kernels:', not adamw8.ops.using_reference['cpu'])"
	@touch $@
