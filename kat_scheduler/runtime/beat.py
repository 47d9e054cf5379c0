"""A beat scheduler that ticks only while it holds the ``beat`` lease in the database.

Run as many beats as you like (for failover): one holds the lease and sends; the others wait
and take over within ``SCHEDULER_BEAT_LEASE`` seconds after it dies. The claim invariant already
makes a second active beat harmless (nothing is queued twice); the lease makes it quiet too.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from celery.beat import Scheduler
from pydantic import SecretStr

from kat_scheduler.runtime.heartbeat import Heartbeat
from kat_scheduler.storage.db import make_engine
from kat_scheduler.storage.leases import LeaseStore

logger = logging.getLogger(__name__)

LEASE_NAME = "beat"


def database_uri(configured: SecretStr | str) -> str:
    """The lease database's URL: kept as a SecretStr in Celery's configuration (see config.py),
    a plain string if an own ``CELERY_CONFIG_MODULE`` sets one."""
    return configured.get_secret_value() if isinstance(configured, SecretStr) else configured


class LeasedScheduler(Scheduler):  # type: ignore[misc]  # celery ships no types
    """Celery's in-memory scheduler behind a database lease."""

    def __init__(self, app: Any, *args: Any, holder_id: str | None = None, **kwargs: Any) -> None:
        self.lease_ttl = float(app.conf.kat_beat_lease)
        self.holder_id = holder_id or f"{socket.gethostname()}:{os.getpid()}"
        self.leases = LeaseStore(make_engine(database_uri(app.conf.kat_db_uri), pool_size=1))
        self.heartbeat = Heartbeat(app.conf.get("kat_heartbeat_file"))
        self.is_leader = False
        super().__init__(app, *args, **kwargs)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        self.heartbeat.beat()  # leader or standby: the loop is going round
        try:
            leader = self.leases.acquire(LEASE_NAME, self.holder_id, self.lease_ttl)
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
        if self.is_leader:
            try:
                self.leases.release(LEASE_NAME, self.holder_id)
            except Exception:
                logger.exception("could not release the beat lease; it lapses by itself")
        super().close()
