# Offline infrastructure checkers (included by the Makefile). `make infra-tools` is idempotent: redone only when
# a pin changes. They live in their own venv so checkov's dependencies never touch the ML stack in .venv.
INFRA_PYTHON ?= python3.11
INFRA_VENV := .venv-infra
INFRA_STAMP := $(INFRA_VENV)/.infra-tools-installed
INFRA_INPUTS := requirements/infra-tools.txt infra/checks/python-hcl2.txt

.PHONY: infra-tools infra-check

infra-tools: $(INFRA_STAMP)

# Needs only the Makefile's pinned uv ($(UV)), not the main venv.
$(INFRA_STAMP): $(INFRA_INPUTS) | $(UV)
	@test -x $(INFRA_VENV)/bin/python || $(INFRA_PYTHON) -m venv $(INFRA_VENV)
	$(UV) pip install --python $(INFRA_VENV)/bin/python -r requirements/infra-tools.txt
	rm -rf $(INFRA_VENV)/python-hcl2
	$(UV) pip install --python $(INFRA_VENV)/bin/python --no-deps --target $(INFRA_VENV)/python-hcl2 \
		-r infra/checks/python-hcl2.txt
	@touch $(INFRA_STAMP)

# The same checks as tests/test_infra.py, readable by hand.
infra-check: infra-tools
	$(INFRA_VENV)/bin/python infra/checks/offline_checks.py fmt infra/terraform
	$(INFRA_VENV)/bin/python infra/checks/offline_checks.py validate infra/k8s
	$(INFRA_VENV)/bin/python infra/checks/offline_checks.py checkov infra/terraform infra/k8s
