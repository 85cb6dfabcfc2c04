"""The bundle's file names are defined once, in recflow/bundle_layout.py, and only used elsewhere."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from recflow import bundle_layout

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("recflow", "serving", "monitoring", "pipelines", "components")
#: The distinctive names (the parts' short directory names, "model", "policy", ..., are ordinary words too).
FILE_NAMES = {
    value for name, value in vars(bundle_layout).items()
    if name.endswith("_FILE") or name == "TRANSFORM_GRAPH_DIR"
}


def literal_uses(path: Path) -> list[str]:
    """``file:line 'name'`` of every string literal in ``path`` that is exactly one of the bundle's file names."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}" for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in FILE_NAMES]


def test_the_layout_names_its_files_once() -> None:
    assert {"item_embeddings.parquet", "feature_spec.json", "candidates.parquet", "policy_meta.json"} <= FILE_NAMES
    paths = bundle_layout.BundlePaths(Path("/store/versions/v0001"))
    assert paths.item_embeddings == Path("/store/versions/v0001/model/item_embeddings.parquet")
    assert paths.feature_spec == Path("/store/versions/v0001/transform/feature_spec.json")
    assert paths.transform_graph == Path("/store/versions/v0001/transform/transform_graph")


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_repeats_a_bundle_file_name(package: str) -> None:
    found = [use for path in sorted((ROOT / package).rglob("*.py")) if path.name != "bundle_layout.py"
             for use in literal_uses(path)]
    assert not found, "use the names of recflow/bundle_layout.py instead of these literals:\n" + "\n".join(found)
