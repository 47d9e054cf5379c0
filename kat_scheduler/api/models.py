"""The API's models on the wire, shaped exactly as mula's clients read them."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Row

from kat_scheduler.models.tasks import SchedulerId, TaskStatus
from kat_scheduler.rules.identity import report_task_hash
from kat_scheduler.rules.payloads import without_settings
from kat_scheduler.storage.tables import ScheduleRow, TaskRow

#: The ``item_type`` each scheduler reports.
ITEM_TYPES: dict[SchedulerId, str] = {
    SchedulerId.BOEFJE: "BoefjeTask",
    SchedulerId.NORMALIZER: "NormalizerTask",
    SchedulerId.REPORT: "ReportTask",
}


class Task(BaseModel):
    """A task as ``GET /tasks/{id}`` answers it; ``data`` is the BoefjeTask, NormalizerTask or ReportTask."""

    id: uuid.UUID
    scheduler_id: SchedulerId
    schedule_id: uuid.UUID | None = None
    organisation: str
    priority: int = Field(description="Lower runs sooner (within the task's band).")
    status: TaskStatus
    type: str
    hash: str
    data: dict[str, Any]
    created_at: datetime
    modified_at: datetime

    @classmethod
    def of(cls, row: TaskRow | Row[Any]) -> Task:
        data = without_settings(row.data)  # a row of an earlier version may still hold them
        boefje = data.get("boefje")
        if isinstance(boefje, dict) and "oci_image" not in boefje:
            # Boefje workers filter on data.boefje.oci_image: the key is always there.
            data["boefje"] = {**boefje, "oci_image": None}
        return cls(
            id=row.id,
            scheduler_id=row.scheduler_id,
            schedule_id=row.schedule_id,
            organisation=row.organisation,
            priority=row.priority,
            status=row.status,
            type=row.type,
            hash=row.hash,
            data=data,
            created_at=row.created_at,
            modified_at=row.modified_at,
        )


class ReportTask(BaseModel):
    """The ``data`` of a report task (and of a report schedule): which recipe, for which organisation.

    Rocky may add ``"type": "report"``; any key it adds is kept.
    """

    model_config = ConfigDict(extra="allow")

    organisation_id: str = Field(min_length=1)
    report_recipe_id: str = Field(min_length=1)

    @property
    def hash(self) -> str:
        return report_task_hash(self.report_recipe_id, self.organisation_id)


class PoppedTasks(BaseModel):
    """The answer of ``POST /schedulers/{id}/pop``: the tasks taken, most urgent first, now dispatched."""

    results: list[Task]


class TaskPatch(BaseModel):
    """The body of ``PATCH /tasks/{id}``: any Task field; only ``status`` may differ from the task.
    A key that is no Task field is refused (422 naming it): it would be dropped silently."""

    model_config = ConfigDict(extra="forbid")

    id: uuid.UUID | None = None
    scheduler_id: str | None = None
    schedule_id: uuid.UUID | None = None
    organisation: str | None = None
    priority: int | None = None
    status: TaskStatus | None = None
    type: str | None = None
    hash: str | None = None
    data: dict[str, Any] | None = None
    created_at: datetime | None = None
    modified_at: datetime | None = None


class TaskPage(BaseModel):
    """The paginated envelope of task listings."""

    count: int
    next: str | None
    previous: str | None
    results: list[Task]
    is_partial_count: bool | None = Field(
        None, description="Only with allow_partial_count=true: whether the count stopped at its bound."
    )


class Schedule(BaseModel):
    """A schedule as the ``/schedules`` routes answer it."""

    id: uuid.UUID
    scheduler_id: SchedulerId
    organisation: str
    hash: str
    data: dict[str, Any]
    enabled: bool
    schedule: str | None = Field(description="A cron expression; null for a one-off schedule.")
    deadline_at: datetime | None = Field(description="When it is due next; null once a one-off fired.")
    disabled_reason: str | None = Field(
        None,
        description="Why it is disabled (null while enabled): the object was deleted, its boefje descheduled it, …",
    )
    descheduled_at: datetime | None = Field(
        None,
        description="When its boefje descheduled it (a raw file tagged openkat/deschedule): no producer enables it "
        "again; PATCH enabled: true does, and clears this.",
    )
    created_at: datetime
    modified_at: datetime

    @classmethod
    def of(cls, row: ScheduleRow) -> Schedule:
        return cls(
            id=row.id,
            scheduler_id=row.scheduler_id,
            organisation=row.organisation,
            hash=row.hash,
            data=row.data,
            enabled=row.enabled,
            schedule=row.schedule,
            deadline_at=row.deadline_at,
            disabled_reason=row.disabled_reason,
            descheduled_at=row.descheduled_at,
            created_at=row.created_at,
            modified_at=row.modified_at,
        )


class SchedulePage(BaseModel):
    """The paginated envelope of schedule listings."""

    count: int
    next: str | None
    previous: str | None
    results: list[Schedule]
    is_partial_count: bool | None = Field(
        None, description="Only with allow_partial_count=true: whether the count stopped at its bound."
    )


class ScheduleCreate(BaseModel):
    """The body of ``POST /schedules`` (Rocky's ScheduleRequest): ``schedule``, ``deadline_at`` or both."""

    model_config = ConfigDict(extra="forbid")

    scheduler_id: str
    organisation: str = Field(min_length=1)
    data: dict[str, Any]
    schedule: str | None = None
    deadline_at: datetime | None = None


class SchedulePatch(BaseModel):
    """The body of ``PATCH /schedules/{id}``: what may change."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool | None = None
    schedule: str | None = None
    deadline_at: datetime | None = None
    data: dict[str, Any] | None = None


class Scheduler(BaseModel):
    id: SchedulerId
    type: str
    item_type: str
    qsize: int = Field(description="Tasks of this scheduler that are queued.")
    last_activity: datetime | None = Field(description="When a task of this scheduler last changed.")


class Health(BaseModel):
    service: str = "scheduler"
    healthy: bool = True
    version: str
    additional: Any = None
    results: list[Any] = Field(default_factory=list)
    externals: dict[str, bool] = Field(default_factory=dict)


class Problem(BaseModel):
    """Every error body."""

    detail: Any


#: Each status's count in an hour of ``GET /tasks/stats``, and ``total``.
StatusCounts = dict[str, int]
