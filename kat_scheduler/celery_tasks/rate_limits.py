"""Each worker node of our app releases the tasks that wait for their rate limit's window, from a
thread of its main process (:mod:`kat_scheduler.limiting.release`), started at ``worker_init``."""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import worker_init, worker_shutdown

from kat_scheduler.limiting import ReleaseThread, start_release
from kat_scheduler.runtime.resources import get_runtime

logger = logging.getLogger(__name__)

_release: ReleaseThread | None = None


@worker_init.connect
def _release_starts(sender: Any = None, **_: Any) -> None:
    global _release
    if getattr(getattr(sender, "app", None), "conf", {}).get("kat_db_uri") is None:
        return  # not a worker of our app (a test app with stand-in tasks)
    try:
        _release = start_release(get_runtime().settings)
    except Exception:  # waiting tasks are then published by the reaper, later
        logger.exception("this worker node could not start releasing rate-limited tasks")


@worker_shutdown.connect
def _release_stops(**_: Any) -> None:
    global _release
    if _release is not None:
        _release.stop()
        _release = None
