"""The Celery app of the chaos benchmark's workers: kat_scheduler's own, with a recording runner.

    celery -A benchmarks.chaos_app worker -Q boefjes

Everything is kat_scheduler's (configuration from the environment, the ``kat.boefje.run`` task,
the job's lifecycle) except the runner each pool process uses: the simulated runner, slowed down
to a random ``CHAOS_RUN_MS`` (``"20,50"``) milliseconds per run so that kills land mid-run, that
appends each run's start and end (run id, task id, pid, wall-clock time) as JSON to the Redis
list ``CHAOS_RECORD_KEY`` at ``CHAOS_RECORD_URL``. Each delivery's outcome (completed, failed,
skipped, retry) is appended too. :mod:`benchmarks.chaos` reads the list to check that no task
ran twice at the same time and none ran after it had finished. The task ids in ``CHAOS_POISON``
(comma-separated) are poison: each of their runs SIGKILLs its own pool process, as a boefje that
segfaults or is OOM-killed would.

The list lives on a Redis of its own (not the broker), so it survives the broker's restarts.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
import uuid
from typing import Any

import redis
from celery.signals import task_postrun, task_prerun

from kat_scheduler.runtime.celery_app import app
from kat_scheduler.runtime.resources import get_runtime
from kat_scheduler.workers.runners import RawOutput
from kat_scheduler.workers.simulated import SimulatedRunner

__all__ = ["POISON_ENV", "RECORD_KEY_ENV", "RECORD_URL_ENV", "RUN_MS_ENV", "RecordingRunner", "app"]

RECORD_URL_ENV = "CHAOS_RECORD_URL"
RECORD_KEY_ENV = "CHAOS_RECORD_KEY"
RUN_MS_ENV = "CHAOS_RUN_MS"
POISON_ENV = "CHAOS_POISON"


class RecordingRunner(SimulatedRunner):
    """:class:`SimulatedRunner`, sleeping a while per boefje run and recording its start and end."""

    def __init__(self, url: str, key: str, run_ms: tuple[float, float], poison: frozenset[str] = frozenset()) -> None:
        self.key = key
        self.run_ms = run_ms
        self.poison = poison
        self.redis = redis.Redis.from_url(url)

    def record(self, **event: Any) -> None:
        self.redis.rpush(self.key, json.dumps({**event, "pid": os.getpid(), "t": time.time()}))

    def run_boefje(self, boefje_id: str, boefje_meta: dict[str, Any], environment: dict[str, str]) -> RawOutput:
        run = uuid.uuid4().hex
        task = str(boefje_meta.get("id"))
        self.record(ev="start", run=run, task=task)
        if task in self.poison:  # a boefje that takes its process down every time (segfault, OOM kill)
            self.record(ev="end", run=run, task=task, killed=True)
            os.kill(os.getpid(), signal.SIGKILL)
        try:
            time.sleep(random.uniform(*self.run_ms) / 1000)
            return super().run_boefje(boefje_id, boefje_meta, environment)
        finally:
            self.record(ev="end", run=run, task=task)


def runner_from_env() -> RecordingRunner:
    low, _, high = os.environ.get(RUN_MS_ENV, "20,50").partition(",")
    poison = frozenset(filter(None, os.environ.get(POISON_ENV, "").split(",")))
    return RecordingRunner(
        os.environ[RECORD_URL_ENV], os.environ[RECORD_KEY_ENV], (float(low), float(high or low)), poison
    )


@task_prerun.connect
def _install_runner(**_: Any) -> None:
    """Give this pool process's runtime the recording runner (once; the runtime is per process)."""
    runtime = get_runtime()
    if not isinstance(runtime.__dict__.get("runner"), RecordingRunner):
        runtime.runner = runner_from_env()


@task_postrun.connect
def _record_outcome(task_id: str | None = None, retval: Any = None, **_: Any) -> None:
    runner = get_runtime().runner
    if isinstance(runner, RecordingRunner):
        outcome = retval.get("outcome", "?") if isinstance(retval, dict) else type(retval).__name__
        runner.record(ev="outcome", task=task_id, outcome=outcome)
