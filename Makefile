# Two commands do all the set-up: `make lab` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fwplab-installed
PORT ?= 8888
# Expanded once (:=), so the URL printed and the token given to JupyterLab are the same.
ifndef TOKEN
TOKEN := $(shell $(PYTHON) -c "import secrets; print(secrets.token_hex(16))")
endif
# JupyterLab refuses to run as root (containers, cloud notebooks, CI) without this flag.
ALLOW_ROOT := $(shell [ "$$(id -u)" = 0 ] && echo --allow-root)
# The project's extras that `make lab` and `make test` install (append a new one here).
EXTRAS := notebooks,book,dev,rl
# What only the tests need on top: submitit (the grid launcher's tests), aeon (the rocket
# baseline's) and, on Linux, Triton (its kernels run on the CPU under TRITON_INTERPRET=1
# against the PyTorch path).
TEST_EXTRAS := cluster,gpu,baselines
TEST_STAMP := $(VENV)/.fwplab-test-installed
# Which build of PyTorch goes into .venv: `cuda` where nvidia-smi lists a GPU, else `cpu`
# (PyPI's Linux wheel of torch carries ~3 GB of CUDA libraries). FWPLAB_TORCH=cpu, cuda or
# skip (keep the torch already in .venv, or whatever the project's install brings) overrides.
GPU_FOUND := $(shell nvidia-smi -L 2>/dev/null | grep -q '^GPU' && echo yes)
ifdef FWPLAB_TORCH
TORCH_WHY := FWPLAB_TORCH=$(FWPLAB_TORCH)
else
FWPLAB_TORCH := $(if $(GPU_FOUND),cuda,cpu)
TORCH_WHY := $(if $(GPU_FOUND),nvidia-smi lists a GPU,no NVIDIA GPU found)
endif
ifeq ($(filter $(FWPLAB_TORCH),cpu cuda skip),)
$(error FWPLAB_TORCH must be cpu, cuda or skip, not '$(FWPLAB_TORCH)')
endif
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
PIP := $(BIN)/python -m pip

.PHONY: lab test book gpu-check lint clean

# The CPU build comes from PyTorch's CPU index; where that index cannot be reached, pip's
# own indexes and wheel folders are asked instead, and the line printed says so.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	@case "$(FWPLAB_TORCH)" in \
	cpu) echo "torch: CPU build ($(TORCH_WHY); FWPLAB_TORCH=cuda|cpu|skip chooses)"; \
	     $(PIP) install --quiet --retries 0 --timeout 30 --index-url $(TORCH_CPU_INDEX) torch \
	       2>/dev/null \
	     || { echo "torch: $(TORCH_CPU_INDEX) unreachable, torch comes from pip's" \
	               "indexes (on Linux, PyPI's is the CUDA build)"; \
	          $(PIP) install --quiet torch; } ;; \
	cuda) echo "torch: CUDA build ($(TORCH_WHY); FWPLAB_TORCH=cuda|cpu|skip chooses)"; \
	      $(PIP) install --quiet torch ;; \
	skip) echo "torch: kept as installed ($(TORCH_WHY)); the project's install adds it if missing" ;; \
	esac
	$(PIP) install --quiet -e '.[$(EXTRAS)]'
	@$(PIP) show torch | sed -n 's/^Version: /torch installed: /p'
	touch $(STAMP)

lab: $(STAMP)
	@if [ -n "$(ALLOW_ROOT)" ]; then echo "Running as root: JupyterLab starts with --allow-root."; fi
	@echo "JupyterLab: http://127.0.0.1:$(PORT)/lab?token=$(TOKEN)"
	$(BIN)/jupyter lab --no-browser --ip=127.0.0.1 --port=$(PORT) $(ALLOW_ROOT) \
		--IdentityProvider.token=$(TOKEN) --notebook-dir=notebooks

$(TEST_STAMP): $(STAMP)
	$(PIP) install --quiet -e '.[$(EXTRAS),$(TEST_EXTRAS)]'
	touch $(TEST_STAMP)

test: $(TEST_STAMP)
	$(BIN)/python -m pytest -rfEs

# A static site of the executed notebooks, maths reference, glossary and API reference;
# MathJax ships inside it, so it reads offline. Open build/book/index.html.
book: $(STAMP)
	$(BIN)/sphinx-build -W --keep-going -q -b html -c book . build/book
	@echo "The book: build/book/index.html"

# On a machine with a CUDA GPU: CUDA tests, CPU/GPU parity, batch-1024 timings and one
# training epoch, in one JSON report (build/gpu_check.json). CI runs its CPU dry run.
gpu-check: $(STAMP)
ifeq ($(GPU_FOUND),yes)
	$(BIN)/python benchmarks/gpu_check.py
else
	@echo "gpu-check: no GPU found (nvidia-smi lists none). Running the CPU dry run instead:"
	@echo "  the same steps at toy sizes (machine report, parity of every model's logits with"
	@echo "  the CPU reference, solver timings, one training epoch); no CUDA test runs."
	$(BIN)/python benchmarks/gpu_check.py --dry-run
endif

lint: $(STAMP)
	$(BIN)/ruff check fwplab tests benchmarks

clean:
	rm -rf build .pytest_cache
