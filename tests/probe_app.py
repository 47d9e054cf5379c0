"""A Celery app on our configuration with probe tasks, for tests that start real worker processes.

Configured from the environment like the real app; each probe records what it ran in a Redis
list (``PROBE_REDIS_URL``) so the test process can read the order across processes.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis
from celery import Task

from kat_scheduler.runtime.celery_app import create_app
from kat_scheduler.settings import load_settings

app = create_app(load_settings(), main="probe", tasks=False)
_redis = redis.Redis.from_url(os.environ["PROBE_REDIS_URL"])  # the test run's own database


@app.task(name="kat.boefje.run", shared=False)
def boefje_probe(band: int, sleep: float = 0.0) -> None:
    if sleep:
        time.sleep(sleep)
    _redis.rpush("probe:ran", json.dumps({"band": band, "pid": os.getpid()}))


@app.task(name="kat.boefje.record_probe", bind=True, shared=False)
def record_probe(self: Task, **kwargs: Any) -> None:
    """Records its kwargs and what the worker read from the message headers and properties.

    ``probe:started`` gets the task id when it starts; then it sleeps ``probe_sleep`` seconds
    unless the message is a redelivery, and appends its record to ``probe:record``.
    """
    request = self.request
    _redis.rpush("probe:started", request.id)
    if kwargs.get("probe_sleep") and not request.delivery_info.get("redelivered"):
        time.sleep(kwargs["probe_sleep"])
    seen = ("id", "task", "root_id", "parent_id", "origin", "kwargsrepr", "argsrepr", "correlation_id", "retries")
    record = {name: getattr(request, name, None) for name in seen}
    record.update(kwargs=kwargs, args=list(request.args or ()), delivery_info=request.delivery_info, pid=os.getpid())
    _redis.rpush("probe:record", json.dumps(record))
