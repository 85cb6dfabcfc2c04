"""``recflow runs ...`` and ``recflow models ...``: tracked runs and the model store's champion.

Thin wrappers over :mod:`recflow.tracking` and :mod:`recflow.model_store`. The tracking URI and the store root
come from the options, else the config's ``tracking`` / ``model_store`` sections, else the defaults under
``paths.data_dir``.
"""

from __future__ import annotations

import click

from recflow.cli import CliState, pass_state
from recflow.model_store import ModelStoreConfig
from recflow.tracking import TrackingConfig


def _tracking_config(state: CliState) -> TrackingConfig:
    return state.config.tracking


def _store_config(state: CliState) -> ModelStoreConfig:
    return state.config.model_store


def _tracking_uri(state: CliState, override: str | None, *, read_only: bool = False) -> str:
    """The tracking URI (the sqlite default under the config file's data directory), checked.

    ``read_only``: a command that only reads runs fails on a missing local store instead of creating one.
    """
    from recflow.tracking import check_tracking_server, require_existing_store, resolve_tracking_uri

    config = _tracking_config(state)
    uri = resolve_tracking_uri(config, state.config.paths.data_dir, override, config_path=state.config_path)
    if read_only:
        require_existing_store(uri)
    check_tracking_server(uri, config.check_timeout_s)
    return uri


def _store(state: CliState, override: str | None):  # noqa: ANN202  (ModelStore; imported lazily)
    from recflow.model_store import ModelStore, resolve_store_root

    config = _store_config(state)
    root = resolve_store_root(config, state.config.paths.data_dir, override)
    return ModelStore.from_config(root, config)


tracking_uri_option = click.option(
    "--tracking-uri",
    default=None,
    help="MLflow tracking URI (default: tracking.tracking_uri, else the local "
    "sqlite store DATA_DIR/mlflow.db).",
)
store_option = click.option(
    "--store",
    "store_root",
    default=None,
    help="Model store root, a directory or gs:// URL (default: model_store.path, else DATA_DIR/models).",
)


@click.group()
def runs() -> None:
    """List and compare tracked pipeline runs (MLflow)."""


@runs.command("list")
@click.option("--experiment", default=None, help="MLflow experiment (default: tracking.experiment).")
@click.option("--all", "include_steps", is_flag=True, help="Also list the nested runs of pipeline steps.")
@click.option(
    "--limit", type=click.IntRange(min=1), default=20, show_default=True, help="Newest runs to show."
)
@tracking_uri_option
@pass_state
def runs_list(
    state: CliState, experiment: str | None, include_steps: bool, limit: int, tracking_uri: str | None
) -> None:
    """Recent runs, newest first: id, name, status, blessed, pushed version, data, NDCG@10, lift, start.

    Ids are shown in full; every command that takes a run id also accepts a unique prefix. lift: the
    candidate's NDCG@10 over the popularity baseline's, as logged by the Evaluator.
    """
    from recflow.tracking import format_runs_table, list_runs

    uri = _tracking_uri(state, tracking_uri, read_only=True)
    name = experiment or _tracking_config(state).experiment
    rows = list_runs(uri, name, include_steps=include_steps, limit=limit)
    if not rows:
        click.echo(f"no runs in experiment {name!r} at {uri}")
        return
    click.echo(format_runs_table(rows, include_steps=include_steps))


@runs.command("compare")
@click.argument("run_a")
@click.argument("run_b")
@click.option("--only-diff", is_flag=True, help="Show only the params and metrics that differ.")
@click.option(
    "--experiment",
    default=None,
    help="Experiment in which to look up run names (default: tracking.experiment).",
)
@tracking_uri_option
@pass_state
def runs_compare(
    state: CliState, run_a: str, run_b: str, only_diff: bool, experiment: str | None, tracking_uri: str | None
) -> None:
    """Params and metrics of RUN_A and RUN_B side by side; `*` marks the differences.

    A run is a full id, a unique id prefix (the 12 characters `models list` shows) or a run name.
    """
    from recflow.tracking import compare_runs, format_comparison

    uri = _tracking_uri(state, tracking_uri, read_only=True)
    comparison = compare_runs(uri, run_a, run_b, experiment or _tracking_config(state).experiment)
    click.echo(format_comparison(comparison, only_differences=only_diff), nl=False)


@click.group()
def models() -> None:
    """List pushed model versions, roll the champion back, run the canary by hand, collect garbage."""


@models.command("list")
@click.option(
    "--metric",
    "metric_names",
    multiple=True,
    help="Metric to show (repeatable; default: the first three of each bundle).",
)
@store_option
@pass_state
def models_list(state: CliState, metric_names: tuple[str, ...], store_root: str | None) -> None:
    """Versions in the model store, oldest first; the champion is marked."""
    from tabulate import tabulate

    store = _store(state, store_root)
    versions = store.versions()
    if not versions:
        click.echo(f"model store {store.root} is empty (nothing pushed yet)")
        return
    state_ = store.alias()
    champion = state_.version if state_ else None
    previous = state_.previous if state_ else None
    canary_state = store.alias("canary")
    canary = canary_state.version if canary_state else None
    table = []
    for b in versions:
        names = list(metric_names) or sorted(b.metrics)[:3]
        shown = ", ".join(
            f"{n}={b.metrics[n]:.4g}" if isinstance(b.metrics.get(n), (int, float)) else f"{n}=-"
            for n in names
        )
        role = ("champion" if b.version == champion else "canary" if b.version == canary
                else "previous" if b.version == previous else "")
        table.append([b.version, role, b.created, (b.mlflow_run_id or "")[:12], shown])
    click.echo(f"model store {store.root}")
    click.echo(
        tabulate(
            table,
            headers=["version", "alias", "created (UTC)", "mlflow run", "metrics"],
            disable_numparse=True,
        )
    )


