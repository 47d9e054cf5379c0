"""The boefje and normalizer tasks workers consume from the ``boefjes`` and ``normalizers`` queues.

Kwargs name the organisation, plugin and input (readable in Flower; never secrets); the task id
is the ``tasks`` row id. The work itself is in :mod:`kat_scheduler.workers.lifecycle`.

Every worker node of our app beats in the database from its main process while it lives
(:mod:`kat_scheduler.workers.liveness`), and records its id on the tasks it receives and runs, so
the reaper hands on the tasks of a node whose main process died within a minute.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from typing import Any

from billiard.exceptions import TimeLimitExceeded
from celery import Task, shared_task
from celery.signals import task_failure, task_received, worker_init, worker_shutdown
from pydantic import SecretStr

from kat_scheduler.models.tasks import TaskStatus
from kat_scheduler.queues import TaskName
from kat_scheduler.runtime.resources import get_runtime
from kat_scheduler.storage.tables import utcnow
from kat_scheduler.workers.dedup import deduplicator_of
from kat_scheduler.workers.lifecycle import Job, JobResult, Outcome, worker_id
from kat_scheduler.workers.liveness import current_node_id, start_node, stop_node

logger = logging.getLogger(__name__)

OUR_TASKS = {TaskName.BOEFJE_RUN.value, TaskName.NORMALIZER_RUN.value}


@worker_init.connect
def _node_starts(sender: Any = None, **_: Any) -> None:
    """In the worker's main process, before its pool forks: register this node's life and beat."""
    configured = getattr(getattr(sender, "app", None), "conf", {}).get("kat_db_uri")
    if configured is None:
        return  # not a worker of our app (a test app with stand-in tasks)
    db_uri = configured.get_secret_value() if isinstance(configured, SecretStr) else str(configured)
    try:
        interval = get_runtime().settings.worker_heartbeat_interval
        start_node(str(getattr(sender, "hostname", None) or "worker"), db_uri, interval)
    except Exception:  # without a heartbeat the node's tasks wait for the hard time limit instead
        logger.exception("this worker node could not start its heartbeat")


@worker_shutdown.connect
def _node_stops(**_: Any) -> None:
    stop_node()


@task_received.connect
def _received(request: Any = None, **_: Any) -> None:
    """In the worker's main process: a message was received; its row goes ``queued → dispatched``."""
    if request is None or getattr(request, "name", None) not in OUR_TASKS:
        return
    try:
        get_runtime().tasks.mark_dispatched(
            uuid.UUID(request.id), worker=request.hostname or "worker", node_id=current_node_id()
        )
    except Exception:  # bookkeeping only: never let it stop the consumer
        logger.exception("could not mark task %s dispatched", getattr(request, "id", "?"))


@task_failure.connect
def _hard_time_limit(
    sender: Task | None = None, task_id: str | None = None, exception: BaseException | None = None, **_: Any
) -> None:
    """In the worker's main process: a child killed at the hard time limit leaves its row failed."""
    if sender is None or task_id is None or sender.name not in OUR_TASKS:
        return
    if isinstance(exception, TimeLimitExceeded):
        get_runtime().tasks.transition(
            uuid.UUID(task_id),
            [TaskStatus.RUNNING],
            TaskStatus.FAILED,
            error=f"hard time limit exceeded ({exception})",
            ended_at=utcnow(),
        )


def _settle(task: Task, job: Job, result: JobResult) -> dict[str, str]:
    """Retry a task whose service failed, with exponential backoff and a bounded count; after the
    last retry the row fails as no run of its plugin and its pair is due again after
    ``SCHEDULER_SERVICE_FAILURE_RETRY_DELAY`` (not a grace period later)."""
    if result.outcome != Outcome.RETRY:
        return result.as_dict()
    runtime = get_runtime()
    settings = runtime.settings
    retries = task.request.retries
    if retries >= settings.max_retries:
        job.fail_for_good(
            uuid.UUID(task.request.id),
            f"gave up after {retries} retries: {result.detail}",
            service=result.service,
            schedules=runtime.schedules,
            retry_at=utcnow() + timedelta(seconds=settings.service_failure_retry_delay),
        )
        return JobResult(Outcome.FAILED, f"gave up after {retries} retries").as_dict()
    raise task.retry(countdown=settings.retry_backoff * 2**retries, max_retries=settings.max_retries)


@shared_task(name=TaskName.BOEFJE_RUN.value, bind=True, acks_late=True)
def run_boefje(self: Task, organisation: str, boefje_id: str, input_ooi: str | None = None) -> dict[str, Any]:
    job = get_runtime().boefje_job()
    job.dedup = deduplicator_of(get_runtime())
    result = job.run(
        uuid.UUID(self.request.id), worker_id(), organisation, boefje_id, input_ooi, node_id=current_node_id()
    )
    return _settle(self, job, result)


@shared_task(name=TaskName.NORMALIZER_RUN.value, bind=True, acks_late=True)
def run_normalizer(self: Task, organisation: str, normalizer_id: str, raw_data_id: str) -> dict[str, Any]:
    job = get_runtime().normalizer_job()
    result = job.run(
        uuid.UUID(self.request.id), worker_id(), organisation, normalizer_id, raw_data_id, node_id=current_node_id()
    )
    return _settle(self, job, result)
