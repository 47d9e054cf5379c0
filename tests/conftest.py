"""Shared fixtures: real services, found on loopback, and shared with other test runs.

A service that cannot be reached skips its tests locally and FAILS them when ``CI`` is set, so
CI can never pass by skipping. Addresses can be changed with ``TEST_POSTGRES_URI``,
``TEST_REDIS_URL`` and ``TEST_AMQP_URL``.

Several test runs (other clones, other engineers, CI jobs) may use the same servers at once, so
a run owns only what it created, under names derived from its run id (:data:`RUN_ID`, the
pytest process id and a random part), and removes it at the end, also when tests fail:

* PostgreSQL: new databases ``<purpose>_<run id>_<n>``, dropped afterwards. ``TEST_POSTGRES_URI``
  names the server and the database to connect to for creating them.
* Redis: a database number of the run's own. ``TEST_REDIS_URL`` names the server (default
  ``redis://127.0.0.1:6379``); the run claims a free database 1..15 (up to the server's
  ``databases`` setting) with ``SET kat_scheduler_test:redis-db:<n> <run id> NX EX`` in database
  0, flushes it when claimed and again before releasing it at the end. The claim expires 30
  minutes after the run's last test started, so a crashed run's database comes free by itself.
  If ``TEST_REDIS_URL`` names a database (``redis://127.0.0.1:6379/7``), the run uses that one,
  claimed the same way: the run cannot start its Redis tests while another run holds it, and
  other runs skip it while this one does. Database 0 holds the claims and is never used.
* RabbitMQ: vhosts of the run's own, ``kat_test_<run id>_<purpose>``, created with
  ``rabbitmqctl`` (on the machine running the tests, so the broker must run there too) with the
  permissions of ``TEST_AMQP_URL``'s user, and deleted at the end. ``TEST_AMQP_URL`` names the
  server and the user; its vhost is not used. There is no fallback to a shared vhost: with
  ``CI`` set, a vhost that cannot be created fails the tests that need it.

Celery's queues (``boefjes``, ``normalizers``, ``scheduler``) and KAT's event queues therefore
live in the run's own Redis database and vhosts. Ports are free ones picked by the OS, and files
are written under ``tmp_path``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from kat_scheduler.storage import migrate
from kat_scheduler.storage.db import make_engine, normalise_url
from tests.vhosts import RunVhosts, VhostError, shown

IN_CI = bool(os.environ.get("CI"))
POSTGRES_URI = os.environ.get("TEST_POSTGRES_URI", "postgresql://127.0.0.1:5432/test")
#: The Redis server; a database named in it is the run's own (claimed), else one is claimed.
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")
#: The RabbitMQ server and user; the run's vhosts are created on it.
AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
TABLES = (
    "tasks",
    "unpublished_tasks",
    "schedules",
    "beat_leases",
    "producer_runs",
    "bytes_runs",
    "bytes_histories",
    "worker_nodes",
    "broker_markers",
    "object_events",
)

#: This test run's id: every database, Redis claim and vhost the run creates is named from it.
RUN_ID = f"{os.getpid()}_{secrets.token_hex(3)}"


def service_missing(what: str, error: Exception | str) -> None:
    reason = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    message = f"{what} is not reachable ({reason})"
    if IN_CI:
        pytest.fail(f"{message}; CI is set, so this is a failure, not a skip", pytrace=False)
    pytest.skip(message)


def not_ours(what: str) -> None:
    """A resource this run cannot have for itself: a failure in CI, a skip locally."""
    if IN_CI:
        pytest.fail(f"{what}; CI is set, so this is a failure, not a skip", pytrace=False)
    pytest.skip(what)


# --- PostgreSQL ---------------------------------------------------------------------------


DATABASE_NUMBERS = itertools.count(1)


@contextlib.contextmanager
def new_database(prefix: str) -> Iterator[str]:
    """A new, empty PostgreSQL database ``<prefix>_<run id>_<n>``; dropped afterwards with
    whatever is still connected.

    Fails (in CI) or skips (locally) when PostgreSQL cannot be reached.
    """
    admin_url = normalise_url(POSTGRES_URI)
    try:
        admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:
        service_missing(f"PostgreSQL at {POSTGRES_URI}", exc)
    name = f"{prefix}_{RUN_ID}_{next(DATABASE_NUMBERS)}"
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
    """The test database, emptied after each test: ``DELETE FROM`` each table, in the order of
    :data:`TABLES` (children first: tasks before the schedules they refer to).

    ``DELETE``, not ``TRUNCATE``: a test leaves a few rows, and truncating every table gives each
    a new file, which costs far more than deleting them. The space of deleted rows is reused by
    later tests' inserts, so rows lie in no fixed order from one test to the next: a test picks
    the row it is about by a key (``ORDER BY``), never as whichever comes first.
    """
    yield _pg_engine
    with _pg_engine.begin() as conn:
        for table in TABLES:
            conn.execute(sa.text(f"DELETE FROM {table}"))


@pytest.fixture(scope="session")
def migrated_sqlite_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database file migrated once for the run: each test gets a copy of it."""
    path = tmp_path_factory.mktemp("sqlite_template") / "kat_scheduler.db"
    migrate.upgrade(f"sqlite:///{path}")
    assert not path.with_name(path.name + "-wal").exists(), "the template must be whole in its file"
    return path


