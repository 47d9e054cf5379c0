"""Mula rows turned into ours (pure: no I/O)."""

from __future__ import annotations

import json
import logging
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from croniter import CroniterBadDateError

from kat_scheduler.models.tasks import SchedulerId, TaskStatus
from kat_scheduler.mula_import.summary import DISABLED_REASON, IMPORT_BAND, IMPORT_REASON, Malformed
from kat_scheduler.rules.identity import boefje_task_hash, normalizer_task_hash
from kat_scheduler.rules.payloads import without_settings
from kat_scheduler.rules.timing import is_valid_cron, next_cron
from kat_scheduler.storage.schedules import ScheduleRecord
from kat_scheduler.storage.tasks import FinishedTask

logger = logging.getLogger(__name__)


def json_object(value: Any, what: str) -> dict[str, Any]:
    if isinstance(value, str | bytes):  # JSON kept as text, or a JSON string
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise Malformed(f"{what} is a string, not a JSON object") from exc
    if not isinstance(value, dict):
        raise Malformed(f"{what} is not a JSON object but {type(value).__name__}")
    return value


def _text(mapping: Mapping[str, Any], key: str, what: str) -> str:
    value = mapping.get(key)
    if not isinstance(value, str) or not value:
        raise Malformed(f"{what}.{key} is missing or not a string")
    return value


def _optional_text(mapping: Mapping[str, Any], key: str, what: str) -> str | None:
    value = mapping.get(key)
    if value is not None and not isinstance(value, str):
        raise Malformed(f"{what}.{key} is not a string")
    return value or None


def aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Identity:
    """What a task is about, read from mula's task data, and our hash of it."""

    plugin_id: str
    organisation: str
    input_ooi: str | None
    hash: str


def boefje_identity(data: Mapping[str, Any]) -> Identity:
    """From a BoefjeTask (``{"boefje": {"id": …}, "input_ooi": …, "organization": …}``)."""
    boefje = data.get("boefje")
    if not isinstance(boefje, dict):
        raise Malformed("data.boefje is missing or not an object")
    boefje_id = _text(boefje, "id", "data.boefje")
    organisation = _text(data, "organization", "data")
    input_ooi = _optional_text(data, "input_ooi", "data")
    return Identity(boefje_id, organisation, input_ooi, boefje_task_hash(boefje_id, organisation, input_ooi))


def normalizer_identity(data: Mapping[str, Any]) -> Identity:
    """From a NormalizerTask (``{"normalizer": {"id": …}, "raw_data": {"boefje_meta": {…}}}``)."""
    normalizer = data.get("normalizer")
    raw_data = data.get("raw_data")
    if not isinstance(normalizer, dict):
        raise Malformed("data.normalizer is missing or not an object")
    if not isinstance(raw_data, dict) or not isinstance(raw_data.get("boefje_meta"), dict):
        raise Malformed("data.raw_data.boefje_meta is missing or not an object")
    meta = raw_data["boefje_meta"]
    normalizer_id = _text(normalizer, "id", "data.normalizer")
    organisation = _text(meta, "organization", "data.raw_data.boefje_meta")
    try:
        meta_id = str(uuid.UUID(str(meta.get("id"))))
    except ValueError as exc:
        raise Malformed("data.raw_data.boefje_meta.id is not a UUID") from exc
    input_ooi = _optional_text(meta, "input_ooi", "data.raw_data.boefje_meta")
    return Identity(normalizer_id, organisation, input_ooi, normalizer_task_hash(normalizer_id, meta_id, organisation))


def identity(kind: str, data: Mapping[str, Any]) -> Identity:
    return boefje_identity(data) if kind == "boefje" else normalizer_identity(data)


def finished_task(
    *,
    task_id: uuid.UUID,
    kind: str,
    status: str,
    data: Any,
    mula_hash: str | None,
    priority: Any,
    created_at: datetime,
    modified_at: datetime,
    schedule_id: uuid.UUID | None,
    notes: Counter[str],
) -> FinishedTask:
    """Our finished row for one finished mula task; :class:`Malformed` when its data is not usable."""
    payload = json_object(data, "data")
    who = identity(kind, payload)
    if mula_hash is not None and mula_hash != who.hash:
        notes["task hash recomputed (mula's stored hash differed from its data)"] += 1
    return FinishedTask(
        id=task_id,
        scheduler_id=SchedulerId(kind),
        type=kind,
        organisation=who.organisation,
        plugin_id=who.plugin_id,
        input_ooi=who.input_ooi,
        hash=who.hash,
        status=TaskStatus(status),
        data=without_settings(payload),
        created_at=aware(created_at),
        ended_at=aware(modified_at),
        band=IMPORT_BAND,
        priority=priority if isinstance(priority, int) and not isinstance(priority, bool) else 0,
        reason=IMPORT_REASON,
        schedule_id=schedule_id,
    )


def schedule_record(
    *,
    schedule_id: uuid.UUID,
    data: Any,
    mula_hash: str | None,
    enabled: bool,
    cron: str | None,
    deadline_at: datetime | None,
    created_at: datetime,
    modified_at: datetime,
    now: datetime,
    notes: Counter[str],
) -> ScheduleRecord:
    """Our schedule for one mula boefje schedule; :class:`Malformed` when it is not usable."""
    payload = json_object(data, "data")
    who = boefje_identity(payload)
    if cron is not None and not is_valid_cron(cron):
        raise Malformed(f"schedule {cron!r} is not a valid cron expression (it does not parse, or never comes)")
    if mula_hash is not None and mula_hash != who.hash:
        notes["schedule hash recomputed (mula's stored hash differed from its data)"] += 1
    if deadline_at is None:
        # Mula never finds a schedule without a deadline due; we give it the next cron time, or
        # make it due now, where the due-schedule check decides (plugin, object, clearance).
        try:
            deadline_at = next_cron(cron, now) if cron else now
        except CroniterBadDateError:
            raise Malformed(f"schedule {cron!r} has no time after {now.isoformat()}") from None
        notes["schedule without deadline_at given " + ("its next cron time" if cron else "now")] += 1
    boefje = payload["boefje"]
    return ScheduleRecord(
        id=schedule_id,
        scheduler_id=SchedulerId.BOEFJE,
        organisation=who.organisation,
        plugin_id=who.plugin_id,
        input_ooi=who.input_ooi,
        hash=who.hash,
        data={
            "boefje": {"id": who.plugin_id, "name": boefje.get("name"), "version": boefje.get("version")},
            "input_ooi": who.input_ooi,
            "organization": who.organisation,
        },
        enabled=bool(enabled),
        deadline_at=aware(deadline_at),
        created_at=aware(created_at),
        modified_at=aware(modified_at),
        schedule=cron or None,
        disabled_reason=None if enabled else DISABLED_REASON,
    )


def as_uuid(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
