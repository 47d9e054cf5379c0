"""Shared fixtures: real services, found on loopback.

A service that cannot be reached skips its tests locally and FAILS them when ``CI`` is set, so
CI can never pass by skipping. Addresses can be changed with ``TEST_POSTGRES_URI``,
``TEST_REDIS_URL`` and ``TEST_AMQP_URL``.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from kat_scheduler.storage import migrate
from kat_scheduler.storage.db import make_engine, normalise_url

IN_CI = bool(os.environ.get("CI"))
POSTGRES_URI = os.environ.get("TEST_POSTGRES_URI", "postgresql://127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
TABLES = ("tasks", "unpublished_tasks", "schedules", "beat_leases", "producer_runs")


def service_missing(what: str, error: Exception) -> None:
    message = f"{what} is not reachable ({type(error).__name__}: {error})"
    if IN_CI:
        pytest.fail(f"{message}; CI is set, so this is a failure, not a skip", pytrace=False)
    pytest.skip(message)


# --- PostgreSQL ---------------------------------------------------------------------------


@contextlib.contextmanager
def new_database(prefix: str) -> Iterator[str]:
    """A new, empty PostgreSQL database; dropped afterwards with whatever is still connected.

    Fails (in CI) or skips (locally) when PostgreSQL cannot be reached.
    """
    admin_url = normalise_url(POSTGRES_URI)
    try:
        admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:
        service_missing(f"PostgreSQL at {POSTGRES_URI}", exc)
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def postgres_uri() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test run, dropped at the end."""
    with new_database("kat_scheduler_test") as uri:
        migrate.upgrade(uri)
        yield uri


@pytest.fixture
def private_postgres_uri() -> Iterator[str]:
    """A migrated database of this test's own, for tests whose subprocesses may still write
    while the test ends; dropped, connections and all, afterwards."""
    with new_database("kat_private") as uri:
        migrate.upgrade(uri)
        yield uri


@pytest.fixture(scope="session")
def _pg_engine(postgres_uri: str) -> Iterator[Engine]:
    engine = make_engine(postgres_uri, pool_size=10)
    yield engine
    engine.dispose()


@pytest.fixture
def pg_engine(_pg_engine: Engine) -> Iterator[Engine]:
    """The test database, emptied after each test."""
    yield _pg_engine
    with _pg_engine.begin() as conn:
        conn.execute(sa.text(f"TRUNCATE {', '.join(TABLES)} CASCADE"))


@pytest.fixture
def sqlite_uri(tmp_path) -> str:
    uri = f"sqlite:///{tmp_path / 'kat_scheduler.db'}"
    migrate.upgrade(uri)
    return uri


@pytest.fixture
def sqlite_engine(sqlite_uri: str) -> Iterator[Engine]:
    engine = make_engine(sqlite_uri)
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest) -> Engine:
    """Each test using this runs once on SQLite and once on PostgreSQL."""
    return request.getfixturevalue(f"{request.param}_engine" if request.param == "sqlite" else "pg_engine")  # type: ignore[no-any-return]


# --- Redis and RabbitMQ -------------------------------------------------------------------


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis database of its own, flushed before and after the test."""
    import redis

    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
        client.ping()
    except Exception as exc:
        service_missing(f"Redis at {REDIS_URL}", exc)
    client.flushdb()
    yield REDIS_URL
    client.flushdb()
    client.close()


@pytest.fixture
def amqp_url() -> Iterator[str]:
    """RabbitMQ; our queues are deleted before and after the test."""
    from kombu.connection import Connection

    from kat_scheduler.queues import Queue

    def drop_queues() -> None:
        with Connection(AMQP_URL, connect_timeout=3) as conn:
            for name in Queue:
                channel = conn.channel()
                try:
                    channel.queue_delete(name.value)
                finally:
                    channel.close()

    try:
        with Connection(AMQP_URL, connect_timeout=3) as conn:
            conn.connect()
    except Exception as exc:
        service_missing(f"RabbitMQ at {AMQP_URL}", exc)
    drop_queues()
    yield AMQP_URL
    drop_queues()
