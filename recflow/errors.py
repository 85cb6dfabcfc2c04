"""User-facing errors.

A :class:`RecflowError` is a mistake the user can fix (a bad file, a bad config value, an unreachable server).
The CLI prints its message and exits with its ``exit_code``; it never prints a traceback for one. Anything else
that escapes is a bug in recflow and keeps its traceback.
"""

from __future__ import annotations


class RecflowError(Exception):
    """Base class for errors caused by user input or the environment, with an actionable message."""

    exit_code: int = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class ConfigError(RecflowError):
    """The configuration file or a CLI override is invalid."""


class DataError(RecflowError):
    """An input data file is unreadable or does not follow the schema."""


class ValidationFailed(DataError):
    """A data file was readable but too many of its rows are invalid (exit code 1, like a failed check)."""

    exit_code = 1


class ServiceUnavailable(RecflowError):
    """A server recflow depends on (MLflow, a Kubeflow Pipelines host, a package registry) cannot be reached."""

    exit_code = 3
