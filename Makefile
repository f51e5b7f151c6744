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

.PHONY: lab test book gpu-check lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[notebooks,book,dev,rl]'
	touch $(STAMP)

lab: $(STAMP)
	@if [ -n "$(ALLOW_ROOT)" ]; then echo "Running as root: JupyterLab starts with --allow-root."; fi
	@echo "JupyterLab: http://127.0.0.1:$(PORT)/lab?token=$(TOKEN)"
	$(BIN)/jupyter lab --no-browser --ip=127.0.0.1 --port=$(PORT) $(ALLOW_ROOT) \
		--IdentityProvider.token=$(TOKEN) --notebook-dir=notebooks

test: $(STAMP)
	$(BIN)/python -m pytest -rfEs

# A static site of the executed notebooks, maths reference, glossary and API reference;
# MathJax ships inside it, so it reads offline. Open build/book/index.html.
book: $(STAMP)
	$(BIN)/sphinx-build -W --keep-going -q -b html -c book . build/book
	@echo "The book: build/book/index.html"

# On a machine with a CUDA GPU: CUDA tests, CPU/GPU parity, batch-1024 timings and one
# training epoch, in one JSON report (build/gpu_check.json). CI runs its CPU dry run.
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py

lint: $(STAMP)
	$(BIN)/ruff check fwplab tests benchmarks

clean:
	rm -rf build .pytest_cache
