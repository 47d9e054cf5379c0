"""A beat scheduler that ticks only while it holds the ``beat`` lease in the database.

Run as many beats as you like (for failover): one holds the lease and sends; the others wait
and take over within ``SCHEDULER_BEAT_LEASE`` seconds after it dies. The claim invariant already
makes a second active beat harmless (nothing is queued twice); the lease makes it quiet too.

Stopping. Celery's beat handles SIGTERM and SIGINT *inside the signal handler*: it closes the
scheduler there (:meth:`LeasedScheduler.close`), then raises ``SystemExit``, and closes it once
more on the way out. Python runs that handler between two bytecodes of the main thread, so it
can land in the middle of a tick: after the lease's upsert, before its commit. Releasing the
lease right there, on a second connection, waited for the write lock of the tick's own open
transaction: 30 s (SQLite's busy timeout), then "database is locked"; on PostgreSQL the row lock,
forever. A supervisor then had to kill beat. So a stop signal that comes during the lease's
transaction waits for its end (:meth:`LeasedScheduler._lease`), the lease is released once, and no
wait for a lock (SQLite's write lock, a row lock) blocks the main thread longer than
:data:`LOCK_POLL` at a time: a stop ends a wait for a lock at once, and the release is bounded
(:data:`RELEASE_WAIT`).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any, TypeVar

from celery.beat import Scheduler
from pydantic import SecretStr
from sqlalchemy import Engine, event
from sqlalchemy.exc import OperationalError

from kat_scheduler.runtime.heartbeat import Heartbeat
from kat_scheduler.storage.db import make_engine
from kat_scheduler.storage.leases import LeaseStore

logger = logging.getLogger(__name__)

LEASE_NAME = "beat"
#: Seconds one wait for a lock may block the main thread (a longer wait is made of such waits:
#: a signal is handled between them).
LOCK_POLL = 0.25
#: Seconds a tick waits for a lock in all (SQLite's usual busy timeout).
ACQUIRE_WAIT = 30.0
#: Seconds the release at a stop may wait for a lock; then the lease lapses by itself.
RELEASE_WAIT = 1.0
#: PostgreSQL's SQLSTATE for a statement that gave up waiting for a lock (``lock_timeout``).
LOCK_NOT_AVAILABLE = "55P03"

T = TypeVar("T")


def database_uri(configured: SecretStr | str) -> str:
    """The lease database's URL: kept as a SecretStr in Celery's configuration (see config.py),
    a plain string if an own ``CELERY_CONFIG_MODULE`` sets one."""
    return configured.get_secret_value() if isinstance(configured, SecretStr) else configured


def lease_engine(db_uri: str) -> Engine:
    """The lease's engine: one wait for a lock (SQLite's write lock, PostgreSQL's row lock) blocks
    the main thread at most :data:`LOCK_POLL` seconds; the drivers wait in C, where no signal
    handler runs."""
    engine = make_engine(db_uri, pool_size=1)
    wait_ms = int(LOCK_POLL * 1000)

    @event.listens_for(engine, "connect")
    def _short_lock_waits(dbapi_connection: Any, _record: Any) -> None:  # after make_engine's own
        cursor = dbapi_connection.cursor()
        if engine.dialect.name == "sqlite":
            cursor.execute(f"PRAGMA busy_timeout={wait_ms}")
        else:
            cursor.execute(f"SET lock_timeout = {wait_ms}")
            dbapi_connection.commit()  # a session setting, kept past the pool's reset
        cursor.close()

    return engine


def is_locked(exc: OperationalError) -> bool:
    """A lock stayed busy for a whole :data:`LOCK_POLL`: SQLite's "database is locked", or
    PostgreSQL's ``lock_not_available``."""
    return getattr(exc.orig, "pgcode", None) == LOCK_NOT_AVAILABLE or "database is locked" in str(exc.orig)


