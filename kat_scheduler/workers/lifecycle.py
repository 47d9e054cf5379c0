"""The life of one task on a worker, with no Celery in it.

1. **start**: ``queued|dispatched → running`` (conditional). A cancelled, finished or already
   running row starts nothing: the message is acknowledged and skipped.
2. **hydrate**: the plugin (Katalogus), the input object (Octopoes), the boefje's settings.
3. **run** through the runner (soft and hard time limits come from Celery).
4. **store**: boefje → BoefjeMeta and raw files in Bytes (``error/boefje`` when the run failed);
   normalizer → one observation in Octopoes and the normalizer meta in Bytes.
5. **finish**: ``completed`` or ``failed`` with the error text.

A service that is down (:class:`~kat_scheduler.clients.ServiceUnavailable`) puts the row back to
``queued`` and asks the caller to retry later; anything that can never succeed (unknown plugin,
object gone, a runner crash) fails the row at once with a clear error.
"""

from __future__ import annotations

import logging
import os
import socket
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from kat_scheduler.clients import KATClients, ServiceError, ServiceUnavailable
from kat_scheduler.models.bytes import BoefjeMeta, RawData
from kat_scheduler.models.plugins import Boefje, Normalizer
from kat_scheduler.models.tasks import TaskStatus
from kat_scheduler.storage.tables import TaskRow, utcnow
from kat_scheduler.storage.tasks import TaskStore
from kat_scheduler.workers.runners import Runner, UnknownPlugin

logger = logging.getLogger(__name__)


class Outcome(StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"
    RETRY = "retry"


@dataclass(frozen=True)
class JobResult:
    outcome: Outcome
    detail: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"outcome": self.outcome.value, "detail": self.detail}


def worker_id() -> str:
    """This process, as recorded in ``tasks.worker``: ``host:pid`` of the process running the task."""
    return f"{socket.gethostname()}:{os.getpid()}"


def runner_is_dead(worker: str | None) -> bool:
    """True only when ``worker`` is a process on this host that no longer exists."""
    if not worker or ":" not in worker:
        return False
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class _Permanent(Exception):
    """Fail the row with this message."""


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text[:4000]


class Job:
    kind = "task"

    def __init__(
        self,
        tasks: TaskStore,
        clients: KATClients,
        runner: Runner,
        clock: Callable[[], datetime] = utcnow,
        *,
        max_attempts: int | None = None,
    ) -> None:
        self.tasks = tasks
        self.clients = clients
        self.runner = runner
        self.clock = clock
        #: Runs a task may start, counting take-overs after its runner died (None: unbounded).
        self.max_attempts = max_attempts

    def _start(self, task_id: uuid.UUID, worker: str) -> TaskRow | None:
        row = self.tasks.start(task_id, worker, now=self.clock())
        if row is not None:
            return row
        current = self.tasks.get(task_id)
        if current is not None and current.status == TaskStatus.RUNNING and runner_is_dead(current.worker):
            # Redelivered after its worker process died on this host: run it now, not after the reaper.
            assert current.worker is not None
            row = self.tasks.take_over(
                task_id, current.worker, worker, now=self.clock(), max_attempts=self.max_attempts
            )
            if row is not None:
                logger.warning("%s %s: its runner %s died; running it again", self.kind, task_id, current.worker)
                return row
        state = "unknown to the database" if current is None else f"{current.status}"
        logger.info("%s %s not started: it is %s", self.kind, task_id, state)
        return None

    def _guard(self, task_id: uuid.UUID, body: Callable[[], None]) -> JobResult:
        try:
            body()
        except ServiceUnavailable as exc:
            self.tasks.requeue(task_id, error=_error_text(exc), now=self.clock())
            logger.warning("%s %s: %s; will retry", self.kind, task_id, exc)
            return JobResult(Outcome.RETRY, str(exc))
        except (_Permanent, UnknownPlugin, ServiceError) as exc:
            error = str(exc) if isinstance(exc, _Permanent) else _error_text(exc)
            self.tasks.finish(task_id, TaskStatus.FAILED, error=error, now=self.clock())
            logger.error("%s %s failed: %s", self.kind, task_id, error)
            return JobResult(Outcome.FAILED, error)
        self.tasks.finish(task_id, TaskStatus.COMPLETED, now=self.clock())
        return JobResult(Outcome.COMPLETED)

    def fail_for_good(self, task_id: uuid.UUID, error: str) -> None:
        """After the last retry: give up on a task that is back in ``queued``."""
        self.tasks.transition(
            task_id,
            [TaskStatus.QUEUED, TaskStatus.DISPATCHED, TaskStatus.RUNNING],
            TaskStatus.FAILED,
            error=error,
            ended_at=self.clock(),
        )


