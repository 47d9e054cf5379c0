"""The life of one task on a worker, with no Celery in it.

1. **start**: ``queued|dispatched → running`` (conditional). A cancelled, finished or already
   running row starts nothing: the message is acknowledged and skipped.
2. **hydrate**: the plugin (Katalogus), the input object (Octopoes), the boefje's settings.
3. **run** through the runner (soft and hard time limits come from Celery).
4. **store**: boefje → BoefjeMeta and raw files in Bytes (``error/boefje`` when the run failed);
   normalizer → one observation in Octopoes and the normalizer meta in Bytes.
5. **finish**: ``completed`` or ``failed`` with the error text.

A KAT service that fails (:class:`~kat_scheduler.clients.ServiceError`: down, an answer that
cannot be read, a refusal) is not the plugin's failure: the row goes back to ``queued`` and the
caller retries later. When the plugin already ran and only storing its output failed, the output
is kept in the row's ``data`` (``kept_output``, without the plugin's settings) and the retry,
on whichever worker, stores it without running the plugin again; an output larger than
``SCHEDULER_KEPT_OUTPUT_MAX_BYTES`` is not kept (a warning names the task and the size) and the
retry runs the plugin again. A caller that gives up calls
:meth:`Job.fail_for_good` with the service: the row fails with ``reason`` ``service failed:
<service>``, which is no run for grace periods, and the pair's schedule is due again soon.
Anything that can never succeed (unknown plugin, object gone, the plugin's own failure) fails
the row at once with a clear error.
"""

from __future__ import annotations

import base64
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

import orjson
from pydantic import BaseModel

from kat_scheduler.clients import AlreadyExists, KATClients, ServiceError
from kat_scheduler.limiting import FREE, Admission, RateLimiter, process_limiter
from kat_scheduler.models.bytes import BoefjeMeta, RawData
from kat_scheduler.models.plugins import Boefje, Normalizer
from kat_scheduler.models.tasks import SchedulerId, TaskStatus
from kat_scheduler.settings import get_settings
from kat_scheduler.storage.schedules import NewSchedule, ScheduleStore
from kat_scheduler.storage.tables import TaskRow, utcnow
from kat_scheduler.storage.tasks import TaskStore
from kat_scheduler.storage.waiting import WaitingStore
from kat_scheduler.workers.dedup import SERVED_BY, Deduplicator
from kat_scheduler.workers.runners import Runner, UnknownPlugin

logger = logging.getLogger(__name__)