@pytest.fixture
def sqlite_uri(tmp_path: Path, migrated_sqlite_file: Path) -> str:
    """A migrated SQLite database of this test's own (a copy of the run's migrated file)."""
    path = tmp_path / "kat_scheduler.db"
    shutil.copyfile(migrated_sqlite_file, path)
    return f"sqlite:///{path}"


@pytest.fixture
def sqlite_engine(sqlite_uri: str) -> Iterator[Engine]:
    engine = make_engine(sqlite_uri)
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest) -> Engine:
    """Each test using this runs once on SQLite and once on PostgreSQL."""
    return request.getfixturevalue(f"{request.param}_engine" if request.param == "sqlite" else "pg_engine")  # type: ignore[no-any-return]


# --- Redis ---------------------------------------------------------------------------------

CLAIM_PREFIX = "kat_scheduler_test:redis-db:"
#: Seconds a claim lives after the last test started; well above pytest's 300 s test timeout.
CLAIM_TTL = 1800
_IF_OURS_EXPIRE = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('EXPIRE', KEYS[1], ARGV[2]) end return 0"
)
_IF_OURS_DELETE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


def redis_database_of(url: str) -> int | None:
    """The database number a Redis URL names, or None when it names none."""
    path = urlsplit(url).path.strip("/")
    return int(path) if path else None


def on_database(url: str, number: int) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{number}"))


class RedisClaims:
    """Redis database numbers this run holds on the shared server, claimed in database 0."""

    def __init__(self, server_url: str, run_id: str) -> None:
        self.server_url = server_url
        self.run_id = run_id
        self.held: list[int] = []

    def admin(self) -> Any:
        import redis

        return redis.Redis.from_url(on_database(self.server_url, 0), socket_connect_timeout=2)

    def database_count(self, client: Any) -> int:
        import redis

        try:
            return int(client.config_get("databases")["databases"])
        except (redis.RedisError, KeyError, ValueError):  # CONFIG may be disabled: Redis's default
            return 16

    def claim(self, wanted: int | None = None) -> str:
        """The URL of a database of this run's own, flushed; ``wanted``, or the first free one."""
        import redis

        try:
            client = self.admin()
            client.ping()
        except redis.RedisError as exc:
            service_missing(f"Redis at {shown(self.server_url)}", exc)
        with client:
            if wanted == 0:
                not_ours(f"Redis database 0 at {shown(self.server_url)} holds the test runs' claims; name another")
            candidates = [wanted] if wanted is not None else range(1, self.database_count(client))
            for number in candidates:
                if client.set(f"{CLAIM_PREFIX}{number}", self.run_id, nx=True, ex=CLAIM_TTL):
                    self.held.append(number)
                    url = on_database(self.server_url, number)
                    redis.Redis.from_url(url).flushdb()
                    return url
            holders = {n: client.get(f"{CLAIM_PREFIX}{n}") for n in candidates}
        taken = ", ".join(f"{n} by run {(holder or b'?').decode()}" for n, holder in holders.items())
        not_ours(
            f"no Redis database of this run's own at {shown(self.server_url)}: claimed are {taken} "
            f"(keys {CLAIM_PREFIX}<n> in database 0; a crashed run's claim expires within {CLAIM_TTL} s)"
        )
        raise AssertionError("unreachable")  # not_ours always raises

    def refresh(self) -> None:
        """Extend this run's claims; fails when one was lost (another run may be using it now)."""
        if not self.held:
            return
        with self.admin() as client:
            extend = client.register_script(_IF_OURS_EXPIRE)
            lost = [n for n in self.held if not extend(keys=[f"{CLAIM_PREFIX}{n}"], args=[self.run_id, CLAIM_TTL])]
        if lost:
            pytest.fail(f"this run's claim on Redis database(s) {lost} expired; another run may be using them")

    def release(self, url: str) -> None:
        """Flush the database and give it back (only if the claim is still this run's)."""
        import redis

        number = redis_database_of(url)
        assert number in self.held, f"{number} is not a database of this run's"
        self.held.remove(number)
        with self.admin() as client:
            if client.get(f"{CLAIM_PREFIX}{number}") == self.run_id.encode():
                with redis.Redis.from_url(url) as own:
                    own.flushdb()
            client.register_script(_IF_OURS_DELETE)(keys=[f"{CLAIM_PREFIX}{number}"], args=[self.run_id])


