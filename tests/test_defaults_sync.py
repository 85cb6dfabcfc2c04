"""recflow/defaults.yaml agrees with the typed config models, and regenerating it keeps its comments."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("gen_defaults", ROOT / "tools" / "gen_defaults.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_defaults"] = module
    spec.loader.exec_module(module)
    return module


def test_defaults_yaml_is_up_to_date_with_the_models() -> None:
    """A default changed in a model but not in defaults.yaml (or the reverse) fails here: run the tool."""
    assert _tool().main(["--check", "--path", str(ROOT / "recflow" / "defaults.yaml")]) == 0


def test_regenerating_restores_values_and_keeps_every_comment(tmp_path: Path) -> None:
    tool = _tool()
    text = (ROOT / "recflow" / "defaults.yaml").read_text(encoding="utf-8")
    assert "  top_k: 100\n" in text and "  early_stopping_patience: 2\n" in text
    edited = (text.replace("  top_k: 100\n", "  top_k: 7  # a hand-written note\n", 1)
              .replace("  early_stopping_patience: 2\n", "  early_stopping_patience: 2   # kept as written\n", 1))
    path = tmp_path / "defaults.yaml"
    path.write_text(edited, encoding="utf-8")
    assert tool.main(["--check", "--path", str(path)]) == 1
    assert tool.main(["--path", str(path)]) == 0
    out = path.read_text(encoding="utf-8")
    assert "  top_k: 100  # a hand-written note\n" in out  # the model's value, the comment kept
    assert "  early_stopping_patience: 2   # kept as written\n" in out  # unchanged value: the line verbatim
    original_comments = [ln.strip() for ln in text.splitlines() if "#" in ln]
    kept = out.splitlines()
    for comment in (c[c.index("#"):] for c in original_comments):
        assert any(comment in ln for ln in kept), comment
    assert yaml.safe_load(out) == yaml.safe_load(text)


@pytest.mark.parametrize(("line", "expected"), [
    ("  a: 1  # note", ("  a: 1", "# note")),
    ('  a: "x # not a comment"', ('  a: "x # not a comment"', None)),
    ("  a: b#c", ("  a: b#c", None)),
    ("# only", ("", "# only")),
])
def test_split_comment(line: str, expected: tuple[str, str | None]) -> None:
    assert _tool()._split_comment(line) == expected