class Outcome(StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"
    RETRY = "retry"
    #: Its rate limit had no room: the task waits, unpublished, for its window (no worker slot held).
    RATE_LIMITED = "rate_limited"


@dataclass(frozen=True)
class JobResult:
    outcome: Outcome
    detail: str = ""
    #: The KAT service whose failure asks for a retry (``Outcome.RETRY`` only).
    service: str | None = None

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


#: The key of a task's ``data`` that holds its plugin's output while storing it is retried.
KEPT_OUTPUT = "kept_output"


class KeptFile(BaseModel):
    name: str
    content: str  # base64
    tags: list[str]


class KeptBoefjeOutput(BaseModel):
    """A boefje run whose output is not (all) in Bytes yet. ``meta``: the BoefjeMeta without its
    ``environment`` (the plugin's settings, possibly secret, are read again from Katalogus when
    the meta has to be stored again)."""

    meta: dict[str, Any]
    meta_stored: bool = False
    status: str
    files: list[KeptFile]
    error: str | None = None


class KeptNormalizerOutput(BaseModel):
    """A normalizer run whose results are not (all) stored yet."""

    results: list[dict[str, Any]]
    version: str | None = None
    started_at: datetime
    ended_at: datetime
    observation_saved: bool = False


class _StoreFailed(Exception):
    """Storing a plugin's output failed on ``cause``; ``kept`` is what is left to store."""

    def __init__(self, cause: ServiceError, kept: BaseModel) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.kept = kept


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text[:4000]


#: What a row's ``data`` holds for a while only: an output kept while storing it is retried, and the
#: task whose run was to serve the row (deduplication) when that run died and the row runs itself.
_TRANSIENT = (KEPT_OUTPUT, SERVED_BY)


def _without_kept(data: dict[str, Any]) -> dict[str, Any] | None:
    """``data`` without a kept output or a ``served_by``, or ``None`` when it holds neither (nothing to write)."""
    if not any(key in data for key in _TRANSIENT):
        return None
    return {key: value for key, value in data.items() if key not in _TRANSIENT}


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
        max_kept_output: int | None = None,
    ) -> None:
        self.tasks = tasks
        self.clients = clients
        self.runner = runner
        self.clock = clock
        #: Runs a task may start, counting take-overs after its runner died (None: unbounded).
        self.max_attempts = max_attempts
        #: Largest output kept while storing it is retried (None: ``SCHEDULER_KEPT_OUTPUT_MAX_BYTES``
        #: of this process's settings).
        self.max_kept_output = max_kept_output

    def _kept_limit(self) -> int:
        if self.max_kept_output is None:
            self.max_kept_output = get_settings().kept_output_max_bytes
        return self.max_kept_output

    def _keep(self, task_id: uuid.UUID, row: TaskRow, kept: BaseModel) -> dict[str, Any] | None:
        """The row's data with ``kept`` in it, or ``None`` when ``kept`` is over the limit (then the
        data holds no kept output, and the retry runs the plugin again)."""
        dumped = kept.model_dump(mode="json")
        size = len(orjson.dumps(dumped))
        limit = self._kept_limit()
        if size <= limit:
            return {**row.data, KEPT_OUTPUT: dumped}
        logger.warning(
            "%s %s: its output is %d bytes, over SCHEDULER_KEPT_OUTPUT_MAX_BYTES (%d): not kept; "
            "the retry runs the plugin again",
            self.kind,
            task_id,
            size,
            limit,
        )
        return _without_kept(row.data)

    def _start(
        self, task_id: uuid.UUID, worker: str, node_id: uuid.UUID | None = None, *, now: datetime | None = None
    ) -> TaskRow | None:
        row = self.tasks.start(task_id, worker, now=now or self.clock(), node_id=node_id)
        if row is not None:
            return row
        current = self.tasks.get(task_id)
        if current is not None and current.status == TaskStatus.RUNNING and runner_is_dead(current.worker):
            # Redelivered after its worker process died on this host: run it now, not after the reaper.
            assert current.worker is not None
            row = self.tasks.take_over(
                task_id, current.worker, worker, now=self.clock(), max_attempts=self.max_attempts, node_id=node_id
            )
            if row is not None:
                logger.warning("%s %s: its runner %s died; running it again", self.kind, task_id, current.worker)
                return row
        state = "unknown to the database" if current is None else f"{current.status}"
        logger.info("%s %s not started: it is %s", self.kind, task_id, state)
        return None

    def _guard(self, row: TaskRow, body: Callable[[], None]) -> JobResult:
        """Run ``body`` and end the row as it went. Every end is conditional on this run still
        holding the row (``running`` by this worker): a row the reaper handed on meanwhile (this
        worker's node fell silent) is another run's to end, never this one's."""
        task_id = row.id
        mine = row.worker
        cleaned = _without_kept(row.data)  # a kept output is dropped once the row ends
        try:
            body()
        except (_StoreFailed, ServiceError) as exc:
            cause = exc.cause if isinstance(exc, _StoreFailed) else exc
            data = self._keep(task_id, row, exc.kept) if isinstance(exc, _StoreFailed) else None
            if not self.tasks.requeue(task_id, error=_error_text(cause), now=self.clock(), data=data, by_worker=mine):
                return self._handed_on(task_id)
            kept = "; its output is kept, only storing it is retried" if data and KEPT_OUTPUT in data else ""
            logger.warning("%s %s: %s; will retry%s", self.kind, task_id, cause, kept)
            return JobResult(Outcome.RETRY, str(cause), service=cause.service)
        except (_Permanent, UnknownPlugin) as exc:
            error = str(exc) if isinstance(exc, _Permanent) else _error_text(exc)
            if not self.tasks.finish(
                task_id, TaskStatus.FAILED, error=error, now=self.clock(), data=cleaned, by_worker=mine
            ):
                return self._handed_on(task_id)
            logger.error("%s %s failed: %s", self.kind, task_id, error)
            return JobResult(Outcome.FAILED, error)
        if not self.tasks.finish(task_id, TaskStatus.COMPLETED, now=self.clock(), data=cleaned, by_worker=mine):
            return self._handed_on(task_id)
        return JobResult(Outcome.COMPLETED)

    def _handed_on(self, task_id: uuid.UUID) -> JobResult:
        current = self.tasks.get(task_id)
        state = "gone" if current is None else f"{current.status} (worker {current.worker})"
        logger.warning(
            "%s %s: its row was handed on while this run went on (now %s); not ending it", self.kind, task_id, state
        )
        return JobResult(Outcome.SKIPPED, "handed on")

    def fail_for_good(
        self,
        task_id: uuid.UUID,
        error: str,
        *,
        service: str | None = None,
        schedules: ScheduleStore | None = None,
        retry_at: datetime | None = None,
    ) -> None:
        """After the last retry: give up on a task that is back in ``queued``.

        With ``service`` (the KAT service that kept failing) the row fails as no run of its plugin
        (``reason`` names the service; :meth:`TaskStore.last_runs` leaves it out) and, with
        ``schedules`` and ``retry_at``, a boefje pair's schedule is enabled with ``retry_at`` as its
        deadline, so the tick, due schedules and events all leave it alone until then and queue it
        after (not a grace period later). A normalizer task, which only an event makes, is queued
        again by the reaper (:meth:`TaskStore.requeue_service_failed`).
        """
        now = self.clock()
        if service is None:
            self.tasks.transition(
                task_id,
                [TaskStatus.QUEUED, TaskStatus.DISPATCHED, TaskStatus.RUNNING],
                TaskStatus.FAILED,
                error=error,
                ended_at=now,
            )
            return
        current = self.tasks.get(task_id)
        cleaned = None if current is None else _without_kept(current.data)
        row = self.tasks.fail_for_service(task_id, service, error, now=now, data=cleaned)
        if row is not None and row.scheduler_id == SchedulerId.NORMALIZER:
            logger.warning(
                "%s %s: gave up, %s failed; the reaper queues it again after SCHEDULER_SERVICE_FAILURE_RETRY_DELAY",
                self.kind,
                task_id,
                service,
            )
            return
        if row is None or schedules is None or retry_at is None or row.scheduler_id != SchedulerId.BOEFJE:
            return
        boefje = row.data.get("boefje") or {"id": row.plugin_id}
        schedules.upsert(
            [
                NewSchedule(
                    scheduler_id=SchedulerId.BOEFJE,
                    organisation=row.organisation,
                    plugin_id=row.plugin_id,
                    input_ooi=row.input_ooi,
                    hash=row.hash,
                    data={"boefje": boefje, "input_ooi": row.input_ooi, "organization": row.organisation},
                    deadline_at=retry_at,
                )
            ],
            now=now,
        )
        logger.warning(
            "%s %s: gave up, %s failed; its pair is due again at %s", self.kind, task_id, service, retry_at.isoformat()
        )


