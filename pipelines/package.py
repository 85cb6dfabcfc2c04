"""Compiling the training DAG to a KFP IR YAML package (what Kubeflow Pipelines runs and schedules)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from kfp import compiler

from pipelines.definition import build_pipeline
from recflow.config import RecflowConfig
from recflow.errors import ConfigError
from recflow.pipeline_config import PipelineConfig
from recflow.tuning import TuningConfig


def compile_pipeline(config: RecflowConfig | PipelineConfig, out: Path, tuning: TuningConfig | None = None) -> Path:
    """Compile the pipeline for ``config`` to the IR YAML file ``out`` (written atomically) and return it.

    ``config`` is the whole config (its sections become the parameters' defaults) or only its ``pipeline``
    section. The optional tuner step is included when tuning is enabled (a compile-time switch)."""
    out = Path(out)
    if out.suffix not in (".yaml", ".yml"):
        raise ConfigError(f"{out}: the compiled pipeline must be a .yaml or .yml file")
    out.parent.mkdir(parents=True, exist_ok=True)
    # The KFP compiler picks the format from the file name, so the temporary file keeps the suffix.
    fd, tmp = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=out.suffix, dir=out.parent)
    os.close(fd)
    try:
        compiler.Compiler().compile(pipeline_func=build_pipeline(config, tuning=tuning), package_path=tmp)
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return out


@contextlib.contextmanager
def compiled_package(config: RecflowConfig | PipelineConfig, tuning: TuningConfig | None = None) -> Iterator[Path]:
    """A temporary compiled package of the pipeline for ``config`` (deleted on exit)."""
    name = config.pipeline.name if isinstance(config, RecflowConfig) else config.name
    with tempfile.TemporaryDirectory(prefix="recflow-pipeline-") as tmp:
        yield compile_pipeline(config, Path(tmp) / f"{name}.yaml", tuning)
