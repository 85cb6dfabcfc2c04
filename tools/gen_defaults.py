"""Regenerate the auto-documented sections of defaults.yaml from the typed models (the sections after 'simulator').

The values come from the pydantic models (``recflow.config.RecflowConfig()``); the hand-written comments of the
current file are kept: each section's header line, every comment block above a key and every comment after a key's
value, matched by the key's path (``trainer.sequence.heads``). A key that is new gets no comment; a key that is
gone loses its comment. ``--check`` writes nothing and exits 1 when the file differs from what would be written
(tests/test_defaults_sync.py runs it), so a changed default cannot be forgotten in defaults.yaml.

    python tools/gen_defaults.py            # rewrite recflow/defaults.yaml
    python tools/gen_defaults.py --check    # exit 1 if it is out of date
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

DEFAULTS = Path(__file__).resolve().parents[1] / "recflow" / "defaults.yaml"
MARKER = "\n# === generated sections"
#: Section headers used when the current file has none for a section.
HEAD = {
    "example_gen": "ExampleGen: validation gate and the time split (recflow/examplegen.py)",
    "transform": "Transform: tf.Transform on Apache Beam (recflow/features/transform.py)",
    "tuning": "Optional Optuna hyperparameter search step before the TFRS trainer (recflow/tuning.py)",
    "trainer": "TFRS trainer: two-tower retrieval and ranking (recflow/training/tfrs_trainer.py)",
    "policy": "TF-Agents trainer: the slate policy learned from logged feedback (recflow/policy/config.py)",
    "evaluator": "Evaluator: metrics, baselines, significance tests, blessing thresholds "
                 "(recflow/evaluation/config.py)",
    "model_store": "Pusher's model store (null path: DATA_DIR/models) (recflow/model_store.py)",
    "tracking": "MLflow (null tracking_uri: sqlite under DATA_DIR) (recflow/tracking.py)",
    "pipeline": "KFP DAG: images, per-step resources, GPU placement, caching (recflow/pipeline_config.py)",
    "serving": "The online service: request path, cold start, feedback log, hot swap, A/B, auth "
               "(recflow/serving_config.py)",
    "monitoring": "Drift job thresholds and the retraining watcher's guards (recflow/monitoring_config.py)",
}
_KEY = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z_][\w.-]*):(?:\s|$)")
_ITEM = re.compile(r"^(?P<indent>\s*)- ")


@dataclass
class _Comments:
    """The hand-written comments of the generated sections, by key path."""

    headers: dict[str, list[str]] = field(default_factory=dict)  # section -> comment lines above it
    above: dict[tuple[str, ...], list[str]] = field(default_factory=dict)  # key path -> comment lines above it
    lines: dict[tuple[str, ...], str] = field(default_factory=dict)  # key path -> the whole line, if commented


def _split_comment(line: str) -> tuple[str, str | None]:
    """``(content, comment)`` of one YAML line: the comment is the text from the first ``#`` outside quotes
    that follows whitespace, ``None`` without one."""
    quote: str | None = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i:]
    return line.rstrip(), None


def _paths(lines: list[str]) -> list[tuple[str, ...] | None]:
    """Each line's key path (``None`` for blank and comment-only lines); list items are keyed by their parent
    and their position."""
    stack: list[tuple[int, str]] = []
    counters: dict[tuple[str, ...], int] = {}
    out: list[tuple[str, ...] | None] = []
    for line in lines:
        content, _ = _split_comment(line)
        if not content.strip():
            out.append(None)
            continue
        key, item = _KEY.match(content), _ITEM.match(content)
        indent = len((key or item).group("indent")) if (key or item) else len(content) - len(content.lstrip())
        if item:  # "- x" belongs to the key at its own indent (PyYAML's style) or at a smaller one
            while stack and stack[-1][0] > indent:
                stack.pop()
        else:
            while stack and stack[-1][0] >= indent:
                stack.pop()
        parent = tuple(k for _, k in stack)
        if item:
            n = counters.get(parent, 0)
            counters[parent] = n + 1
            out.append((*parent, f"[{n}]"))
        elif key:
            stack.append((indent, key.group("key")))
            out.append((*parent, key.group("key")))
        else:
            out.append((*parent, content.strip()))
    return out


def read_comments(generated: str) -> _Comments:
    """The comments of the generated part of defaults.yaml (the text after the marker line)."""
    comments = _Comments()
    lines = generated.splitlines()
    paths = _paths(lines)
    pending: list[str] = []
    for line, path in zip(lines, paths, strict=True):
        stripped = line.strip()
        if path is None:
            if stripped.startswith("#") and not stripped.startswith("# ==="):
                pending.append(line)
            elif not stripped:
                pending = [] if not line.startswith(" ") else pending
            continue
        if len(path) == 1 and pending:
            comments.headers[path[0]] = pending
        elif pending:
            comments.above[path] = pending
        pending = []
        if _split_comment(line)[1] is not None:
            comments.lines[path] = line
    return comments


def render_section(name: str, values: object, comments: _Comments) -> str:
    """One generated section: its header, then the values as YAML with the kept comments."""
    header = comments.headers.get(name) or [f"# {HEAD.get(name, name)}"]
    dumped = yaml.safe_dump({name: values}, sort_keys=False).splitlines()
    out = list(header)
    for line, path in zip(dumped, _paths(dumped), strict=True):
        if path is not None:
            out.extend(comments.above.get(path, []) if len(path) > 1 else [])
            old = comments.lines.get(path)
            if old is not None:
                content, comment = _split_comment(old)
                # an unchanged value keeps the line as written (alignment included)
                line = old if content == line.rstrip() else f"{line.rstrip()}  {comment}"
        out.append(line)
    return "\n".join(out) + "\n"


def render(text: str) -> str:
    """defaults.yaml with its generated sections rebuilt from the typed models, comments kept."""
    import recflow.config as c

    cut = text.find(MARKER)
    head, generated = (text[:cut + 1], text[cut + 1:]) if cut >= 0 else (text, "")
    comments = read_comments(generated)
    d = c.RecflowConfig().model_dump(mode="json")
    parts = [head.rstrip("\n") + "\n" + MARKER
             + ": regenerate with `python tools/gen_defaults.py` after changing a model ===\n"]
    names = list(c.RecflowConfig.model_fields)
    for k in names[names.index("simulator") + 1:]:
        parts.append("\n" + render_section(k, d[k], comments))
    return "".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="Write nothing; exit 1 if the file is out of date.")
    parser.add_argument("--path", type=Path, default=DEFAULTS)
    args = parser.parse_args(argv)
    text = args.path.read_text(encoding="utf-8")
    new = render(text)
    if args.check:
        if new != text:
            import difflib

            sys.stdout.writelines(difflib.unified_diff(text.splitlines(True), new.splitlines(True),
                                                       str(args.path), "generated"))
            print(f"\n{args.path} is out of date with the typed models: run python tools/gen_defaults.py",
                  file=sys.stderr)
            return 1
        return 0
    tmp = args.path.with_suffix(".yaml.tmp")
    tmp.write_text(new, encoding="utf-8")
    tmp.replace(args.path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
