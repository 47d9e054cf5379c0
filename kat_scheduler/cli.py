"""``kat-scheduler``: the operator's command line."""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from kat_scheduler.settings import (
    Settings,
    SettingsError,
    get_settings,
    redacted,
    settings_env_dist,
    settings_markdown,
)
from kat_scheduler.version import __version__

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from kat_scheduler.runtime.resources import Runtime


def _settings_or_exit() -> Settings:
    try:
        return get_settings()
    except SettingsError as exc:
        click.echo(f"kat-scheduler: {exc}", err=True)
        sys.exit(2)


class LazyGroup(click.Group):
    """A group whose larger subcommands are imported only when they are called.

    ``kat-scheduler heartbeat`` (a container health check, every few seconds) and the short
    commands need none of the run supervisor, explain, the simulation or the mula import; importing
    them all made every start pay for them. Click's documented way: ``list_commands`` and
    ``get_command`` name and load the lazy ones (``module:attribute``).
    """

    def __init__(self, *args: Any, lazy: dict[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.lazy:
            return super().get_command(ctx, cmd_name)
        module_name, attribute = self.lazy[cmd_name].split(":")
        command = getattr(importlib.import_module(module_name), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{self.lazy[cmd_name]} is not a click command")
        return command


LAZY_COMMANDS = {
    "explain": "kat_scheduler.explain.command:explain_cmd",
    "import-mula": "kat_scheduler.mula_import:mula_import_cmd",
    "run": "kat_scheduler.run.command:run_cmd",
    "sim": "kat_scheduler.sim.cli:sim",
    "status": "kat_scheduler.status:status_cmd",
}


@click.group(cls=LazyGroup, lazy=LAZY_COMMANDS)
@click.version_option(__version__, prog_name="kat-scheduler")
def main() -> None:
    """OpenKAT's scan scheduler on Celery."""
    level = os.environ.get("SCHEDULER_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


@main.group()
def db() -> None:
    """Database migrations."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Revision to upgrade to.")
def db_upgrade(revision: str) -> None:
    """Bring the database to the newest schema (safe to run on every deploy)."""
    from sqlalchemy.exc import SQLAlchemyError

    from kat_scheduler.settings import masked_url
    from kat_scheduler.storage import migrate

    settings = _settings_or_exit()
    try:
        migrate.upgrade(settings.db_uri, revision)
    except migrate.DatabaseNotReady as exc:
        click.echo(f"kat-scheduler: {exc}", err=True)
        sys.exit(2)
    except SQLAlchemyError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        click.echo(f"kat-scheduler: cannot migrate the database {masked_url(settings.db_uri)}: {reason}", err=True)
        sys.exit(1)
    click.echo(f"database at revision {migrate.current_revision(settings.db_uri)}")


@db.command("downgrade")
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    """Step the schema back to REVISION (``base`` drops everything)."""
    from kat_scheduler.storage import migrate

    settings = _settings_or_exit()
    migrate.downgrade(settings.db_uri, revision)
    click.echo(f"database at revision {migrate.current_revision(settings.db_uri)}")


@db.command("current")
def db_current() -> None:
    """Print the schema revision of the database and whether it is the newest."""
    from kat_scheduler.storage import migrate

    settings = _settings_or_exit()
    current, head = migrate.current_revision(settings.db_uri), migrate.head_revision()
    click.echo(f"current: {current or 'none'}  head: {head}  {'up to date' if current == head else 'UPGRADE NEEDED'}")
    if current != head:
        sys.exit(1)


@main.command("settings")
@click.option("--markdown", is_flag=True, help="Print the configuration reference (docs/configuration.md).")
@click.option("--env-dist", "env_dist", is_flag=True, help="Print a .env-dist listing every variable.")
def settings_cmd(markdown: bool, env_dist: bool) -> None:
    """Validate the settings from the environment and print them (secrets masked)."""
    if markdown:
        click.echo(settings_markdown(), nl=False)
        return
    if env_dist:
        click.echo(settings_env_dist(), nl=False)
        return
    click.echo(json.dumps(redacted(_settings_or_exit()), indent=2))


def _schema_or_exit(settings: Settings) -> None:
    """Exit with one line (2: not migrated, 1: not reachable) unless the database has the newest schema."""
    from kat_scheduler.storage import migrate

    try:
        migrate.require_schema(settings.db_uri)
    except migrate.DatabaseNotReady as exc:
        click.echo(f"kat-scheduler: {exc}", err=True)
        sys.exit(2 if isinstance(exc, migrate.SchemaNotReady) else 1)


def _planner_runtime() -> Runtime:
    from kat_scheduler.runtime.resources import get_runtime

    _schema_or_exit(_settings_or_exit())
    return get_runtime()


@main.command("plan")
@click.option("--dry-run", is_flag=True, help="Only print what a tick would queue now; change nothing.")
@click.option("--org", "orgs", multiple=True, help="Organisation to plan (repeatable; default: all).")
@click.option("--format", "fmt", type=click.Choice(["table", "jsonl"]), default="table", show_default=True)
@click.option("--limit", type=int, default=None, help="Print at most this many task lines (the summary counts all).")
def plan_cmd(dry_run: bool, orgs: tuple[str, ...], fmt: str, limit: int | None) -> None:
    """Run the boefje planner once, exactly as a beat tick does (or explain it with --dry-run)."""
    from datetime import UTC, datetime

    from kat_scheduler.clients import ServiceError
    from kat_scheduler.planning.dry_run import render_plan
    from kat_scheduler.producers import TickProducer
    from kat_scheduler.producers.middleware import Timed, run_producer
    from kat_scheduler.storage.waiting import WaitingStore

    runtime = _planner_runtime()
    try:
        tick = TickProducer(runtime.producers(), list(orgs) or None)
        report = run_producer(tick, datetime.now(UTC), dry_run, middleware=[Timed()])
        waiting = WaitingStore(runtime.engine).by_group() if fmt == "table" else []
    except ServiceError as exc:
        click.echo(f"kat-scheduler: not planned: {exc}", err=True)
        sys.exit(1)
    finally:
        runtime.close()
    for line in render_plan(report, fmt=fmt, limit=limit, waiting=waiting):
        click.echo(line)
    if report.errors:
        sys.exit(1)


@main.group()
def push() -> None:
    """Queue work by hand, at the most urgent band."""


def _storable_ooi(value: str | None) -> str | None:
    """``--ooi`` as the database can store it: UTF-8 text without NUL, at most the column's length."""
    from sqlalchemy import String

    from kat_scheduler.storage.tables import TaskRow, table_of

    if value is None:
        return None
    column = table_of(TaskRow).c.input_ooi.type
    limit = column.length if isinstance(column, String) and column.length else None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise click.BadParameter("is not valid UTF-8 text") from None
    if "\x00" in value:
        raise click.BadParameter("contains a NUL character")
    if limit is not None and len(value) > limit:
        raise click.BadParameter(f"is {len(value)} characters long; an object key has at most {limit}")
    return value


@push.command("boefje")
@click.option("--org", required=True, help="Organisation id.")
@click.option("--boefje", "boefje_id", required=True, help="Boefje id.")
@click.option(
    "--ooi",
    default=None,
    callback=lambda ctx, param, value: _storable_ooi(value),
    help="Input object's primary key (omit for boefjes without input).",
)
def push_boefje(org: str, boefje_id: str, ooi: str | None) -> None:
    """Queue BOEFJE on OOI now: band 0, bypasses the grace period, never clearance. Prints the task id."""
    from datetime import UTC, datetime

    from kat_scheduler.clients import OrganisationNotFound, ServiceError
    from kat_scheduler.producers import ManualPush, PushRefused
    from kat_scheduler.producers.middleware import Timed, run_producer
    from kat_scheduler.settings import masked_url

    runtime = _planner_runtime()
    katalogus = runtime.clients.katalogus
    try:
        # Katalogus answers an unknown organisation's plugin with the same 404 as an unknown
        # plugin; its listing of the organisation's plugins tells the two apart.
        katalogus.plugins(org, ids=[boefje_id])
        manual = ManualPush(runtime.producers(), org, boefje_id, ooi)
        result = run_producer(manual, datetime.now(UTC), middleware=[Timed()])
    except OrganisationNotFound:
        where = masked_url(katalogus.base_url)
        click.echo(f"kat-scheduler: not queued: organisation {org!r} is not known to Katalogus at {where}", err=True)
        sys.exit(1)
    except (PushRefused, ServiceError) as exc:
        click.echo(f"kat-scheduler: not queued: {exc}", err=True)
        sys.exit(1)
    finally:
        runtime.close()
    if result.already_live:
        click.echo(f"kat-scheduler: already queued or running (hash {result.hash})", err=True)
        sys.exit(3)
    click.echo(str(result.task_id))


@main.command("listen")
def listen() -> None:
    """Consume KAT's events (scan_profile_mutations, raw_file_received) from QUEUE_URI and queue work."""
    from kat_scheduler.clients.plugin_cache import PluginCache
    from kat_scheduler.events.bookkeeping import Bookkeeper
    from kat_scheduler.events.consumer import run_listener
    from kat_scheduler.events.handlers import make_handlers
    from kat_scheduler.run.preflight import Unreachable, require_brokers
    from kat_scheduler.runtime.collector import tune_collector

    runtime = _planner_runtime()
    settings = runtime.settings
    # At start an unreachable broker or event bus ends the command (a process manager restarts
    # it); once connected, the listener rides out outages by itself, logging each reconnect.
    try:
        require_brokers(settings)
    except Unreachable as exc:
        click.echo(f"kat-scheduler: {exc}", err=True)
        sys.exit(1)
    plugins = PluginCache(runtime.clients.katalogus, ttl=settings.katalogus_cache_ttl)
    bookkeeper = Bookkeeper()
    handlers = make_handlers(
        plugins,
        runtime.tasks,
        runtime.schedules,
        runtime.publisher,
        settings,
        bookkeeper=bookkeeper,
        octopoes=runtime.clients.octopoes,
    )
    tune_collector()  # start-up is done: what it made is frozen
    try:
        run_listener(settings, handlers)
        bookkeeper.close()  # the last batches' schedules are written
        _retire_listener(runtime.tasks.engine)
    finally:
        bookkeeper.close()
        runtime.close()


def _retire_listener(engine: Engine) -> None:
    """A clean stop: this listener's ``object_events`` rows no longer contest the next listener's batches."""
    from sqlalchemy.exc import SQLAlchemyError

    from kat_scheduler.events.handlers import listener_name
    from kat_scheduler.storage.object_events import REORDER_WINDOW, ObjectEventStore

    logger = logging.getLogger("kat_scheduler.events")
    try:
        retired = ObjectEventStore(engine, listener_name()).retire()
    except SQLAlchemyError as exc:
        logger.warning("could not retire this listener (%s): its objects are looked up for %s", exc, REORDER_WINDOW)
        return
    logger.info("retired this listener's %d objects", retired)


@main.command("api")
@click.option("--host", default=None, help="Address to listen on. Default: SCHEDULER_API_HOST.")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="Port. Default: SCHEDULER_API_PORT.")
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=None,
    help="Processes serving the API (uvicorn's workers, one port). Default: SCHEDULER_API_WORKERS.",
)
def api(host: str | None, port: int | None, workers: int | None) -> None:
    """Serve the HTTP API OpenKAT's components speak (mula-compatible; the OpenAPI page is /docs)."""
    from kat_scheduler.api.serve import serve

    settings = _settings_or_exit()
    _schema_or_exit(settings)
    serve(settings, host=host, port=port, workers=workers)


@main.command("heartbeat")
@click.option("--max-age", type=click.FloatRange(min=1), default=60.0, show_default=True, help="Seconds.")
@click.option("--file", "path", default=None, help="The heartbeat file. Default: SCHEDULER_HEARTBEAT_FILE.")
def heartbeat(max_age: float, path: str | None) -> None:
    """Exit 0 when the listener's or beat's heartbeat file was touched within MAX_AGE seconds.

    For container health checks: set SCHEDULER_HEARTBEAT_FILE for the process, and run this in
    the same container.
    """
    from kat_scheduler.runtime.heartbeat import age

    path = path or _settings_or_exit().heartbeat_file
    if not path:
        click.echo("kat-scheduler: set SCHEDULER_HEARTBEAT_FILE (or --file) to check a heartbeat", err=True)
        sys.exit(2)
    seconds = age(path)
    if seconds is None:
        click.echo(f"unhealthy: {path} does not exist (not started, or never got going)")
        sys.exit(1)
    if seconds > max_age:
        click.echo(f"unhealthy: {path} last touched {seconds:.0f}s ago (more than {max_age:.0f}s)")
        sys.exit(1)
    click.echo(f"healthy: {path} touched {seconds:.1f}s ago")


@main.command("flower", context_settings={"ignore_unknown_options": True})
@click.option("--unauthenticated", is_flag=True, help="Run without basic auth (only behind an authenticating proxy).")
@click.argument("flower_args", nargs=-1, type=click.UNPROCESSED)
def flower(unauthenticated: bool, flower_args: tuple[str, ...]) -> None:
    """Flower on our Celery app, with basic auth from FLOWER_BASIC_AUTH (required by default).

    Listens on FLOWER_ADDRESS:FLOWER_PORT; other arguments go to Flower unchanged. Prometheus
    metrics are at /metrics.
    """
    settings = _settings_or_exit()
    env = dict(os.environ)
    if settings.flower_basic_auth is None and not unauthenticated:
        click.echo(
            "kat-scheduler: set FLOWER_BASIC_AUTH=user:password (Flower shows every task); "
            "--unauthenticated runs without it",
            err=True,
        )
        sys.exit(2)
    if settings.flower_basic_auth is not None:
        env["FLOWER_BASIC_AUTH"] = settings.flower_basic_auth.get_secret_value()
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "kat_scheduler",
        "flower",
        f"--address={settings.flower_address}",
        f"--port={settings.flower_port}",
        *flower_args,
    ]
    os.execve(sys.executable, argv, env)


if __name__ == "__main__":  # pragma: no cover
    main()


__all__ = ["Path", "main"]
