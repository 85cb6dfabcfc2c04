"""Structured (JSON) logs of the service and a quiet start-up.

Every line the service logs is one JSON object (``{"ts", "level", "logger", "event", ...fields}``):

* one per request on the ``recflow.access`` logger (``event: "request"``: request id, user, variant, model
  version, endpoint, status, latency), at ``serving.access_log_level``;
* one per lifecycle event on ``recflow.serving``: ``startup``, ``model_loaded``, ``swap``, ``swap_rejected``,
  ``rollback``, ``explainer_warm``, ``shutdown``, ``no_api_key``.

:func:`log_event` is the one way to write them; :func:`configure_logging` installs the JSON formatter on the
root logger (``recflow serve`` calls it; the Python API leaves the application's logging alone), with a
:class:`BufferedLineHandler`: lines are formatted where they are logged and written in batches by a background
thread, so a request's access line costs no system call on the serving threads.

:func:`quiet_imports` silences what the libraries print on import on a CPU machine -- TensorFlow's CUDA probe
lines (written by absl before logging is initialised, so ``TF_CPP_MIN_LOG_LEVEL`` does not stop them), the
``SyntaxWarning`` of tf_agents' sources and Gym's "unmaintained" banner -- and nothing else: any other line
written to stderr while TensorFlow imports is passed through.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import tempfile
import threading
import time
import warnings
from typing import Any

ACCESS_LOGGER = "recflow.access"
EVENT_LOGGER = "recflow.serving"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "OFF")

#: stderr lines of a TensorFlow import on a machine without a GPU that say nothing to a user.
NOISE = re.compile(
    r"cudart_stub\.cc|cuda_platform\.cc|cuda_executor\.cc|cuda_diagnostics|failed call to cuInit|"
    r"All log messages before absl::InitializeLog|Unable to register cu(DNN|FFT|BLAS) factory|"
    r"computation placer already registered|TF-TRT Warning|oneDNN custom operations|"
    r"This TensorFlow binary is optimized"
)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, event (the message) and the record's ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "event": record.getMessage(),
        }
        doc.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, separators=(",", ":"))


def level_number(level: str) -> int:
    """The :mod:`logging` level of a config value (``OFF``: above CRITICAL, nothing is logged)."""
    name = level.upper()
    if name == "OFF":
        return logging.CRITICAL + 10
    value = logging.getLevelName(name)
    if not isinstance(value, int):
        raise ValueError(f"log level {level!r}: expected one of {', '.join(LEVELS)}")
    return value


class BufferedLineHandler(logging.Handler):
    """Formats each record on the thread that logs it and writes the lines from a background thread, in one
    write per ``interval_s``: a request's access line costs the request microseconds, not a system call.

    A system call on a serving thread (a write and flush per line, as :class:`logging.StreamHandler` does) hands
    the interpreter lock to the other thread, and the request waits to get it back. Lines stay in the order they
    were logged; a line that is not an access line (a swap, a warning) wakes the writer at once; :meth:`flush`
    (at shutdown: :func:`logging.shutdown`, :func:`flush_logs`) writes what is pending. A process killed by
    SIGKILL loses at most the last ``interval_s`` of lines.
    """

    def __init__(self, stream: Any, interval_s: float = 0.1) -> None:
        super().__init__()
        self.stream = stream
        self.interval_s = interval_s
        self._pending: list[str] = []
        self._pending_lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # noqa: BLE001 - logging must never break the caller
            self.handleError(record)
            return
        with self._pending_lock:
            self._pending.append(line)
        if record.name != ACCESS_LOGGER:
            self._wake.set()

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self.interval_s)
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        with self._pending_lock:
            lines, self._pending = self._pending, []
        if not lines:
            return
        with self.lock or contextlib.nullcontext():  # one writer at a time: lines never interleave
            try:
                self.stream.write("\n".join(lines) + "\n")
                self.stream.flush()
            except (OSError, ValueError):  # a closed stream at interpreter exit
                pass

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self.flush()
        super().close()


def flush_logs() -> None:
    """Write the service's pending log lines now (see :class:`BufferedLineHandler`)."""
    for handler in logging.getLogger().handlers:
        if getattr(handler, "_recflow_json", False):
            handler.flush()


def configure_logging(level: str = "INFO", stream: Any = None) -> None:
    """JSON lines on ``stream`` (default stderr) for every logger at ``level`` and above, written by a
    :class:`BufferedLineHandler` (idempotent)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_recflow_json", False):
            root.removeHandler(handler)
            handler.close()
    handler = BufferedLineHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler._recflow_json = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level_number(level))
    for noisy in ("uvicorn.access", "absl", "tensorflow", "h5py", "shap"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, level_number(level)))


def log_event(event: str, level: int = logging.INFO, logger: str = EVENT_LOGGER, **fields: Any) -> None:
    """Log one structured event (``fields`` become top-level keys of the JSON line)."""
    log = logging.getLogger(logger)
    if log.isEnabledFor(level):
        log.log(level, event, extra={"fields": fields})


def silence_library_warnings() -> None:
    """Drop tf_agents' SyntaxWarnings and Gym's banner before either is imported (idempotent)."""
    warnings.filterwarnings("ignore", category=SyntaxWarning, module=r".*tf_agents")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r".*(tf_agents|gym|tensorflow_probability)")
    if "gym" not in sys.modules:
        with contextlib.suppress(ImportError):
            import gym_notices.notices as notices  # gym prints notices[its version] on import

            notices.notices.clear()


@contextlib.contextmanager
def _stderr_filtered() -> Any:
    """Capture file descriptor 2 (C++ code writes there directly), then re-emit every line but the noise."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            for line in capture.read().decode(errors="replace").splitlines():
                if line.strip() and not NOISE.search(line):
                    print(line, file=sys.stderr)


def quiet_imports() -> None:
    """Import TensorFlow and TF-Agents and probe the devices without their start-up noise (idempotent)."""
    import recflow  # noqa: F401  (legacy Keras before TensorFlow)

    silence_library_warnings()
    with _stderr_filtered():
        import tensorflow as tf

        tf.config.list_physical_devices()
        with contextlib.suppress(ImportError):
            import tf_agents  # noqa: F401
