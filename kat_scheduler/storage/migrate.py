"""Database migrations with alembic, driven from code (no alembic.ini to keep in sync).

``kat-scheduler db upgrade`` brings any database to the newest revision; the scripts live in
``kat_scheduler/storage/migrations/versions``. To write a new one after changing tables.py:
``kat-scheduler db revision -m "what changed"`` against an up-to-date database, then review it.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from kat_scheduler.storage.db import make_engine

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(db_uri: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # Passed as an attribute, not an option: configparser would choke on '%' in URLs.
    config.attributes["db_uri"] = db_uri
    return config


def upgrade(db_uri: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(db_uri), revision)


def downgrade(db_uri: str, revision: str) -> None:
    command.downgrade(alembic_config(db_uri), revision)


def revision(db_uri: str, message: str) -> None:
    command.revision(alembic_config(db_uri), message=message, autogenerate=True)


def current_revision(db_uri: str) -> str | None:
    engine = make_engine(db_uri)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def is_up_to_date(db_uri: str) -> bool:
    return current_revision(db_uri) == head_revision()
