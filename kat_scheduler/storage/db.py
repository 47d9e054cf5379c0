"""Engines and sessions.

Create engines after a worker process forks (Celery's ``worker_process_init``), never before:
a pooled connection must not be shared between processes.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

#: Seconds to wait for a PostgreSQL connection (a ``connect_timeout`` in the URL wins): a host
#: that drops packets must give an error, not hang a worker, the listener or ``status``.
CONNECT_TIMEOUT = 10

#: JSON columns are written as JSON allows: ``NaN`` and ``Infinity`` are refused when the row is
#: written (PostgreSQL would refuse them anyway; SQLite would store them, and its JSON functions
#: would then fail every filtered read that meets the row).
_json = partial(json.dumps, allow_nan=False)


def is_sqlite(db_uri: str) -> bool:
    return make_url(db_uri).get_backend_name() == "sqlite"


def missing_sqlite_file(db_uri: str) -> str | None:
    """The path of ``db_uri``'s SQLite file when it does not exist (connecting would create it), else ``None``."""
    url = make_url(db_uri)
    path = url.database
    if url.get_backend_name() != "sqlite" or path is None or path in ("", ":memory:"):
        return None
    return None if Path(path).exists() else path


def normalise_url(db_uri: str) -> URL:
    """``postgresql://`` means psycopg2 here (SQLAlchemy 2.1 would otherwise pick psycopg 3)."""
    url = make_url(db_uri)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg2")
    return url


def make_engine(db_uri: str, *, pool_size: int = 5, echo: bool = False) -> Engine:
    """An engine for ``db_uri`` with the settings each backend needs to behave under concurrency."""
    url = normalise_url(db_uri)
    if url.get_backend_name() == "sqlite":
        kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": 30}}
        if url.database in (None, "", ":memory:"):
            kwargs["poolclass"] = StaticPool
        engine = create_engine(url, echo=echo, json_serializer=_json, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    connect_args: dict[str, Any] = {} if "connect_timeout" in url.query else {"connect_timeout": CONNECT_TIMEOUT}
    engine = create_engine(
        url,
        echo=echo,
        json_serializer=_json,
        connect_args=connect_args,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_recycle=1800,
    )
    event.listen(engine, "connect", _postgresql_utc)
    return engine


def _postgresql_utc(dbapi_connection: Any, _record: Any) -> None:
    """Times the database reads without a zone (a JSON path's datetime without one) are UTC,
    whatever the server's, the login role's or libpq's (``PGTZ``) default."""
    cursor = dbapi_connection.cursor()
    cursor.execute("SET TIME ZONE 'UTC'")
    cursor.close()
    dbapi_connection.commit()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