REDIS_CLAIMS = RedisClaims(REDIS_URL, RUN_ID)


def pytest_runtest_setup(item: pytest.Item) -> None:
    REDIS_CLAIMS.refresh()


@pytest.fixture(scope="session")
def run_redis_url() -> Iterator[str]:
    """The run's own Redis database (``TEST_REDIS_URL``'s, or a free one), claimed for the run."""
    url = REDIS_CLAIMS.claim(redis_database_of(REDIS_URL))
    yield url
    REDIS_CLAIMS.release(url)


@pytest.fixture(scope="session")
def second_run_redis_url() -> Iterator[str]:
    """A second database of the run's own (always a free one), for a test that keeps two apart."""
    url = REDIS_CLAIMS.claim()
    yield url
    REDIS_CLAIMS.release(url)


def flushed(url: str) -> Iterator[str]:
    import redis

    with redis.Redis.from_url(url, socket_connect_timeout=2) as client:
        client.flushdb()
        yield url
        client.flushdb()


@pytest.fixture
def redis_url(run_redis_url: str) -> Iterator[str]:
    """The run's own Redis database, flushed before and after the test."""
    yield from flushed(run_redis_url)


@pytest.fixture
def second_redis_url(second_run_redis_url: str) -> Iterator[str]:
    """The run's second Redis database, flushed before and after the test."""
    yield from flushed(second_run_redis_url)


# --- RabbitMQ ------------------------------------------------------------------------------

RUN_VHOSTS = RunVhosts(AMQP_URL)


def vhost_name(purpose: str) -> str:
    """The name of this run's vhost for ``purpose``."""
    return f"kat_test_{RUN_ID}_{purpose}"


def run_vhost(name: str) -> str:
    """``TEST_AMQP_URL`` on the run's vhost ``name`` (from :func:`vhost_name`), created if need be.

    Fails (in CI) or skips when it cannot be created; it is deleted at the end of the run by
    the ``rabbitmq_vhosts`` fixture, which every user of a vhost depends on.
    """
    assert name.startswith(vhost_name("")), f"{name} is not named from this run's id"
    try:
        return RUN_VHOSTS.url(name)
    except VhostError as exc:
        if not RUN_VHOSTS.reachable():
            service_missing(f"RabbitMQ at {shown(AMQP_URL)}", str(exc))
        not_ours(str(exc))
        raise AssertionError("unreachable") from exc  # not_ours always raises


@pytest.fixture(scope="session")
def rabbitmq_vhosts() -> Iterator[RunVhosts]:
    """The run's vhosts: whatever was created during the run is deleted at its end."""
    yield RUN_VHOSTS
    RUN_VHOSTS.delete_all()


@pytest.fixture
def amqp_url(rabbitmq_vhosts: RunVhosts) -> Iterator[str]:
    """RabbitMQ on the run's task vhost; our task queues are deleted before and after the test."""
    from kombu.connection import Connection

    from kat_scheduler.queues import Queue

    url = run_vhost(vhost_name("tasks"))

    def drop_queues() -> None:
        with Connection(url, connect_timeout=3) as conn:
            for name in Queue:
                channel = conn.channel()
                try:
                    channel.queue_delete(name.value)
                finally:
                    channel.close()

    drop_queues()
    yield url
    drop_queues()
