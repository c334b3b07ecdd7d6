# Fresh-machine entry points (see README.md):
#   make demo   set up .venv and run a short real training (then `make explorer` to look at it)
#   make test   set up .venv and run ruff + the test suite under tensorflow, jax and torch
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SHARED ?= ../shared
BACKENDS ?= tensorflow jax torch

# Use the offline copies in ../shared when they are there; otherwise Keras downloads.
DATA_DIR ?= $(wildcard $(SHARED)/data/fashion-mnist)
WEIGHTS ?= $(or $(wildcard $(SHARED)/weights/resnet50_imagenet_notop.weights.h5),imagenet)
DATA_FLAG := $(if $(DATA_DIR),--data-dir $(DATA_DIR),)

.PHONY: setup demo test lint test-core test-sweeps test-explorer explorer browser clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU torch first: with torch already present, the [torch] extra installs nothing more.
	$(BIN)/pip install -q --no-compile torch==2.13.0
	$(BIN)/pip install -q --no-compile -e ".[jax,torch,explorer,dev]"
	# The bytecode pip would write one file at a time, on every core at once (fresh setup 103 s instead of
	# 122 s, the same 25,410 .pyc files). It must exist: where PYTHONDONTWRITEBYTECODE is set, as on our
	# machines, nothing imported is cached, and CI's tensorflow pass took 586 s instead of 449 s without it.
	# A few files in packages' test data do not compile; that is theirs to keep, not a failed setup.
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	touch $@

setup: $(VENV)/.installed

demo: setup
	KERAS_BACKEND=$${KERAS_BACKEND:-tensorflow} $(BIN)/python -m tlkit.train --preset cpu $(DATA_FLAG) \
		--weights $(WEIGHTS) --train-limit 4000 --test-limit 1000 --head-epochs 5 --finetune-epochs 1 \
		--name demo

explorer: setup
	$(BIN)/streamlit run explorer --server.address 127.0.0.1

browser:
	scripts/install-browser.sh

lint: setup
	$(BIN)/ruff check .

# The suites share one cache directory, so that under jax what one test compiles, the next reads back
# (tlkit.environment.keep_jax_compilations). A fresh checkout starts with it empty.
test test-core test-sweeps test-explorer: export TLKIT_CACHE_DIR := $(CURDIR)/.tlkit-cache/tests

# Two pytest workers: compiling and process start-up are mostly single-threaded (jax pass 566 -> 432 s).
# Tests marked backend_independent run in the first backend's pass only.
PYTEST_CORE := -m pytest -q -n 2 --dist worksteal --ignore=tests/explorer --ignore=tests/sweeps

test-core: setup
	marks=""; for backend in $(BACKENDS); do \
		echo "== tests under KERAS_BACKEND=$$backend"; \
		KERAS_BACKEND=$$backend $(BIN)/python $(PYTEST_CORE) -m "$$marks" || exit 1; \
		marks="not backend_independent"; \
	done

# Sweeps start a real local Ray cluster and run their trials through the CLI: once, like the explorer.
test-sweeps: setup
	KERAS_BACKEND=jax $(BIN)/python -m pytest -q tests/sweeps

# The explorer never imports a backend for training (it launches the CLI), so it runs once.
test-explorer: setup browser
	KERAS_BACKEND=jax $(BIN)/python -m pytest -q tests/explorer

test: lint test-core test-sweeps test-explorer

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .tlkit-cache/tests
