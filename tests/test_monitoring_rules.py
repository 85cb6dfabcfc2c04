"""Alert rules, their promtool unit tests, the Alertmanager routing, the runbooks and the Grafana dashboard."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROM = ROOT / "monitoring" / "prometheus"
RULES = PROM / "alerts.yml"
RULE_TESTS = PROM / "tests" / "alerts_test.yml"
ALERTMANAGER = ROOT / "monitoring" / "alertmanager" / "alertmanager.yml"
DASHBOARD = ROOT / "monitoring" / "grafana" / "recflow-dashboard.json"
INSTALL = "apt-get install -y prometheus prometheus-alertmanager prometheus-pushgateway"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; install the Debian packages: {INSTALL}")
    return path


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT)


def alerts() -> list[dict[str, object]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_rules_are_valid() -> None:
    result = run(tool("promtool"), "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    result = run(tool("promtool"), "test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_catch_a_broken_rule(tmp_path: Path) -> None:
    # the tests are not vacuous: a CTR rule with the wrong threshold makes them fail
    broken = RULES.read_text().replace("0.8 * max(recflow_champion_expected_ctr)",
                                       "0.5 * max(recflow_champion_expected_ctr)")
    (tmp_path / "alerts.yml").write_text(broken)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "alerts_test.yml").write_text(RULE_TESTS.read_text())
    result = run(tool("promtool"), "test", "rules", str(tmp_path / "tests" / "alerts_test.yml"))
    assert result.returncode != 0 and "RecflowCTRDrop" in result.stdout + result.stderr


def test_every_alert_has_severity_runbook_and_unit_tests() -> None:
    tested = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    firing = {case["alertname"] for test in tested for case in test["alert_rule_test"] if case["exp_alerts"]}
    silent = {case["alertname"] for test in tested for case in test["alert_rule_test"] if not case["exp_alerts"]}
    for rule in alerts():
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), name  # type: ignore[index]
        assert rule["annotations"]["runbook_url"] == f"docs/runbooks/{name}.md", name  # type: ignore[index]
        assert name in firing and name in silent, f"{name}: needs a firing and a silent promtool case"


def test_runbook_links_resolve_and_runbooks_say_what_to_do() -> None:
    names = {rule["alert"] for rule in alerts()}
    # README.md is the index (the variables every runbook's Commands block uses), not a runbook
    runbooks = {p.stem for p in (ROOT / "docs" / "runbooks").glob("*.md") if p.name != "README.md"}
    assert runbooks == names  # one runbook per alert, none orphaned
    for rule in alerts():
        page = ROOT / str(rule["annotations"]["runbook_url"])  # type: ignore[index]
        text = page.read_text()
        assert text.startswith(f"# {rule['alert']}\n")
        for section in ("## What it means", "## How to look", "## What to do"):
            assert section in text, f"{page.name}: missing {section!r}"
        assert rule["labels"]["severity"] in text  # type: ignore[index]


def test_runbook_commands_exist() -> None:
    from click.testing import CliRunner

    from recflow.cli import cli

    used = set()
    for page in (ROOT / "docs" / "runbooks").glob("*.md"):
        used |= set(re.findall(r"`recflow ((?:[a-z]+ )?[a-z]+)", page.read_text()))
    assert used
    for command in used:
        result = CliRunner().invoke(cli, [*command.split(), "--help"])
        assert result.exit_code == 0, f"runbooks mention `recflow {command}`, which does not exist"


def test_alertmanager_config_and_routes() -> None:
    amtool = tool("amtool")
    result = run(amtool, "check-config", str(ALERTMANAGER))
    assert result.returncode == 0, result.stdout + result.stderr

    def route(*labels: str) -> str:
        out = run(amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER}", *labels)
        return out.stdout.strip()

    assert route("alertname=RecflowDataDrift", "team=ml", "severity=warning") == "retraining-watcher,ml-oncall"
    assert route("alertname=RecflowCTRDrop", "team=ml", "severity=critical") == "retraining-watcher,ml-oncall"
    assert route("alertname=RecflowServingErrorRateHigh", "team=serving", "severity=critical") == "serving-pager"
    assert route("alertname=RecflowServingLatencyHigh", "team=serving", "severity=warning") == "serving-oncall"
    assert route("alertname=RecflowPipelineFailed", "team=ml", "severity=critical") == "ml-oncall"


def test_prometheus_config_is_valid() -> None:
    result = run(tool("promtool"), "check", "config", str(PROM / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_dashboard_queries_known_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 6
    rule_text = RULES.read_text()
    metrics = set(re.findall(r"recflow_[a-z_]+", " ".join(exprs)))
    from monitoring.drift_metrics import drift_registry  # noqa: F401 - the names it exports are checked below

    exported = set(re.findall(r"recflow_[a-z_]+", (ROOT / "monitoring" / "drift_metrics.py").read_text()))
    exported |= set(re.findall(r"recflow_[a-z_]+", (ROOT / "monitoring" / "watcher.py").read_text()))
    exported |= set(re.findall(r"recflow_[a-z_]+", rule_text))  # serving's metrics, as the rules name them
    assert metrics <= exported | {m.removesuffix("_bucket") for m in exported}, metrics - exported
