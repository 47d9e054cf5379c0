"""``kat-scheduler``: the operator's command line."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

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


def _settings_or_exit() -> Settings:
    try:
        return get_settings()
    except SettingsError as exc:
        click.echo(f"kat-scheduler: {exc}", err=True)
        sys.exit(2)


@click.group()
@click.version_option(__version__, prog_name="kat-scheduler")
def main() -> None:
    """OpenKAT's scan scheduler on Celery."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


@main.group()
def db() -> None:
    """Database migrations."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Revision to upgrade to.")
def db_upgrade(revision: str) -> None:
    """Bring the database to the newest schema (safe to run on every deploy)."""
    from kat_scheduler.storage import migrate

    settings = _settings_or_exit()
    migrate.upgrade(settings.db_uri, revision)
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


def _attach_sim() -> None:
    try:
        from kat_scheduler.sim.cli import sim
    except ImportError:  # pragma: no cover - the simulation ships with the package
        return
    main.add_command(sim)


_attach_sim()


if __name__ == "__main__":  # pragma: no cover
    main()


__all__ = ["Path", "main"]
