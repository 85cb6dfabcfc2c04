# Offline infrastructure checkers (included by the Makefile). `make infra-tools` is idempotent: redone only when
# a pin changes. They live in their own venv so checkov's dependencies never touch the ML stack in .venv.
INFRA_PYTHON ?= python3.11
INFRA_VENV := .venv-infra
INFRA_STAMP := $(INFRA_VENV)/.infra-tools-installed
INFRA_INPUTS := requirements/infra-tools.txt infra/checks/python-hcl2.txt

.PHONY: infra-tools infra-check

infra-tools: $(INFRA_STAMP)

# Needs only the Makefile's pinned uv ($(UV)), not the main venv. Both files are `make lock` outputs with a hash
# for every distribution, and both installs require them. A sync, not an install: the venv holds exactly
# requirements/infra-tools.txt. It is created without pip/setuptools (nothing in the set needs them); a venv made
# before this rule still has the pip 23.2.1 and setuptools 65.5.0 that `python -m venv` seeded, which uv's sync
# keeps as seed packages, so they are uninstalled first.
$(INFRA_STAMP): $(INFRA_INPUTS) | $(UV)
	@test -x $(INFRA_VENV)/bin/python || $(INFRA_PYTHON) -m venv --without-pip $(INFRA_VENV)
	@if test -e $(INFRA_VENV)/bin/pip; then $(UV) pip uninstall --python $(INFRA_VENV)/bin/python pip setuptools; fi
	$(UV) pip sync --require-hashes --python $(INFRA_VENV)/bin/python requirements/infra-tools.txt
	rm -rf $(INFRA_VENV)/python-hcl2
	$(UV) pip install --require-hashes --python $(INFRA_VENV)/bin/python --no-deps --target $(INFRA_VENV)/python-hcl2 \
		-r infra/checks/python-hcl2.txt
	@touch $(INFRA_STAMP)

# The same checks as tests/test_infra.py, readable by hand.
infra-check: infra-tools
	$(INFRA_VENV)/bin/python infra/checks/offline_checks.py fmt infra/terraform
	$(INFRA_VENV)/bin/python infra/checks/offline_checks.py validate infra/k8s
	$(INFRA_VENV)/bin/python infra/checks/offline_checks.py checkov infra/terraform infra/k8s
