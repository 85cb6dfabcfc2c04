"""Typed configuration: one YAML file, validated into frozen pydantic models, overridable from the CLI.

Precedence (last wins): the defaults shipped in ``recflow/defaults.yaml`` < the user's YAML file (deep-merged,
so it only needs the keys it changes) < ``--set section.key=value`` overrides (values parsed as YAML).
Unknown keys are errors (a typo must not silently fall back to a default).

**Relative paths.** With a config file, every relative path setting (:data:`PATH_SETTINGS`: the data directory,
the model store, the tracking store and artifact location, the pipeline root, ...) from the file or from the
defaults it builds on is anchored at the file's directory, so ``recflow --config /elsewhere/cfg.yaml ...`` reads
and writes the same places from any working directory; a relative path given with ``--set`` is relative to the
working directory (made absolute at load). Without a config file, relative paths are relative to the working
directory. URLs (``gs://``, ``http://``) and absolute paths are left as they are.
"""

from __future__ import annotations

import copy
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from recflow.errors import ConfigError
from recflow.evaluation.config import EvaluatorConfig
from recflow.examplegen import ExampleGenConfig
from recflow.features.transform import TransformConfig
from recflow.model_store import ModelStoreConfig
from recflow.monitoring_config import MonitoringConfig
from recflow.pipeline_config import PipelineConfig
from recflow.policy.config import PolicyConfig
from recflow.release import ReleaseConfig
from recflow.serving_config import ServingConfig
from recflow.simulator.config import SimulatorConfig
from recflow.tracking import TrackingConfig
from recflow.training.tfrs_trainer import TrainerConfig
from recflow.tuning import TuningConfig


