"""Task payloads as the rest of KAT expects them, and the task status/scheduler enums."""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from kat_scheduler.models.bytes import RawData
from kat_scheduler.rules.identity import boefje_task_hash, normalizer_task_hash


class TaskStatus(StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    DISPATCHED = "dispatched"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


#: Statuses during which a hash is taken: at most one task per hash may be in one of these.
LIVE_STATUSES: tuple[TaskStatus, ...] = (TaskStatus.QUEUED, TaskStatus.DISPATCHED, TaskStatus.RUNNING)
#: Statuses a task ends in.
FINAL_STATUSES: tuple[TaskStatus, ...] = (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED)


class SchedulerId(StrEnum):
    BOEFJE = "boefje"
    NORMALIZER = "normalizer"
    REPORT = "report"


class PluginRef(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    name: str | None = None
    version: str | None = None


class BoefjeRefWithImage(PluginRef):
    oci_image: str | None = None


class BoefjeTask(BaseModel):
    """The ``data`` of a boefje task; its ``id`` equals the task id."""

    model_config = ConfigDict(extra="allow")

    id: uuid.UUID = Field(default_factory=uuid.uuid4)
    boefje: BoefjeRefWithImage
    input_ooi: str | None = None
    organization: str
    deduplication_key: str | None = None
    dispatches: list[Any] = Field(default_factory=list)

    @property
    def hash(self) -> str:
        return boefje_task_hash(self.boefje.id, self.organization, self.input_ooi)


class NormalizerTask(BaseModel):
    """The ``data`` of a normalizer task; its ``id`` equals the task id."""

    model_config = ConfigDict(extra="allow")

    id: uuid.UUID = Field(default_factory=uuid.uuid4)
    normalizer: PluginRef
    raw_data: RawData

    @property
    def organization(self) -> str:
        return self.raw_data.boefje_meta.organization

    @property
    def hash(self) -> str:
        return normalizer_task_hash(self.normalizer.id, str(self.raw_data.boefje_meta.id), self.organization)
