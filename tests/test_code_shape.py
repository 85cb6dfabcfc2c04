"""The shape of the code: no function longer than :data:`MAX_LINES` lines in the platform's packages.

A function may be longer when a comment at its top says why: ``# long-function: <reason>`` on the line above
its ``def`` (or above its decorators), or between the ``def`` line and its first statement. Its length counts
from the ``def`` line to its last line, docstring and nested functions included.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("recflow", "serving", "monitoring", "pipelines")
MAX_LINES = 80
MARKER = re.compile(r"#\s*long-function:\s*\S")


def long_functions(path: Path, max_lines: int = MAX_LINES, root: Path = ROOT) -> list[str]:
    """``file:line name (N lines)`` (file relative to ``root``) of each function in ``path`` over ``max_lines``
    lines without a marker."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    found = []
    for node in ast.walk(ast.parse(text, filename=str(path))):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        length = (node.end_lineno or node.lineno) - node.lineno + 1
        if length <= max_lines:
            continue
        top = min([node.lineno] + [d.lineno for d in node.decorator_list])
        head = lines[max(top - 2, 0): node.body[0].lineno - 1]  # the line above, the signature, up to the body
        if not any(MARKER.search(line) for line in head):
            found.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_the_checker_finds_a_long_function_and_honours_the_marker(tmp_path: Path) -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(5))
    plain = tmp_path / "plain.py"
    plain.write_text(f"def f():\n{body}\n\n@staticmethod\ndef g():\n    return 1\n")
    assert long_functions(plain, 4, tmp_path) == ["plain.py:1 f (6 lines)"]
    above = tmp_path / "above.py"
    above.write_text(f"# long-function: a table of cases\ndef f():\n{body}")
    inside = tmp_path / "inside.py"
    inside.write_text(f"def f(\n    a: int,\n):  # long-function: one pass over the log\n{body}")
    reasonless = tmp_path / "reasonless.py"
    reasonless.write_text(f"def f():\n    # long-function:\n{body}")
    assert long_functions(above, 4, tmp_path) == [] and long_functions(inside, 4, tmp_path) == []
    assert long_functions(reasonless, 4, tmp_path) == ["reasonless.py:1 f (7 lines)"]


@pytest.mark.parametrize("package", PACKAGES)
def test_no_function_is_longer_than_the_limit_without_a_reason(package: str) -> None:
    found = [f for path in sorted((ROOT / package).rglob("*.py")) for f in long_functions(path)]
    assert not found, (f"functions over {MAX_LINES} lines without a '# long-function: <reason>' comment at their "
                       "top:\n" + "\n".join(found))