def within(wait: float, call: Callable[[], T], give_up: Callable[[], bool] = lambda: False) -> T:
    """``call()``, tried again while a lock it needs is busy, for ``wait`` seconds at most (or
    until ``give_up()``)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return call()
        except OperationalError as exc:
            if not is_locked(exc) or time.monotonic() >= deadline or give_up():
                raise


class LeasedScheduler(Scheduler):  # type: ignore[misc]  # celery ships no types
    """Celery's in-memory scheduler behind a database lease."""

    def __init__(self, app: Any, *args: Any, holder_id: str | None = None, **kwargs: Any) -> None:
        self.lease_ttl = float(app.conf.kat_beat_lease)
        self.holder_id = holder_id or f"{socket.gethostname()}:{os.getpid()}"
        self.leases = LeaseStore(lease_engine(database_uri(app.conf.kat_db_uri)))
        self.heartbeat = Heartbeat(app.conf.get("kat_heartbeat_file"))
        self.is_leader = False
        #: The lease's transaction is under way: a stop signal waits for its end.
        self.in_lease = False
        #: A stop signal that came during the lease's transaction: (Celery's handler, the signal).
        self.stop_requested: tuple[Callable[[int, FrameType | None], Any], int] | None = None
        self._handlers: dict[int, Any] = {}
        self._defer_stop_signals()
        super().__init__(app, *args, **kwargs)

    def _defer_stop_signals(self) -> None:
        """Wrap the SIGTERM and SIGINT handlers Celery's beat installed before it built this
        scheduler: during the lease's transaction a signal is noted, and handled right after it."""
        if threading.current_thread() is not threading.main_thread():
            return  # an embedded beat (``worker -B``): its thread gets no signals
        for signum in (signal.SIGTERM, signal.SIGINT):
            handler = signal.getsignal(signum)
            if callable(handler):
                self._handlers[signum] = handler
                signal.signal(signum, self._deferring(handler))

    def _deferring(self, handler: Callable[[int, FrameType | None], Any]) -> Callable[[int, FrameType | None], Any]:
        def deferred(signum: int, frame: FrameType | None) -> Any:
            if self.in_lease:
                self.stop_requested = (handler, signum)
                return None
            return handler(signum, frame)

        return deferred

    def _lease(self) -> bool:
        """Take or renew the lease. A stop signal meanwhile ends the wait for a lock and is handled
        once the transaction is over (Celery's handler closes the scheduler and raises SystemExit)."""
        self.in_lease = True
        try:
            return within(
                ACQUIRE_WAIT,
                lambda: self.leases.acquire(LEASE_NAME, self.holder_id, self.lease_ttl),
                give_up=lambda: self.stop_requested is not None,
            )
        finally:
            self.in_lease = False
            if self.stop_requested is not None:
                handler, signum = self.stop_requested
                self.stop_requested = None
                handler(signum, None)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        self.heartbeat.beat()  # leader or standby: the loop is going round
        try:
            leader = self._lease()
        except Exception:
            logger.exception("beat lease check failed; not ticking until the database answers")
            leader = False
        if leader != self.is_leader:
            logger.warning("beat %s %s the lease", self.holder_id, "acquired" if leader else "lost or could not get")
            self.is_leader = leader
            if leader:
                self.make_all_due()
        if not leader:
            return min(float(self.max_interval), self.lease_ttl / 3)
        interval = float(super().tick(*args, **kwargs))
        return min(interval, self.lease_ttl / 3)

    def make_all_due(self) -> None:
        """A new leader cannot know when the last one ticked: tick every entry now.

        Harmless by the claim invariant (a tick queues nothing that is already live) and it
        means a fresh start, or a failover, does not wait a whole interval for the first tick.
        """
        now = self.app.now()
        for entry in self.schedule.values():
            run_every = getattr(entry.schedule, "run_every", None)
            if run_every is not None:
                entry.last_run_at = now - run_every
        self._heap = None  # rebuilt from the entries on the next tick

    def close(self) -> None:
        """Release the lease (once, waiting at most :data:`RELEASE_WAIT`) and the broker connection.

        Called from Celery's signal handler too, which waits for the end of the lease's transaction
        (:meth:`_lease`); should it come in the middle anyway, nothing is done here (the release
        would wait for the transaction's own lock) and Celery closes the scheduler again on the
        way out.
        """
        if self.in_lease:
            return
        for signum, handler in self._handlers.items():  # the next scheduler wraps Celery's own
            signal.signal(signum, handler)
        self._handlers = {}
        if self.is_leader:
            self.is_leader = False
            try:
                within(RELEASE_WAIT, lambda: self.leases.release(LEASE_NAME, self.holder_id))
            except Exception as exc:
                if isinstance(exc, OperationalError) and is_locked(exc):
                    logger.warning(
                        "the beat lease was not released: the database stayed locked for %.0fs; it lapses "
                        "by itself within SCHEDULER_BEAT_LEASE (%.0fs)",
                        RELEASE_WAIT,
                        self.lease_ttl,
                    )
                else:
                    logger.exception("could not release the beat lease; it lapses by itself")
        super().close()