class BoefjeJob(Job):
    kind = "boefje task"

    def run(
        self, task_id: uuid.UUID, worker: str, organisation: str, boefje_id: str, input_ooi: str | None
    ) -> JobResult:
        row = self._start(task_id, worker)
        if row is None:
            return JobResult(Outcome.SKIPPED, "not runnable")
        return self._guard(task_id, lambda: self._run(task_id, organisation, boefje_id, input_ooi))

    def _run(self, task_id: uuid.UUID, organisation: str, boefje_id: str, input_ooi: str | None) -> None:
        plugin = self.clients.katalogus.plugin(organisation, boefje_id)
        if not isinstance(plugin, Boefje):
            raise _Permanent(f"unknown boefje {boefje_id!r} in organisation {organisation!r}")
        ooi_json: dict[str, Any] | None = None
        if input_ooi is not None:
            ooi = self.clients.octopoes.get_object(organisation, input_ooi)
            if ooi is None:
                raise _Permanent(f"input object {input_ooi!r} no longer exists in {organisation!r}")
            ooi_json = ooi.model_dump(mode="json")
        environment = self.clients.katalogus.boefje_settings(organisation, boefje_id)
        started = self.clock()
        meta = {
            "id": str(task_id),
            "started_at": started.isoformat(),
            "boefje": {"id": plugin.id, "version": plugin.version},
            "input_ooi": input_ooi,
            "arguments": {"input": ooi_json} if ooi_json is not None else {},
            "organization": organisation,
            "runnable_hash": None,
            "environment": environment,
        }
        tags = {f"boefje/{plugin.id}"} | ({f"boefje/{plugin.id}-{plugin.version}"} if plugin.version else set())
        status = "COMPLETED"
        error: str | None = None
        try:
            output = self.runner.run_boefje(plugin.id, meta, environment)
            files = [(str(i), content, sorted(tags | mime)) for i, (mime, content) in enumerate(output)]
        except UnknownPlugin:
            raise
        except Exception as exc:  # the plugin's own failure: stored in Bytes, then the row fails
            error = _error_text(exc)
            status = "FAILED"
            files = [("error", traceback.format_exc().encode(), sorted(tags | {"error/boefje"}))]
        meta["ended_at"] = self.clock().isoformat()
        record = BoefjeMeta.model_validate(meta)
        self._save_meta(record)
        if files:
            self.clients.bytes.save_raw(record.id, files, status=status)
        if error is not None:
            raise _Permanent(f"boefje {plugin.id} failed: {error}")

    def _save_meta(self, meta: BoefjeMeta) -> None:
        from kat_scheduler.clients import AlreadyExists

        try:
            self.clients.bytes.save_boefje_meta(meta)
        except AlreadyExists:
            logger.info("boefje meta %s was already stored (a retry): keeping it", meta.id)


class NormalizerJob(Job):
    kind = "normalizer task"

    def run(
        self, task_id: uuid.UUID, worker: str, organisation: str, normalizer_id: str, raw_data_id: str
    ) -> JobResult:
        row = self._start(task_id, worker)
        if row is None:
            return JobResult(Outcome.SKIPPED, "not runnable")
        return self._guard(task_id, lambda: self._run(task_id, row, organisation, normalizer_id, raw_data_id))

    def _run(self, task_id: uuid.UUID, row: TaskRow, organisation: str, normalizer_id: str, raw_data_id: str) -> None:
        plugin = self.clients.katalogus.plugin(organisation, normalizer_id)
        if not isinstance(plugin, Normalizer):
            raise _Permanent(f"unknown normalizer {normalizer_id!r} in organisation {organisation!r}")
        raw_data = RawData.model_validate(row.data["raw_data"])
        raw = self.clients.bytes.get_raw(raw_data_id)
        if raw is None:
            raise _Permanent(f"raw file {raw_data_id} no longer exists in Bytes")
        meta = raw_data.boefje_meta
        input_ooi: dict[str, Any] = dict((meta.arguments or {}).get("input") or {})
        if not input_ooi and meta.input_ooi:
            ooi = self.clients.octopoes.get_object(organisation, meta.input_ooi)
            if ooi is None:
                raise _Permanent(f"input object {meta.input_ooi!r} no longer exists in {organisation!r}")
            input_ooi = ooi.model_dump(mode="json")
        started = self.clock()
        try:
            results = self.runner.run_normalizer(plugin.id, input_ooi, raw)
        except UnknownPlugin:
            raise
        except Exception as exc:
            raise _Permanent(f"normalizer {plugin.id} failed: {_error_text(exc)}") from exc
        if meta.input_ooi:
            self.clients.octopoes.save_observation(
                organisation,
                method=plugin.id,
                source=meta.input_ooi,
                source_method=meta.boefje.id,
                task_id=task_id,
                valid_time=started,
                result=results,
            )
        self.clients.bytes.save_normalizer_meta(
            {
                "id": str(task_id),
                "raw_data": raw_data.model_dump(mode="json"),
                "normalizer": {"id": plugin.id, "version": plugin.version},
                "started_at": started.isoformat(),
                "ended_at": self.clock().isoformat(),
            }
        )
