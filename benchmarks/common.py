"""What the benchmarks share: a fresh, migrated PostgreSQL database per run."""

from __future__ import annotations

import os
import uuid

import sqlalchemy as sa

from kat_scheduler.storage import migrate
from kat_scheduler.storage.db import normalise_url

POSTGRES = os.environ.get("BENCH_POSTGRES_URI", "postgresql://127.0.0.1:5432/test")


def fresh_database(prefix: str = "kat_bench") -> tuple[str, sa.Engine]:
    """A new database named ``<prefix>_<random>``, migrated; and the admin engine to drop it with."""
    admin = sa.create_engine(normalise_url(POSTGRES), isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    uri = normalise_url(POSTGRES).set(database=name).render_as_string(hide_password=False)
    migrate.upgrade(uri)
    return uri, admin


def drop_database(admin: sa.Engine, uri: str) -> None:
    name = sa.engine.make_url(uri).database
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
