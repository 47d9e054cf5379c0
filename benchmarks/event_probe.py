"""A stand-in boefje worker for ``benchmarks.events``: ``kat.boefje.run`` that records its start.

Run by a stock worker (``celery -A benchmarks.event_probe worker -Q boefjes -c 1``) on our
configuration (from the environment, like the real app). Each task, first thing, takes
``time.time()`` and pushes ``{"id", "organisation", "boefje_id", "input_ooi", "started"}`` onto the
Redis list :data:`KEY` (``EVENT_PROBE_REDIS_URL``), so the benchmark can time "event published" →
"task started" on the same clock, and block on the list instead of polling. It runs nothing.
"""

from __future__ import annotations

import json
import os
import time

import redis
from celery import Task

from kat_scheduler.runtime.celery_app import create_app
from kat_scheduler.settings import load_settings

#: The Redis list the starts are pushed onto.
KEY = "bench:events:started"

app = create_app(load_settings(), main="event_probe", tasks=False)
_redis = redis.Redis.from_url(os.environ.get("EVENT_PROBE_REDIS_URL", "redis://127.0.0.1:6379/7"))


@app.task(name="kat.boefje.run", bind=True, shared=False)
def run_boefje(self: Task, organisation: str, boefje_id: str, input_ooi: str | None) -> None:
    started = time.time()
    record = {
        "id": self.request.id,
        "organisation": organisation,
        "boefje_id": boefje_id,
        "input_ooi": input_ooi,
        "started": started,
    }
    _redis.rpush(KEY, json.dumps(record))
