"""Step records: what a pipeline step wants tracked, written into its own output artifact.

The heavy steps of the DAG (ExampleGen, Transform, the tuner, the trainers, the Evaluator) never talk to MLflow and
take no per-run input (no run id, run name, time or status directory), so that KFP can serve them from its cache
when their data and config are unchanged. What a reviewer needs from them goes into their ``record`` output
artifact instead, a directory holding:

* ``step_record.json`` (this module's :class:`StepRecord`, ``format: recflow.step-record/1``):

  - ``step``, ``execution_id`` (a fresh uuid per execution: a record served from the cache keeps the id of the
    execution that wrote it), ``finished_at`` (UTC, ISO 8601), ``seconds`` (the step's wall time);
  - ``config``: the config sections the step read, validated (``{"trainer": {...}}``; logged as params and as
    ``config/<section>.yaml``);
  - ``metrics`` (flat name -> number), ``curves`` (name -> one value per epoch), ``tags`` (name -> text) of the
    step's own run; ``parent_metrics`` and ``parent_tags`` that also go on the pipeline run;
  - ``artifacts``: ``{"file": <path inside the record directory>, "artifact_path": <MLflow folder>,
    "on_pipeline": <also on the pipeline run>}`` -- the files themselves are copied under ``files/``;
  - ``children``: runs nested under the step's run (the tuner's trials): ``{"name", "params", "metrics"}``;
  - ``notes``: JSON facts for the local run's summary (``blessed``, ``reasons``, ...);

* ``files/<n>/<name>``: the copied files and directories the record's ``artifacts`` name.

A light tracking step per heavy step (``components/track``, never cached, the only one that takes the run id)
reads the record and logs the step's nested MLflow run (:func:`recflow.tracking.records.log_step_record`) -- the
same split as TFX's executor (does the work) and publisher (records it in ML Metadata). Only the standard library
is used here: every step imports this module.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RECORD_FILE = "step_record.json"
RECORD_FORMAT = "recflow.step-record/1"
FILES_DIR = "files"


@dataclass
class StepRecord:
    """What one execution of a step wants tracked (see the module docstring for each field)."""

    step: str
    execution_id: str
    finished_at: str
    seconds: float
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    curves: dict[str, list[float]] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    parent_metrics: dict[str, float] = field(default_factory=dict)
    parent_tags: dict[str, str] = field(default_factory=dict)
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    children: list[dict[str, Any]] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RecordFile:
    """A file or directory to log with the step's run (and the pipeline run when ``on_pipeline``)."""

    path: Path
    artifact_path: str = ""
    on_pipeline: bool = False


def write_step_record(out_dir: Path | str, record: StepRecord, files: Iterable[RecordFile] = ()) -> Path:
    """Write ``record`` and copies of ``files`` into ``out_dir`` (created; what was there is replaced).

    Files that do not exist are skipped. The directory is assembled beside ``out_dir`` and renamed into place,
    so a step that dies half-way never leaves a half-written record. Returns ``out_dir``.
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        entries = []
        for n, item in enumerate(files):
            source = Path(item.path)
            if not source.exists():
                continue
            target = staging / FILES_DIR / str(n) / source.name
            target.parent.mkdir(parents=True)
            if source.is_dir():
                shutil.copytree(source, target)
            else:
                shutil.copyfile(source, target)
            entries.append({"file": target.relative_to(staging).as_posix(), "artifact_path": item.artifact_path,
                            "on_pipeline": bool(item.on_pipeline)})
        document = {"format": RECORD_FORMAT, **asdict(record), "artifacts": entries}
        (staging / RECORD_FILE).write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def read_step_record(record_dir: Path | str) -> StepRecord:
    """The record in ``record_dir``; :class:`recflow.errors.DataError` naming the file when it is missing or not
    a step record of this format."""
    from recflow.errors import DataError

    path = Path(record_dir) / RECORD_FILE
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: no step record (the step that should have written it did not finish)") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(document, dict) or document.get("format") != RECORD_FORMAT:
        found = document.get("format") if isinstance(document, dict) else type(document).__name__
        raise DataError(f"{path}: field format: expected {RECORD_FORMAT!r}, got {found!r}")
    known = set(StepRecord.__dataclass_fields__)
    missing = sorted(k for k in ("step", "execution_id", "finished_at", "seconds") if k not in document)
    if missing:
        raise DataError(f"{path}: missing field(s) {', '.join(missing)}")
    return StepRecord(**{k: v for k, v in document.items() if k in known})


def record_file(record_dir: Path | str, entry: dict[str, Any]) -> Path:
    """The local path of one ``artifacts`` entry of the record in ``record_dir``."""
    return Path(record_dir) / str(entry["file"])