@models.command("gc")
@click.option("--dry-run", is_flag=True, help="Only say what would be kept and deleted.")
@store_option
@pass_state
def models_gc(state: CliState, dry_run: bool, store_root: str | None) -> None:
    """Delete old bundles: keeps the champion, the previous champion, the canary, the newest
    model_store.keep_versions and every version a serving process holds."""
    store = _store(state, store_root)
    kept = store.retention()
    versions = [b.version for b in store.versions()]
    for version in versions:
        why = kept.get(version)
        click.echo(f"  {version}  " + (f"keep ({', '.join(why)})" if why else "delete"))
    if dry_run:
        click.echo(f"dry run: {sum(v not in kept for v in versions)} version(s) would be deleted from {store.root}")
        return
    removed = store.collect_garbage()
    click.echo(f"deleted {len(removed)} version(s) from {store.root}" + (f": {', '.join(removed)}" if removed else ""))


@models.group("canary")
def models_canary() -> None:
    """The canary: a pushed champion on trial for a share of traffic (serving decides automatically)."""


@models_canary.command("status")
@store_option
@pass_state
def canary_status_cmd(state: CliState, store_root: str | None) -> None:
    """The running canary (if any), the champion it would replace, and every decision so far."""
    from serving.canary import canary_status

    store = _store(state, store_root)
    status = canary_status(store)
    running = status["canary"]
    click.echo(f"model store {store.root}: champion {status['champion'] or '-'}")
    if running:
        click.echo(f"canary {running['version']} on {state.config.release.canary.share:.0%} of users since "
                   f"{running['since']} (would replace {running['replaces']})")
    else:
        click.echo("no canary running")
    for d in status["decisions"][-10:]:
        click.echo(f"  {d['decided_at']}  {d['decision']:<12} {d['version']}  (champion {d.get('champion')}): "
                   f"{d['reason']}")


def _canary_by_hand(state: CliState, action: str, reason: str, version: str | None, store_root: str | None,
                    no_registry: bool, tracking_uri: str | None) -> None:
    from recflow.errors import RecflowError
    from recflow.model_store import sync_canary_registry
    from serving.canary import decide_by_hand

    store = _store(state, store_root)
    uri = None if no_registry else _tracking_uri(state, tracking_uri)  # fail before changing anything
    done = decide_by_hand(store, action, reason, version=version)
    verb = "promoted to champion" if action == "promote" else "aborted (the champion stays)"
    click.echo(f"canary {done} {verb}; serving follows on its next poll")
    if uri is None:
        return
    name = _tracking_config(state).registered_model_name
    try:
        from serving.pyfunc import write_pyfunc_model

        aliases = sync_canary_registry(uri, store, name, model_writer=write_pyfunc_model)
    except RecflowError as exc:  # the store is the source of truth: the decision stands
        click.secho(f"warning: MLflow registry aliases not moved: {exc}", fg="yellow", err=True)
        return
    click.echo(f"MLflow model {name!r}: champion -> version {aliases['champion']}, canary -> "
               f"{aliases['canary'] or 'none'}")


_reason_option = click.option("--reason", default="no reason given", help="Why (recorded in the decision log).")
_version_option = click.option("--version", "version", default=None,
                               help="Act only if this version is the canary (guards against a race).")
_no_registry_option = click.option("--no-registry", is_flag=True, help="Do not move the MLflow registry aliases.")


@models_canary.command("promote")
@_reason_option
@_version_option
@_no_registry_option
@store_option
@tracking_uri_option
@pass_state
def canary_promote_cmd(state: CliState, reason: str, version: str | None, no_registry: bool,
                       store_root: str | None, tracking_uri: str | None) -> None:
    """Make the canary the champion now (without waiting for the guardrail)."""
    _canary_by_hand(state, "promote", reason, version, store_root, no_registry, tracking_uri)


@models_canary.command("abort")
@_reason_option
@_version_option
@_no_registry_option
@store_option
@tracking_uri_option
@pass_state
def canary_abort_cmd(state: CliState, reason: str, version: str | None, no_registry: bool,
                     store_root: str | None, tracking_uri: str | None) -> None:
    """Stop the canary now; its users go back to the champion."""
    _canary_by_hand(state, "abort", reason, version, store_root, no_registry, tracking_uri)


@models.command("rollback")
@click.option(
    "--to",
    "to_version",
    default=None,
    help="Version to make champion (default: the champion before the current one).",
)
@click.option("--no-registry", is_flag=True, help="Do not move the MLflow Model Registry alias.")
@store_option
@tracking_uri_option
@pass_state
def models_rollback(
    state: CliState,
    to_version: str | None,
    no_registry: bool,
    store_root: str | None,
    tracking_uri: str | None,
) -> None:
    """Point the champion alias back (serving hot-swaps), then move the MLflow registry alias to match."""
    from recflow.errors import RecflowError
    from recflow.model_store import sync_registry_alias

    store = _store(state, store_root)
    before = store.alias()
    uri = None if no_registry else _tracking_uri(state, tracking_uri)  # fail before changing anything
    bundle = store.rollback(to_version)
    click.echo(f"champion: {before.version if before else '-'} -> {bundle.version} ({store.root})")
    if uri is None:
        return
    name = _tracking_config(state).registered_model_name
    try:
        from serving.pyfunc import write_pyfunc_model

        registry_version = sync_registry_alias(uri, store, name, model_writer=write_pyfunc_model)
    except RecflowError as exc:  # the store is the source of truth: the rollback stands
        click.secho(f"warning: MLflow registry alias not moved: {exc}", fg="yellow", err=True)
        return
    click.echo(f"MLflow model {name!r}: alias champion -> version {registry_version}")