class Section(BaseModel):
    """Base of every config section: immutable, and unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class PathsConfig(Section):
    """Where recflow keeps its files. Relative paths are resolved against the working directory."""

    data_dir: Path = Field(Path("data"), description="Root for generated data, caches, runs and models.")
    cache_dir: Path | None = Field(None, description="Downloaded data sets (default: DATA_DIR/cache).")

    def resolved_cache_dir(self) -> Path:
        return self.cache_dir if self.cache_dir is not None else self.data_dir / "cache"


class ValidationConfig(Section):
    """Rules of `recflow data validate` beyond the schema itself."""

    max_bad_share: float = Field(0.01, ge=0.0, le=1.0, description="Fail when more than this share of rows is bad.")
    min_timestamp: str = Field("1990-01-01T00:00:00Z", description="Events before this instant are rejected.")
    max_future_seconds: float = Field(
        86400.0, ge=0.0, description="Events later than now + this many seconds are rejected (clock skew)."
    )
    quarantine_name: str = Field("quarantine.parquet", description="File name of the quarantine next to the data.")


class RecflowConfig(Section):
    """The whole configuration."""

    paths: PathsConfig = PathsConfig()
    validation: ValidationConfig = ValidationConfig()
    simulator: SimulatorConfig = SimulatorConfig()
    example_gen: ExampleGenConfig = ExampleGenConfig()
    transform: TransformConfig = TransformConfig()
    trainer: TrainerConfig = TrainerConfig()
    tuning: TuningConfig = TuningConfig()
    policy: PolicyConfig = PolicyConfig()
    evaluator: EvaluatorConfig = EvaluatorConfig()
    model_store: ModelStoreConfig = ModelStoreConfig()
    release: ReleaseConfig = ReleaseConfig()
    tracking: TrackingConfig = TrackingConfig()
    pipeline: PipelineConfig = PipelineConfig()
    serving: ServingConfig = ServingConfig()
    monitoring: MonitoringConfig = MonitoringConfig()


#: The settings that hold a local path, or a URI that may name one: ``(section, ..., key)``.
PATH_SETTINGS: tuple[tuple[str, ...], ...] = (
    ("paths", "data_dir"),
    ("paths", "cache_dir"),
    ("model_store", "path"),
    ("tracking", "tracking_uri"),
    ("tracking", "artifact_location"),
    ("pipeline", "pipeline_root"),
    ("transform", "temp_dir"),
    ("serving", "feedback_dir"),
    ("monitoring", "watch", "state_dir"),
)
#: Settings that are URIs first: a bare word is a scheme (MLflow's ``databricks``), not a relative path.
_URI_SETTINGS = {("tracking", "tracking_uri"), ("tracking", "artifact_location")}
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def anchor_path(value: str, base: Path, *, uri: bool = False) -> str:
    """``value`` made absolute against ``base`` when it is a relative local path, else unchanged.

    Relative: a plain path (``data``, ``./runs``, ``../shared/models``), ``sqlite:///<relative>`` and
    ``file:<relative>``. Unchanged: '' (a default), absolute paths and ``~`` (expanded), URLs (``gs://``,
    ``http://``, ``sqlite:////abs``) and, when ``uri`` (a tracking URI), a bare word without a path separator.
    """
    text = str(value)
    if not text.strip():
        return text
    if text.startswith("sqlite:///") and not text.startswith("sqlite:////"):
        rest = text[len("sqlite:///"):]
        return text if rest in ("", ":memory:") else "sqlite:///" + _absolute(rest, base)
    if text.startswith("file:") and not text.startswith("file:/"):
        return "file:" + _absolute(text[len("file:"):], base)
    if "://" in text or (_SCHEME.match(text) and not re.match(r"^[A-Za-z]:[\\/]", text)):
        return text
    if uri and not any(c in text for c in "/\\.~"):
        return text
    return _absolute(text, base)


def _absolute(path: str, base: Path) -> str:
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else Path(os.path.normpath(base / p)))


def anchor_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """A copy of the raw config ``data`` with each :data:`PATH_SETTINGS` value anchored at ``base``."""
    out = copy.deepcopy(data)
    for keys in PATH_SETTINGS:
        node: Any = out
        for key in keys[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(keys[-1]), str | Path):
            node[keys[-1]] = anchor_path(str(node[keys[-1]]), base, uri=keys in _URI_SETTINGS)
    return out


def default_config_text() -> str:
    """The YAML of the default configuration shipped with the package."""
    return resources.files("recflow").joinpath("defaults.yaml").read_text(encoding="utf-8")


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _parse_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{source}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def parse_override(override: str) -> dict[str, Any]:
    """Turn ``'simulator.users=500'`` into ``{'simulator': {'users': 500}}`` (the value is parsed as YAML)."""
    if "=" not in override:
        raise ConfigError(f"override {override!r}: expected KEY=VALUE, e.g. simulator.users=500")
    key, raw = override.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {override!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except (yaml.YAMLError, ValueError):  # e.g. an impossible date such as 2026-13-01: keep the raw string
        value = raw
    nested: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        nested = {part: nested}
    return nested


def _format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see `recflow config show` for valid keys)"
        got = err.get("input")
        suffix = f" (got {got!r})" if err["type"] != "extra_forbidden" and not isinstance(got, dict) else ""
        lines.append(f"  {loc}: {msg}{suffix}")
    return "\n".join(lines)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RecflowConfig:
    """Load the configuration: defaults, then the YAML file at ``path`` (if any), then ``overrides``.

    With a file, relative path settings of the defaults and the file are anchored at the file's directory and
    those of ``overrides`` at the working directory (see the module docstring)."""
    data = _parse_yaml(default_config_text(), "recflow/defaults.yaml")
    source = "defaults"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {p} cannot be read: {exc}") from None
        data = anchor_paths(_deep_merge(data, _parse_yaml(text, str(p))), p.expanduser().resolve().parent)
        source = str(p)
    for ov in overrides:
        update = parse_override(ov)
        data = _deep_merge(data, anchor_paths(update, Path.cwd()) if path is not None else update)
    if overrides:
        source += " with overrides " + ", ".join(overrides)
    try:
        return RecflowConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None


def dump_config(config: RecflowConfig) -> str:
    """The configuration as YAML (what was actually used; logged with every run)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
