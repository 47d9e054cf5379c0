"""``kat-scheduler import-mula``."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime, timedelta

import click
from sqlalchemy.exc import SQLAlchemyError

from kat_scheduler.mula_import.importer import import_from_mula
from kat_scheduler.mula_import.summary import MulaSchemaError

logger = logging.getLogger(__name__)


@click.command("import-mula")
@click.option(
    "--mula-db-uri",
    envvar="MULA_DB_URI",
    required=True,
    help="SQLAlchemy URL of mula's PostgreSQL database (mula's SCHEDULER_DB_URI); env MULA_DB_URI. Only read.",
)
@click.option("--dry-run", is_flag=True, help="Count what would be imported; write nothing.")
@click.option(
    "--batch-size",
    type=click.IntRange(1, 100_000),
    default=1000,
    show_default=True,
    help="Rows read from mula, and written here, per page.",
)
@click.option(
    "--since",
    type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]),
    default=None,
    help="Import task history that ended on or after this time (UTC). "
    "Default: SCHEDULER_RETENTION_DAYS ago (the reaper prunes older rows). Schedules are always imported.",
)
def mula_import_cmd(mula_db_uri: str, dry_run: bool, batch_size: int, since: datetime | None) -> None:
    """Import mula's schedules and finished task history (grace periods) into SCHEDULER_DB_URI."""
    from kat_scheduler.settings import SettingsError, load_settings, masked_url
    from kat_scheduler.storage import migrate
    from kat_scheduler.storage.db import make_engine, normalise_url

    try:
        settings = load_settings()  # not the cached process settings: a command reads its environment now
    except SettingsError as exc:
        click.echo(f"kat-scheduler: {exc}", err=True)
        sys.exit(2)
    try:
        migrate.require_schema(settings.db_uri)
    except migrate.DatabaseUnreachable as exc:
        click.echo(f"kat-scheduler: {exc}", err=True)
        sys.exit(1)
    except migrate.DatabaseNotReady as exc:
        click.echo(f"kat-scheduler: {exc}", err=True)
        sys.exit(2)
    try:
        mula = make_engine(mula_db_uri, pool_size=1)
    except (SQLAlchemyError, ValueError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        click.echo(
            f"kat-scheduler: --mula-db-uri {masked_url(mula_db_uri)} is not a database URL we can use: {reason}",
            err=True,
        )
        sys.exit(2)
    if normalise_url(mula_db_uri) == normalise_url(settings.db_uri):
        mula.dispose()
        click.echo("kat-scheduler: --mula-db-uri is SCHEDULER_DB_URI itself; give mula's database", err=True)
        sys.exit(2)
    since_utc = since.replace(tzinfo=UTC) if since is not None else None
    now = datetime.now(UTC)
    if since_utc is None:
        since_utc = now - timedelta(days=settings.retention_days)
    ours = make_engine(settings.db_uri, pool_size=2)
    try:
        summary = import_from_mula(mula, ours, since=since_utc, dry_run=dry_run, batch_size=batch_size, now=now)
    except (MulaSchemaError, SQLAlchemyError) as exc:
        click.echo(f"kat-scheduler: import from mula failed: {exc}", err=True)
        if not dry_run:
            click.echo("kat-scheduler: what was imported stays; running the import again continues safely", err=True)
        sys.exit(1)
    finally:
        mula.dispose()
        ours.dispose()
    for line in summary.lines():
        click.echo(line)
