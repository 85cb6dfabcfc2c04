"""The ``recflow`` command line.

The core library's own commands (``config``, ``data``) live here. The other parts of the platform contribute
their commands through the ``recflow.commands`` entry-point group (see pyproject.toml), loaded only when used,
so the core imports none of them and ``recflow --help`` stays fast.

Every user mistake surfaces as a :class:`~recflow.errors.RecflowError`: its message is printed and the process
exits with its code, without a traceback.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path

import click

import recflow
from recflow.config import RecflowConfig, dump_config, load_config
from recflow.errors import RecflowError

COMMAND_GROUP = "recflow.commands"


@dataclass
class CliState:
    """What the top-level options decided; sub-commands read the config through it."""

    config_path: Path | None = None
    overrides: list[str] = field(default_factory=list)
    _config: RecflowConfig | None = None

    @property
    def config(self) -> RecflowConfig:
        if self._config is None:
            self._config = load_config(self.config_path, self.overrides)
        return self._config

    def with_overrides(self, *extra: str) -> RecflowConfig:
        """The config with extra ``key=value`` overrides from a sub-command's own options."""
        return load_config(self.config_path, [*self.overrides, *extra])


pass_state = click.make_pass_decorator(CliState)


class PluginGroup(click.Group):
    """A click group that also lists and lazily loads the commands registered as entry points."""

    def _plugins(self) -> dict[str, object]:
        return {ep.name: ep for ep in entry_points(group=COMMAND_GROUP)}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._plugins()))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        plugin = self._plugins().get(cmd_name)
        if plugin is not None:
            try:
                return plugin.load()  # type: ignore[attr-defined]
            except ImportError as exc:
                return _unavailable(cmd_name, exc)
        return super().get_command(ctx, cmd_name)


def _unavailable(name: str, exc: ImportError) -> click.Command:
    """A stand-in for a plugin command whose module cannot be imported: listed in --help, fails clearly if run."""

    def fail() -> None:
        raise click.ClickException(
            f"command {name!r} cannot be loaded ({exc}); is recflow fully installed (`make install`)?"
        )

    return click.Command(name, callback=fail, help=f"(unavailable: {exc})", context_settings={
        "ignore_unknown_options": True, "allow_extra_args": True})


@click.group(cls=PluginGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    envvar="RECFLOW_CONFIG",
    help="YAML config file (only the keys you change; defaults: `recflow config show`).",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override one config value, e.g. --set simulator.users=500 (repeatable).",
)
@click.version_option(recflow.__version__, prog_name="recflow")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, overrides: tuple[str, ...]) -> None:
    """recflow: e-commerce events to a served, monitored, self-retraining recommender."""
    ctx.obj = CliState(config_path=config_path, overrides=list(overrides))


@cli.group()
def config() -> None:
    """Inspect the configuration."""


@config.command("show")
@pass_state
def config_show(state: CliState) -> None:
    """Print the effective configuration (defaults, config file and overrides applied) as YAML."""
    click.echo(dump_config(state.config), nl=False)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``recflow`` console script."""
    try:
        rv = cli.main(args=argv, prog_name="recflow", standalone_mode=False)
    except RecflowError as exc:
        click.secho(f"error: {exc}", fg="red", err=True)
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    return rv if isinstance(rv, int) else 0


# The data and train commands are part of the core library; importing registers them on `cli`.
from recflow import cli_data as _cli_data  # noqa: E402,F401
from recflow import cli_train as _cli_train  # noqa: E402,F401

if __name__ == "__main__":  # pragma: no cover - `python -m recflow` is the supported module entry point
    from recflow.cli import main as _main  # the imported module, on which the plugin commands are registered

    sys.exit(_main())
