"""Rate limits per group, across organisations, worker processes and machines (issue #20).

* the rules (pure): :mod:`kat_scheduler.rules.rate_limits`: parse a limit, resolve a group template;
* the counters: :mod:`~kat_scheduler.limiting.limiter`, over moving windows in Redis counted on
  the Redis server's clock (:mod:`~kat_scheduler.limiting.window`); a worker asks
  :meth:`RateLimiter.admit` right before it starts a boefje and records the moment it was counted
  as the start;
* a task over its limit waits without a message and without a worker slot (its row is stored by
  :mod:`kat_scheduler.storage.waiting`), and is published again when its window opens by a
  thread in each worker node's main process, one node at a time (the holder of the release lease;
  :mod:`~kat_scheduler.limiting.release`).
"""

from __future__ import annotations

import functools
import logging

from kat_scheduler.limiting.limiter import FREE, Admission, RateLimiter
from kat_scheduler.limiting.release import Releaser, ReleaseThread
from kat_scheduler.settings import Settings, get_settings

__all__ = [
    "FREE",
    "Admission",
    "RateLimiter",
    "ReleaseThread",
    "Releaser",
    "process_limiter",
    "start_release",
]

logger = logging.getLogger(__name__)


@functools.cache
def process_limiter() -> RateLimiter | None:
    """This process's limiter, from its settings (``None``, said once: no Redis to count in)."""
    settings = get_settings()
    limiter = RateLimiter.from_settings(settings)
    if limiter is None:
        logger.warning(
            "rate limits are not enforced: no Redis to count in (set SCHEDULER_RATE_LIMIT_STORAGE, "
            "or use a Redis broker)"
        )
    return limiter


def start_release(settings: Settings) -> ReleaseThread | None:
    """In a worker node's main process: start releasing waiting tasks (``None``: no limiter)."""
    from kat_scheduler.dispatch.publishing import make_publisher
    from kat_scheduler.storage.db import make_engine

    limiter = RateLimiter.from_settings(settings)
    if limiter is None:
        return None
    engine = make_engine(settings.db_uri, pool_size=1)
    thread = ReleaseThread(Releaser(engine, make_publisher(settings), limiter), settings.rate_limit_poll)
    thread.start()
    return thread
