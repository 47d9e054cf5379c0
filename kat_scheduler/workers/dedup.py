"""Cross-organisation deduplication: a boefje on an object several organisations hold runs once.

Off unless ``SCHEDULER_DEDUPLICATE`` is set; it happens on the worker, at run time, so planning
(the tick, due schedules, events) is exactly as without it and costs no extra call.

When a boefje task of organisation A starts on object O (and A's plugin says ``deduplicate:
true``), the worker, before running the boefje:

1. asks Katalogus for the organisations (kept for ``SCHEDULER_KATALOGUS_CACHE_TTL``; one whose own
   ``deduplicate`` is false takes no part, either way) and Octopoes once which of them hold O
   (``GET /object-clients``), each with its own view of O (its level);
2. decides per sibling organisation B with the producers' rules (:func:`why_not_served`, pure): B's
   boefje of the same id (from the cached plugin lists) is enabled with ``deduplicate: true``, at
   the same version, B's level of O clears it, it is not a ``run_on`` boefje; B's schedule of the
   pair is not disabled, nor due later (then only B's queued task is taken over); the due rule
   (:func:`~kat_scheduler.rules.is_due`) on B's own history (our last run of B's pair, else Bytes'
   newest run as a tick kept it in ``bytes_runs``) says due, so a pair within its grace period,
   before its cron time or running in Bytes is not served; and B's boefje settings are A's (a run
   with other settings would be another run);
3. takes B's hash (:meth:`~kat_scheduler.storage.TaskStore.claim_served`): B's queued task is taken
   over, or a row is inserted for B; both ``running`` under this worker with ``served_by`` (A's
   task id) in their data. B's task that a worker received or runs already is left alone: it runs
   itself.

After the one run, the BoefjeMeta (its own id: B's task id, B's view of O as input) and the raw
files are stored in Bytes for each served organisation, so each gets its own
``raw_file_received`` events and normalizer tasks; then B's row ends as A's run did (completed,
or failed with the plugin's error). A sibling whose storing fails on a KAT service is failed as
no run (``reason`` ``service failed: …``) and its pair is due again after
``SCHEDULER_SERVICE_FAILURE_RETRY_DELAY``, as a task given up on for a failing service. A worker that dies
mid-run leaves the served rows to the reaper, as its own.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from kat_scheduler.clients import AlreadyExists, KATClients, ServiceError
from kat_scheduler.clients.plugin_cache import PluginCache
from kat_scheduler.models.bytes import BoefjeMeta
from kat_scheduler.models.ooi import OOI
from kat_scheduler.models.plugins import Boefje
from kat_scheduler.models.tasks import SchedulerId, TaskStatus
from kat_scheduler.rules import BytesRun, NotDueReason, SkipReason, boefje_facts, is_due, static_skip
from kat_scheduler.rules.identity import boefje_task_hash
from kat_scheduler.rules.payloads import boefje_payload
from kat_scheduler.settings import Settings
from kat_scheduler.storage.bytes_runs import BytesRunStore
from kat_scheduler.storage.schedules import NewSchedule, ScheduleStore
from kat_scheduler.storage.tables import TaskRow, utcnow
from kat_scheduler.storage.tasks import NewTask, TaskStore

if TYPE_CHECKING:
    from kat_scheduler.runtime.resources import Runtime

logger = logging.getLogger(__name__)

#: ``tasks.reason`` of a row inserted for an organisation a run served (one taken over keeps its own).
SERVED_REASON = "deduplicated"
#: The key of a served task's ``data`` that names the task whose run served it.
SERVED_BY = "served_by"


class NotServed(StrEnum):
    """Why a sibling organisation is not served by a run."""

    UNKNOWN_BOEFJE = "boefje unknown there"
    NO_DEDUPLICATE = "its plugin says deduplicate: false"
    NOT_ENABLED = "not enabled"
    CLEARANCE = "scan level too low"
    NOT_CONSUMED = "type not consumed"
    RUN_ON_ONLY = "runs on events only"
    OTHER_VERSION = "another version of the boefje"
    OTHER_SETTINGS = "other boefje settings"
    SCHEDULE_DISABLED = "its schedule is disabled"
    SCHEDULED = "its schedule is due later"
    GRACE = "within grace period"
    CRON = "before its next cron time"
    RUNNING = "running in Bytes"
    LIVE = "its own task was received or runs"


_STATIC: dict[SkipReason, NotServed] = {
    SkipReason.NOT_ENABLED: NotServed.NOT_ENABLED,
    SkipReason.CLEARANCE: NotServed.CLEARANCE,
    SkipReason.RUN_ON_ONLY: NotServed.RUN_ON_ONLY,
}
_NOT_DUE: dict[NotDueReason, NotServed] = {
    NotDueReason.GRACE: NotServed.GRACE,
    NotDueReason.CRON: NotServed.CRON,
    NotDueReason.RUNNING: NotServed.RUNNING,
}


@dataclass(frozen=True, slots=True)
class SiblingFacts:
    """What is known of one sibling organisation's pair at ``now``: its boefje of the same id
    (``None``: unknown there), its view of the object, its schedule (enabled: ``None`` when it has
    none; its deadline), its history (our own last run's end; Bytes' newest run as last seen)."""

    boefje: Boefje | None
    ooi: OOI
    schedule_enabled: bool | None
    last_ended: datetime | None
    bytes_run: BytesRun | None
    schedule_deadline: datetime | None = None


def why_not_served(
    ours: Boefje, sibling: SiblingFacts, *, now: datetime, default_grace: timedelta, stall_age: timedelta
) -> NotServed | None:
    """Why a run of ``ours`` may not serve ``sibling`` at ``now``, or ``None`` when it may (pure)."""
    theirs = sibling.boefje
    if theirs is None:
        return NotServed.UNKNOWN_BOEFJE
    if not ours.deduplicate or not theirs.deduplicate:
        return NotServed.NO_DEDUPLICATE
    skip = static_skip(theirs, sibling.ooi, periodic=True)
    if skip is not None:
        return _STATIC.get(skip, NotServed.NOT_CONSUMED)
    if theirs.version != ours.version:
        return NotServed.OTHER_VERSION
    if sibling.schedule_enabled is False:
        return NotServed.SCHEDULE_DISABLED
    if sibling.schedule_enabled and sibling.schedule_deadline is not None and sibling.schedule_deadline > now:
        return NotServed.SCHEDULED  # the schedule's: its queued task, if any, may still be taken over
    facts = boefje_facts(
        theirs,
        now=now,
        last_ended=sibling.last_ended,
        bytes_run=sibling.bytes_run if sibling.last_ended is None else None,
        default_grace=default_grace,
        stall_age=stall_age,
    )
    decision = is_due(facts)
    if not decision.due:
        return _NOT_DUE[NotDueReason(decision.reason)]
    return None


@dataclass(frozen=True, slots=True)
class Served:
    """A sibling organisation a run serves: its task (taken over, or inserted), its view of the object."""

    organisation: str
    task_id: uuid.UUID
    taken_over: bool
    ooi: dict[str, Any]


@dataclass
class Serving:
    """The siblings one run serves; :meth:`store` once the boefje ran, :meth:`abandon` if it cannot."""

    tasks: TaskStore
    clients: KATClients
    served_by: uuid.UUID
    worker: str | None
    environment: dict[str, str]
    served: list[Served]
    clock: Callable[[], datetime] = utcnow
    #: Where a served pair whose storing failed gets its retry deadline, and how far off it is.
    schedules: ScheduleStore | None = None
    retry_delay: timedelta = timedelta(minutes=5)
    _ended: set[uuid.UUID] = field(default_factory=set)

    @property
    def organisations(self) -> list[str]:
        return [s.organisation for s in self.served]

    def store(
        self,
        meta: Mapping[str, Any],
        status: str,
        files: Sequence[tuple[str, bytes, Sequence[str]]],
        error: str | None,
    ) -> None:
        """Store the run (``meta`` of the serving task, its raw ``files``) for each served
        organisation, then end its row as the run ended."""
        for sibling in self.served:
            if sibling.task_id in self._ended:
                continue
            own = {
                **meta,
                "id": str(sibling.task_id),
                "organization": sibling.organisation,
                "arguments": {"input": sibling.ooi},
                "environment": self.environment,
            }
            try:
                with contextlib.suppress(AlreadyExists):  # a retry: kept
                    self.clients.bytes.save_boefje_meta(BoefjeMeta.model_validate(own))
                self.clients.bytes.save_raw(sibling.task_id, list(files), status=status)
            except ServiceError as exc:
                self._fail_for_service(sibling, exc)
                continue
            self._end(sibling, None if error is None else f"served by task {self.served_by}: {error}")

    def _fail_for_service(self, sibling: Served, exc: ServiceError) -> None:
        """Storing the run for ``sibling`` failed: its row fails as no run, and its pair is due again
        after the retry delay (as a task given up on for a failing service), not a grace period later."""
        self._ended.add(sibling.task_id)
        now = self.clock()
        row = self.tasks.fail_for_service(
            sibling.task_id,
            exc.service,
            f"served by task {self.served_by}: storing its output for this organisation failed: {exc}",
            now=now,
        )
        retry_at = now + self.retry_delay
        if row is not None and self.schedules is not None:
            boefje = row.data.get("boefje") or {"id": row.plugin_id}
            self.schedules.upsert(
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
            "boefje task %s: storing its run for %s (task %s) failed: %s; that pair is due again at %s",
            self.served_by,
            sibling.organisation,
            sibling.task_id,
            exc,
            retry_at.isoformat(),
        )

    def abandon(self, error: str) -> None:
        """The serving run could not run its boefje: each served row not ended yet fails with ``error``."""
        for sibling in self.served:
            if sibling.task_id not in self._ended:
                self._end(sibling, f"served by task {self.served_by}, which failed: {error}")

    def _end(self, sibling: Served, error: str | None) -> None:
        self._ended.add(sibling.task_id)
        status = TaskStatus.COMPLETED if error is None else TaskStatus.FAILED
        if not self.tasks.finish(sibling.task_id, status, error=error, now=self.clock(), by_worker=self.worker):
            logger.warning(
                "boefje task %s: the row of %s it served (task %s) was handed on meanwhile; not ending it",
                self.served_by,
                sibling.organisation,
                sibling.task_id,
            )


class Deduplicator:
    """Finds, judges and claims the sibling organisations a boefje run serves (see the module)."""

    def __init__(
        self,
        tasks: TaskStore,
        schedules: ScheduleStore,
        bytes_runs: BytesRunStore,
        clients: KATClients,
        plugins: PluginCache,
        *,
        default_grace: timedelta,
        stall_age: timedelta,
        organisations_ttl: float,
        retry_delay: timedelta = timedelta(minutes=5),
        clock: Callable[[], datetime] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tasks = tasks
        self.schedules = schedules
        self.bytes_runs = bytes_runs
        self.clients = clients
        self.plugins = plugins
        self.default_grace = default_grace
        self.stall_age = stall_age
        self.organisations_ttl = organisations_ttl
        self.retry_delay = retry_delay
        self.clock = clock
        self.monotonic = monotonic
        self._lock = threading.Lock()
        self._organisations: tuple[float, list[str]] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, engine: Engine, clients: KATClients) -> Deduplicator:
        return cls(
            TaskStore(engine),
            ScheduleStore(engine),
            BytesRunStore(engine),
            clients,
            PluginCache(clients.katalogus, settings.katalogus_cache_ttl),
            default_grace=timedelta(seconds=settings.grace_period),
            stall_age=timedelta(seconds=settings.effective_bytes_stall_age),
            organisations_ttl=settings.katalogus_cache_ttl,
            retry_delay=timedelta(seconds=settings.service_failure_retry_delay),
        )

    def organisations(self) -> list[str]:
        """Katalogus' organisations that take part in deduplication (all but those whose own
        ``deduplicate`` is false), asked again after ``organisations_ttl`` seconds."""
        now = self.monotonic()
        with self._lock:
            cached = self._organisations
        if cached is not None and now - cached[0] < self.organisations_ttl:
            return cached[1]
        listed = self.clients.katalogus.organisations()
        found = sorted(
            org for org, record in listed.items() if (record.model_extra or {}).get("deduplicate") is not False
        )
        with self._lock:
            self._organisations = (now, found)
        return found

    def claim(self, row: TaskRow, boefje: Boefje, input_ooi: str, environment: dict[str, str]) -> Serving | None:
        """The siblings a run of ``row`` (``boefje`` on ``input_ooi`` with ``environment``) serves,
        their hashes taken; ``None`` when it serves none. A KAT service that fails here costs only
        the deduplication: the run goes on for its own organisation."""
        if not boefje.deduplicate or row.scheduler_id != SchedulerId.BOEFJE:
            return None
        now = self.clock()
        try:
            taking_part = self.organisations()
            if row.organisation not in taking_part:
                return None
            others = [org for org in taking_part if org != row.organisation]
            holders = self.clients.octopoes.object_clients(input_ooi, others, valid_time=now) if others else {}
        except ServiceError as exc:
            logger.warning("boefje task %s: not deduplicated, %s failed: %s", row.id, exc.service, exc)
            return None
        holders.pop(row.organisation, None)
        if not holders:
            return None
        hashes = {org: boefje_task_hash(boefje.id, org, input_ooi) for org in holders}
        last = self.tasks.last_runs(hashes.values())
        seen = self.bytes_runs.newest([h for h in hashes.values() if h not in last])
        schedules = self.schedules.states(hashes.values())
        served: list[Served] = []
        refused: list[str] = []
        for org in sorted(holders):
            hash_ = hashes[org]
            schedule = schedules.get(hash_)
            try:
                theirs = next((b for b in self.plugins.boefjes(org) if b.id == boefje.id), None)
                facts = SiblingFacts(
                    theirs,
                    holders[org],
                    None if schedule is None else schedule.enabled,
                    last.get(hash_),
                    seen.get(hash_),
                    None if schedule is None else schedule.deadline_at,
                )
                reason = why_not_served(
                    boefje, facts, now=now, default_grace=self.default_grace, stall_age=self.stall_age
                )
                wanted = reason is None or reason == NotServed.SCHEDULED
                if wanted and self.clients.katalogus.boefje_settings(org, boefje.id) != environment:
                    reason = NotServed.OTHER_SETTINGS
            except ServiceError as exc:
                logger.warning("boefje task %s: %s not served, %s failed: %s", row.id, org, exc.service, exc)
                continue
            if reason is not None and reason != NotServed.SCHEDULED:
                refused.append(f"{org} ({reason})")
                continue
            assert theirs is not None
            task_id = uuid.uuid4()
            task = NewTask(
                id=task_id,
                scheduler_id=SchedulerId.BOEFJE,
                type=row.type,
                organisation=org,
                plugin_id=boefje.id,
                input_ooi=input_ooi,
                hash=hash_,
                band=row.band,
                priority=row.priority,
                data=boefje_payload(task_id, theirs, org, input_ooi),
                reason=SERVED_REASON,
            )
            claimed = self.tasks.claim_served(
                task, row.id, row.worker or "worker", now, node_id=row.node_id, insert=reason is None
            )
            if claimed is None:
                refused.append(f"{org} ({reason or NotServed.LIVE})")
                continue
            served.append(Served(org, claimed[0], claimed[1], holders[org].model_dump(mode="json")))
        if refused:
            logger.info("boefje task %s: not serving %s", row.id, ", ".join(refused))
        if not served:
            return None
        logger.info(
            "boefje task %s: one run of %s on %s serves %s too (deduplicated)",
            row.id,
            boefje.id,
            input_ooi,
            ", ".join(f"{s.organisation} (task {s.task_id}{', taken over' if s.taken_over else ''})" for s in served),
        )
        return Serving(
            self.tasks,
            self.clients,
            row.id,
            row.worker,
            dict(environment),
            served,
            self.clock,
            schedules=self.schedules,
            retry_delay=self.retry_delay,
        )


_per_runtime: weakref.WeakKeyDictionary[Runtime, Deduplicator] = weakref.WeakKeyDictionary()
_per_runtime_lock = threading.Lock()


def deduplicator_of(runtime: Runtime) -> Deduplicator | None:
    """The process's :class:`Deduplicator` (its plugin lists and organisations cached), or ``None``
    when ``SCHEDULER_DEDUPLICATE`` is off. One per :class:`Runtime`: a forked child gets its own."""
    if not runtime.settings.deduplicate:
        return None
    with _per_runtime_lock:
        found = _per_runtime.get(runtime)
        if found is None:
            found = _per_runtime[runtime] = Deduplicator.from_settings(
                runtime.settings, runtime.engine, runtime.clients
            )
        return found
