"""A stand-in boefje worker for dispatch tests: ``kat.boefje.run`` with the real signature.

It records (task id, kwargs) in the Redis list ``probe:boefjes`` (``PROBE_REDIS_URL``) and
sleeps ``PROBE_SLEEP`` seconds, so tests can read the order in which a stock worker ran
what the producers published. It runs nothing.
"""

from __future__ import annotations

import json
import os
import time

import redis
from celery import Task

from kat_scheduler.runtime.celery_app import create_app
from kat_scheduler.settings import load_settings

app = create_app(load_settings(), main="probe_boefjes", tasks=False)
_redis = redis.Redis.from_url(os.environ["PROBE_REDIS_URL"])  # the test run's own database
_sleep = float(os.environ.get("PROBE_SLEEP", "0"))


@app.task(name="kat.boefje.run", bind=True, shared=False)
def run_boefje(self: Task, organisation: str, boefje_id: str, input_ooi: str | None) -> None:
    if _sleep:
        time.sleep(_sleep)
    record = {"id": self.request.id, "organisation": organisation, "boefje_id": boefje_id, "input_ooi": input_ooi}
    _redis.rpush("probe:boefjes", json.dumps(record))
