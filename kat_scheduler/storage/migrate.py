"""Database migrations with alembic, driven from code (no alembic.ini to keep in sync).

``kat-scheduler db upgrade`` brings any database to the newest revision; the scripts live in
``kat_scheduler/storage/migrations/versions``. To write a new one after changing tables.py:
``kat-scheduler db revision -m "what changed"`` against an up-to-date database, then review it.

Every process that needs the schema calls :func:`require_schema` at start: it says in one line
what is wrong with the database and what to run, and creates nothing.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from kat_scheduler.settings import masked_url
from kat_scheduler.storage.db import make_engine, missing_sqlite_file

MIGRATIONS = Path(__file__).parent / "migrations"
#: What to tell an operator whose database is behind.
UPGRADE_HINT = "run `kat-scheduler db upgrade`"


class DatabaseNotReady(RuntimeError):
    """This process cannot use the database; the message is one line naming the URL (password
    masked) and what to do."""


class DatabaseUnreachable(DatabaseNotReady):
    """Connecting to the database or reading its revision failed."""


class SchemaNotReady(DatabaseNotReady):
    """The database does not exist, has no schema, or not the one this version needs."""

    def __init__(self, message: str, *, current: str | None, expected: str | None) -> None:
        super().__init__(message)
        self.current = current
        self.expected = expected


def alembic_config(db_uri: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # Passed as an attribute, not an option: configparser would choke on '%' in URLs.
    config.attributes["db_uri"] = db_uri
    return config


class BrokenInstall(DatabaseNotReady):
    """This installation of kat_scheduler has no migration scripts."""


def _require_scripts() -> str:
    head = _scripts().get_current_head()
    if head is None:
        raise BrokenInstall(
            f"this kat-scheduler has no migration scripts in {MIGRATIONS / 'versions'}: "
            "its installation is incomplete; reinstall the package"
        )
    return head


def upgrade(db_uri: str, revision: str = "head") -> None:
    _require_scripts()
    command.upgrade(alembic_config(db_uri), revision)


def downgrade(db_uri: str, revision: str) -> None:
    command.downgrade(alembic_config(db_uri), revision)


def revision(db_uri: str, message: str) -> None:
    command.revision(alembic_config(db_uri), message=message, autogenerate=True)


def current_revision(db_uri: str) -> str | None:
    """The database's revision; ``None`` when it has no schema, or is a SQLite file that does not
    exist (which is not created)."""
    if missing_sqlite_file(db_uri) is not None:
        return None
    engine = make_engine(db_uri, pool_size=1)
    try:
        with engine.connect() as conn:
            # alembic's own table, read directly: its MigrationContext logs at INFO on every use
            if not inspect(conn).has_table("alembic_version"):
                return None
            found = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
            return None if found is None else str(found)
    finally:
        engine.dispose()


def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config("sqlite://"))


def head_revision() -> str | None:
    return _scripts().get_current_head()


def is_up_to_date(db_uri: str) -> bool:
    return current_revision(db_uri) == head_revision()


def require_schema(db_uri: str) -> str | None:
    """The database's revision when it is the newest one; else :class:`DatabaseNotReady`.

    The error is one line with the URL (password masked), the current and the expected revision
    and what to run. Nothing is created: a SQLite file that does not exist is reported, never
    opened (opening would create it).
    """
    shown = masked_url(db_uri)
    head = _require_scripts()
    missing = missing_sqlite_file(db_uri)
    if missing is not None:
        raise SchemaNotReady(
            f"the database {shown} does not exist (no file {missing}; expected revision {head}): {UPGRADE_HINT}",
            current=None,
            expected=head,
        )
    try:
        current = current_revision(db_uri)
    except SQLAlchemyError as exc:
        raise DatabaseUnreachable(f"cannot read the database {shown}: {one_line(exc)}") from None
    if current == head:
        return current
    if current is None:
        message = f"the database {shown} has no schema (revision none, expected {head}): {UPGRADE_HINT}"
    elif current not in {script.revision for script in _scripts().walk_revisions()}:
        message = (
            f"the database {shown} is at revision {current}, which this kat-scheduler does not know "
            f"(its newest is {head}): run the kat-scheduler that migrated it, or a newer one"
        )
    else:
        message = f"the database {shown} is at revision {current}, expected {head}: {UPGRADE_HINT}"
    raise SchemaNotReady(message, current=current, expected=head)


def one_line(exc: BaseException) -> str:
    """What went wrong, on one line: a database error without SQLAlchemy's statement and links."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        exc = exc.orig
    text_ = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text_}" if text_ else type(exc).__name__
