"""A real ``celery beat`` asked to stop while its tick waits for the database stops at once.

Celery's beat closes its scheduler inside the SIGTERM handler, which Python runs wherever the
main thread is: in a tick, between the lease's upsert and its commit, a release there waited for
the tick's own lock (30 s on SQLite, for ever on PostgreSQL) and ``kat-scheduler run`` had to kill
beat. A tick waiting for another writer's lock did not even see the signal until it got the lock.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

from kat_scheduler.runtime.beat import LEASE_NAME
from kat_scheduler.storage.db import make_engine
from kat_scheduler.storage.leases import LeaseStore
from tests.workers import stop, wait_for

#: Seconds beat may take to exit after SIGTERM: ``kat-scheduler run`` gives its producers and
#: workers 6.4 s in all (before this fix: 30 s on SQLite, never on PostgreSQL).
STOPS_WITHIN = 6.0
#: A short lease: beat renews it every 0.5 s, so a lapsed lease shows a tick that is stuck.
LEASE = "1.5"


@contextmanager
def running_beat(db_uri: str, redis_url: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "SCHEDULER_DB_URI": db_uri, "SCHEDULER_BROKER_URL": redis_url, "SCHEDULER_BEAT_LEASE": LEASE}
    with open(log, "wb") as sink:
        beat = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "kat_scheduler", "beat", "--loglevel", "INFO"],
            env=env,
            cwd=log.parent,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield beat
    finally:
        stop(beat)


@contextmanager
def leading_beat(
    db_uri: str, redis_url: str, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], LeaseStore, Path]]:
    """A real beat on ``db_uri`` once it holds the lease; the lease store and beat's log beside it."""
    log = tmp_path / "beat.log"
    engine = make_engine(db_uri, pool_size=2)
    leases = LeaseStore(engine)
    try:
        with running_beat(db_uri, redis_url, log) as beat:
            assert wait_for(lambda: leases.holder(LEASE_NAME) is not None, timeout=60), log.read_text()
            yield beat, leases, log
    finally:
        engine.dispose()


def lease_rows(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return [row.holder for row in conn.execute(sa.text("SELECT holder FROM beat_leases WHERE name = 'beat'"))]


def exited(beat: subprocess.Popen[bytes], log: Path, signalled: float) -> float:
    """The seconds ``beat`` took to exit after ``signalled`` (asserting it exited by itself, with 0)."""
    try:
        code: int | None = beat.wait(timeout=40)
    except subprocess.TimeoutExpired:
        code = None
    took = time.monotonic() - signalled
    assert code == 0, f"beat did not exit by itself within {took:.0f}s (code {code}):\n{log.read_text()}"
    return took


@contextmanager
def another_writer(sqlite_uri: str) -> Iterator[None]:
    """Another writer (a planning tick, a batch) holds SQLite's write lock until the block ends."""
    writer = sqlite3.connect(sqlite_uri.removeprefix("sqlite:///"), isolation_level=None, timeout=30)
    writer.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        writer.execute("COMMIT")
        writer.close()


def signal_once_waiting(beat: subprocess.Popen[bytes], leases: LeaseStore, log: Path) -> float:
    """SIGTERM to ``beat`` once its lease lapsed (it renews every 0.5 s, so its tick now waits for
    the lock); the moment it was sent."""
    assert wait_for(lambda: leases.holder(LEASE_NAME) is None, timeout=10), log.read_text()
    signalled = time.monotonic()
    beat.send_signal(signal.SIGTERM)
    return signalled


def test_sigterm_while_a_tick_waits_for_sqlites_write_lock_stops_beat_at_once_and_releases_its_lease(
    sqlite_uri: str, redis_url: str, tmp_path: Path
) -> None:
    with leading_beat(sqlite_uri, redis_url, tmp_path) as (beat, leases, log):
        with another_writer(sqlite_uri):
            signalled = signal_once_waiting(beat, leases, log)
        # the other writer committed: the tick gets the lock, the signal lands mid-transaction
        assert exited(beat, log, signalled) <= STOPS_WITHIN, log.read_text()
        assert lease_rows(leases.engine) == [], "a beat that stops cleanly releases its lease"


def test_a_beat_stopped_while_another_writer_keeps_the_lock_exits_without_waiting_for_it(
    sqlite_uri: str, redis_url: str, tmp_path: Path
) -> None:
    with leading_beat(sqlite_uri, redis_url, tmp_path) as (beat, leases, log):
        with another_writer(sqlite_uri):
            signalled = signal_once_waiting(beat, leases, log)
            assert exited(beat, log, signalled) <= STOPS_WITHIN, log.read_text()
        assert "the beat lease was not released: the database stayed locked" in log.read_text()
        assert lease_rows(leases.engine) != [], "the lease was left to lapse, as the log says"
        assert leases.holder(LEASE_NAME) is None


def test_sigterm_while_a_tick_waits_for_the_lease_row_on_postgresql_stops_beat_and_releases_it(
    private_postgres_uri: str, redis_url: str, tmp_path: Path
) -> None:
    with leading_beat(private_postgres_uri, redis_url, tmp_path) as (beat, leases, log):
        with leases.engine.connect() as other:
            other.execute(sa.text("SELECT 1 FROM beat_leases WHERE name = 'beat' FOR UPDATE"))  # the row's lock
            assert wait_for(lambda: leases.holder(LEASE_NAME) is None, timeout=10), log.read_text()
            signalled = time.monotonic()
            beat.send_signal(signal.SIGTERM)
            other.rollback()  # the tick gets the row: the signal lands mid-transaction
        assert exited(beat, log, signalled) <= STOPS_WITHIN, log.read_text()
        assert lease_rows(leases.engine) == [], "a beat that stops cleanly releases its lease"
