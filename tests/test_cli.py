import subprocess
import sys
from pathlib import Path

import yaml

from recflow.cli import main


def test_config_show_prints_effective_config(capsys):
    assert main(["--set", "simulator.users=33", "config", "show"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["simulator"]["users"] == 33


def test_bad_config_is_an_error_message_not_a_traceback(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("simulator:\n  users: -1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "recflow", "--config", str(bad), "config", "show"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "simulator.users" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_plugin_commands_are_listed(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("config", "data", "demo"):
        assert name in out