class BoefjeJob(Job):
    kind = "boefje task"
    #: Admits starts against rate limits (``None``: this process's, from its settings).
    limiter: RateLimiter | None = None
    #: Serves other organisations holding the object with the same run (``SCHEDULER_DEDUPLICATE``).
    dedup: Deduplicator | None = None

    def run(
        self,
        task_id: uuid.UUID,
        worker: str,
        organisation: str,
        boefje_id: str,
        input_ooi: str | None,
        *,
        node_id: uuid.UUID | None = None,
    ) -> JobResult:
        admission = self._admit(organisation, boefje_id, input_ooi)
        if not admission.allowed:
            return self._wait(task_id, admission)
        row = self._start(task_id, worker, node_id, now=admission.at)
        if row is None:
            return JobResult(Outcome.SKIPPED, "not runnable")
        return self._guard(row, lambda: self._run(row, organisation, boefje_id, input_ooi))

    def _admit(self, organisation: str, boefje_id: str, input_ooi: str | None) -> Admission:
        """Right before the start: whether the boefje's rate limit has room for it (counted now,
        over every worker; the row's ``started_at`` is that moment). A Katalogus that fails here
        fails the run below instead."""
        limiter = self.limiter if self.limiter is not None else process_limiter()
        if limiter is None:
            return FREE
        try:
            plugin = limiter.plugin(
                organisation, boefje_id, lambda: self.clients.katalogus.plugin(organisation, boefje_id)
            )
        except ServiceError:
            return FREE
        return limiter.admit(boefje_id, plugin, organisation, input_ooi)

    def _wait(self, task_id: uuid.UUID, admission: Admission) -> JobResult:
        """Put the task back to wait for its window: no message, no worker slot, its priority kept."""
        assert admission.limit is not None and admission.group is not None and admission.until is not None
        waiting = WaitingStore(self.tasks.engine)
        if not waiting.put_back(task_id, limit=admission.limit.text, group=admission.group, until=admission.until):
            logger.info("%s %s not started: it no longer waits for a worker", self.kind, task_id)
            return JobResult(Outcome.SKIPPED, "not runnable")
        detail = (
            f"rate limit {admission.limit.text} of {admission.group} reached: waits until {admission.until.isoformat()}"
        )
        logger.info("%s %s: %s", self.kind, task_id, detail)
        return JobResult(Outcome.RATE_LIMITED, detail)

    def _run(self, row: TaskRow, organisation: str, boefje_id: str, input_ooi: str | None) -> None:
        task_id = row.id
        kept = row.data.get(KEPT_OUTPUT)
        if kept is not None:
            logger.info(
                "boefje task %s: storing the output of its earlier run (the boefje does not run again)", task_id
            )
            self._store(organisation, boefje_id, KeptBoefjeOutput.model_validate(kept), environment=None)
            return
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
        serving = (
            None if self.dedup is None or input_ooi is None else self.dedup.claim(row, plugin, input_ooi, environment)
        )
        started = self.clock()
        meta = {
            "id": str(task_id),
            "started_at": started.isoformat(),
            "boefje": {"id": plugin.id, "version": plugin.version},
            "input_ooi": input_ooi,
            "arguments": {"input": ooi_json} if ooi_json is not None else {},
            "organization": organisation,
            "runnable_hash": None,
        }
        tags = {f"boefje/{plugin.id}"} | ({f"boefje/{plugin.id}-{plugin.version}"} if plugin.version else set())
        status = "COMPLETED"
        error: str | None = None
        try:
            output = self.runner.run_boefje(plugin.id, {**meta, "environment": environment}, environment)
            files = [(str(i), content, sorted(tags | mime)) for i, (mime, content) in enumerate(output)]
        except UnknownPlugin as exc:
            if serving is not None:
                serving.abandon(_error_text(exc))
            raise
        except Exception as exc:  # the plugin's own failure: stored in Bytes, then the row fails
            error = _error_text(exc)
            status = "FAILED"
            files = [("error", traceback.format_exc().encode(), sorted(tags | {"error/boefje"}))]
        meta["ended_at"] = self.clock().isoformat()
        result = KeptBoefjeOutput(
            meta=meta,
            status=status,
            files=[
                KeptFile(name=name, content=base64.b64encode(content).decode("ascii"), tags=file_tags)
                for name, content, file_tags in files
            ],
            error=None if error is None else f"boefje {plugin.id} failed: {error}",
        )
        if serving is not None:
            serving.store(meta, status, files, result.error)
        self._store(organisation, boefje_id, result, environment=environment)

    def _store(
        self, organisation: str, boefje_id: str, output: KeptBoefjeOutput, environment: dict[str, str] | None
    ) -> None:
        """Store a run's meta and raw files in Bytes; on a service failure, raise what is left to store."""
        try:
            if not output.meta_stored:
                if environment is None:  # a retry: the settings were not kept
                    environment = self.clients.katalogus.boefje_settings(organisation, boefje_id)
                self._save_meta(BoefjeMeta.model_validate({**output.meta, "environment": environment}))
                output = output.model_copy(update={"meta_stored": True})
            if output.files:
                files = [(f.name, base64.b64decode(f.content), f.tags) for f in output.files]
                self.clients.bytes.save_raw(uuid.UUID(str(output.meta["id"])), files, status=output.status)
        except ServiceError as exc:
            raise _StoreFailed(exc, output) from exc
        if output.error is not None:
            raise _Permanent(output.error)

    def _save_meta(self, meta: BoefjeMeta) -> None:
        try:
            self.clients.bytes.save_boefje_meta(meta)
        except AlreadyExists:
            logger.info("boefje meta %s was already stored (a retry): keeping it", meta.id)


