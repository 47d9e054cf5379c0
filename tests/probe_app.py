"""A Celery app on our configuration with probe tasks, for tests that start real worker processes.

Configured from the environment like the real app; each probe records what it ran in a Redis
list (``PROBE_REDIS_URL``) so the test process can read the order across processes.
"""

from __future__ import annotations

import json
import os
import time

import redis

from kat_scheduler.celery_app import create_app
from kat_scheduler.settings import load_settings

app = create_app(load_settings(), main="probe")
_redis = redis.Redis.from_url(os.environ.get("PROBE_REDIS_URL", "redis://127.0.0.1:6379/15"))


@app.task(name="kat.boefje.run", shared=False)
def boefje_probe(band: int, sleep: float = 0.0) -> None:
    if sleep:
        time.sleep(sleep)
    _redis.rpush("probe:ran", json.dumps({"band": band, "pid": os.getpid()}))
