"""The status report: one pydantic model per section, each with the ``error`` that replaced its data."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, computed_field

from kat_scheduler.models.producers import RunOutcome
from kat_scheduler.models.tasks import TaskStatus


class Section(BaseModel):
    """A part of the report; ``error`` says why it could not be collected (its data is then null)."""

    error: str | None = None


class DatabaseSection(Section):
    url: str
    revision: str | None = None
    head: str | None = None
    up_to_date: bool | None = None


class QueueDepth(BaseModel):
    queue: str
    #: Messages waiting on the broker (not those delivered to a worker and not yet acked).
    messages: int | None = None
    #: Messages per band (0 most urgent); Redis only.
    bands: dict[int, int] | None = None
    #: Consumers of the queue; RabbitMQ only.
    consumers: int | None = None
    error: str | None = None


class BackpressureStatus(BaseModel):
    """Whether producers hold bands back now, by the depth of the queue they feed (the tick's rule)."""

    queue: str
    limit: int
    #: Messages waiting, ``null`` when the depth could not be read (which holds bands back too).
    depth: int | None = None
    #: Producers add bands up to this one only; ``null``: every band.
    max_band: int | None = None
    reason: str


class BrokerSection(Section):
    transport: str
    url: str
    queues: list[QueueDepth] | None = None
    #: Backpressure on the ``boefjes`` queue as the producers would see it now (``null``: broker not read).
    backpressure: BackpressureStatus | None = None


class TasksSection(Section):
    total: int | None = None
    by_status: dict[TaskStatus, int] | None = None
    #: scheduler id (``boefje``, ``normalizer``, ...) → status → rows.
    by_scheduler: dict[str, dict[TaskStatus, int]] | None = None
    #: queue → band → rows in status ``queued`` (compare with the broker's bands).
    queued_by_band: dict[str, dict[int, int]] | None = None
    #: Queued rows waiting, without a message, for their rate limit's window; the earliest opening.
    rate_limited: int | None = None
    rate_limited_next: datetime | None = None


class SchedulesSection(Section):
    enabled: int | None = None
    disabled: int | None = None
    #: Enabled schedules whose deadline has passed: the next ``queue-due-schedules`` run takes them.
    due: int | None = None
    oldest_due_at: datetime | None = None
    oldest_due_seconds: float | None = None


class ProducerStatus(BaseModel):
    name: str
    started_at: datetime | None = None
    finished_at: datetime | None = None
    #: Seconds since the last run finished.
    age_seconds: float | None = None
    duration_seconds: float | None = None
    #: How often beat ticks it (``null`` for the listener, which runs on events).
    interval_seconds: float | None = None
    #: Its last run ended more than three intervals ago.
    late: bool = False
    outcome: RunOutcome | None = None
    last_ok_at: datetime | None = None
    host: str | None = None
    pid: int | None = None
    summary: dict[str, Any] | None = None
    error: str | None = None


class ProducersSection(Section):
    producers: list[ProducerStatus] | None = None


class StalledRow(BaseModel):
    id: uuid.UUID
    scheduler_id: str
    organisation: str
    plugin_id: str
    input_ooi: str | None
    status: TaskStatus
    #: ``started_at`` of a running row, ``created_at`` of an unpublished one.
    since: datetime | None
    age_seconds: float | None
    worker: str | None
    attempts: int


class StalledGroup(BaseModel):
    criterion: str
    threshold_seconds: float
    count: int
    rows: list[StalledRow]


class StalledSection(Section):
    #: Running longer than the hard time limit plus ``SCHEDULER_RUNNING_SLACK``.
    running: StalledGroup | None = None
    #: Claimed (``queued``) but not published for ``SCHEDULER_UNPUBLISHED_AFTER`` seconds.
    unpublished: StalledGroup | None = None


class StatusReport(BaseModel):
    generated_at: datetime
    database: DatabaseSection
    broker: BrokerSection
    tasks: TasksSection
    schedules: SchedulesSection
    producers: ProducersSection
    stalled: StalledSection

    @computed_field  # type: ignore[prop-decorator]
    @property
    def failed(self) -> list[str]:
        """The sections that could not be collected."""
        sections: dict[str, Section] = {
            "database": self.database,
            "broker": self.broker,
            "tasks": self.tasks,
            "schedules": self.schedules,
            "producers": self.producers,
            "stalled": self.stalled,
        }
        return [name for name, section in sections.items() if section.error is not None]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ok(self) -> bool:
        """Every section was collected (what the exit code says)."""
        return not self.failed