class NormalizerJob(Job):
    kind = "normalizer task"

    def run(
        self,
        task_id: uuid.UUID,
        worker: str,
        organisation: str,
        normalizer_id: str,
        raw_data_id: str,
        *,
        node_id: uuid.UUID | None = None,
    ) -> JobResult:
        row = self._start(task_id, worker, node_id)
        if row is None:
            return JobResult(Outcome.SKIPPED, "not runnable")
        return self._guard(row, lambda: self._run(row, organisation, normalizer_id, raw_data_id))

    def _run(self, row: TaskRow, organisation: str, normalizer_id: str, raw_data_id: str) -> None:
        task_id = row.id
        raw_data = RawData.model_validate(row.data["raw_data"])
        kept = row.data.get(KEPT_OUTPUT)
        if kept is not None:
            logger.info("normalizer task %s: storing the results of its earlier run (it does not run again)", task_id)
            self._store(task_id, organisation, normalizer_id, raw_data, KeptNormalizerOutput.model_validate(kept))
            return
        plugin = self.clients.katalogus.plugin(organisation, normalizer_id)
        if not isinstance(plugin, Normalizer):
            raise _Permanent(f"unknown normalizer {normalizer_id!r} in organisation {organisation!r}")
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
        output = KeptNormalizerOutput(
            results=results, version=plugin.version, started_at=started, ended_at=self.clock()
        )
        self._store(task_id, organisation, plugin.id, raw_data, output)

    def _store(
        self,
        task_id: uuid.UUID,
        organisation: str,
        normalizer_id: str,
        raw_data: RawData,
        output: KeptNormalizerOutput,
    ) -> None:
        """The observation in Octopoes, then the normalizer meta in Bytes; on a service failure,
        raise what is left to store."""
        meta = raw_data.boefje_meta
        try:
            if meta.input_ooi and not output.observation_saved:
                self.clients.octopoes.save_observation(
                    organisation,
                    method=normalizer_id,
                    source=meta.input_ooi,
                    source_method=meta.boefje.id,
                    task_id=task_id,
                    valid_time=output.started_at,
                    result=output.results,
                )
                output = output.model_copy(update={"observation_saved": True})
            self._save_meta(
                {
                    "id": str(task_id),
                    "raw_data": raw_data.model_dump(mode="json"),
                    "normalizer": {"id": normalizer_id, "version": output.version},
                    "started_at": output.started_at.isoformat(),
                    "ended_at": output.ended_at.isoformat(),
                }
            )
        except ServiceError as exc:
            raise _StoreFailed(exc, output) from exc

    def _save_meta(self, meta: dict[str, Any]) -> None:
        try:
            self.clients.bytes.save_normalizer_meta(meta)
        except AlreadyExists:
            logger.info("normalizer meta %s was already stored (a retry): keeping it", meta["id"])
