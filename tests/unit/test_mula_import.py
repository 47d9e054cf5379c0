"""The pure part of the import from mula: scheduler ids, identities and hashes, row mapping."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from kat_scheduler.models import SchedulerId, TaskStatus
from kat_scheduler.mula_import import (
    DISABLED_REASON,
    IMPORT_REASON,
    ImportSummary,
    Malformed,
    Outcome,
    boefje_identity,
    finished_task,
    kind_of,
    normalizer_identity,
    schedule_record,
)
from kat_scheduler.storage.schedules import ScheduleRecord
from tests.factories import (
    MulaBoefjeTaskRowFactory,
    MulaNormalizerTaskRowFactory,
    MulaScheduleRowFactory,
    mula_boefje_hash,
)

NOW = datetime(2026, 5, 1, 13, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("scheduler_id", "kind"),
    [
        ("boefje", "boefje"),
        ("boefje-acme", "boefje"),
        ("boefje-my-org", "boefje"),
        ("normalizer", "normalizer"),
        ("normalizer-acme", "normalizer"),
        ("report", "report"),
        ("report-acme", "report"),
        ("boefjes", ""),
        ("octopoes", ""),
        ("", ""),
        (None, ""),
    ],
)
def test_scheduler_ids_of_every_mula_version_are_understood(scheduler_id: str | None, kind: str) -> None:
    assert kind_of(scheduler_id) == kind


def test_boefje_identity_hashes_as_mula_does() -> None:
    row = MulaBoefjeTaskRowFactory(boefje_id="nmap", org="acme", input_ooi="IPAddressV4|internet|1.2.3.4")
    who = boefje_identity(row["data"])
    assert (who.plugin_id, who.organisation, who.input_ooi) == ("nmap", "acme", "IPAddressV4|internet|1.2.3.4")
    assert who.hash == row["hash"]


def test_a_boefje_without_input_object_hashes_on_boefje_and_organisation() -> None:
    row = MulaBoefjeTaskRowFactory(input_ooi=None, boefje_id="manual", org="acme")
    assert boefje_identity(row["data"]).hash == mula_boefje_hash("manual", "acme", None)


def test_normalizer_identity_hashes_as_mula_does() -> None:
    row = MulaNormalizerTaskRowFactory(org="bb")
    who = normalizer_identity(row["data"])
    assert (who.plugin_id, who.organisation, who.input_ooi) == ("kat_dns_normalize", "bb", "Hostname|internet|mispo.es")
    assert who.hash == row["hash"]


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"boefje": "dns-records", "organization": "aa"},
        {"boefje": {"id": ""}, "organization": "aa"},
        {"boefje": {"id": "dns-records"}},
        {"boefje": {"id": "dns-records"}, "organization": "aa", "input_ooi": 5},
    ],
)
def test_boefje_data_that_is_not_a_boefje_task_is_malformed(data: dict[str, object]) -> None:
    with pytest.raises(Malformed):
        boefje_identity(data)


def test_normalizer_data_without_a_boefje_meta_uuid_is_malformed() -> None:
    row = MulaNormalizerTaskRowFactory()
    row["data"]["raw_data"]["boefje_meta"]["id"] = "nope"
    with pytest.raises(Malformed, match="not a UUID"):
        normalizer_identity(row["data"])
    with pytest.raises(Malformed, match="boefje_meta"):
        normalizer_identity({"normalizer": {"id": "n"}, "raw_data": {}})


def test_a_finished_mula_task_becomes_a_finished_row_ended_when_mula_last_touched_it() -> None:
    row = MulaBoefjeTaskRowFactory(status="FAILED", ended=NOW - timedelta(hours=1))
    notes: Counter[str] = Counter()
    task = finished_task(
        task_id=row["id"],
        kind="boefje",
        status="failed",
        data=row["data"],
        mula_hash=row["hash"],
        priority=row["priority"],
        created_at=row["created_at"],
        modified_at=row["modified_at"],
        schedule_id=None,
        notes=notes,
    )
    assert task.id == row["id"] and task.scheduler_id == SchedulerId.BOEFJE and task.type == "boefje"
    assert task.status == TaskStatus.FAILED and task.ended_at == NOW - timedelta(hours=1)
    assert task.hash == row["hash"] and task.reason == IMPORT_REASON and task.priority == 7
    assert task.data == row["data"] and not notes


def test_data_stored_as_json_text_is_read_and_a_stale_mula_hash_is_noted() -> None:
    notes: Counter[str] = Counter()
    naive = datetime(2026, 5, 1, 12, 0)
    task = finished_task(
        task_id=uuid.uuid4(),
        kind="boefje",
        status="completed",
        data='{"boefje": {"id": "dns-records"}, "organization": "aa", "input_ooi": null}',
        mula_hash="0" * 32,
        priority=None,
        created_at=naive,
        modified_at=naive,
        schedule_id=None,
        notes=notes,
    )
    assert task.hash == mula_boefje_hash("dns-records", "aa", None) and task.priority == 0
    assert task.ended_at == datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    assert sum(notes.values()) == 1


@pytest.mark.parametrize("data", ["{not json", "[1, 2]", 42, None])
def test_task_data_that_is_no_json_object_is_malformed(data: object) -> None:
    with pytest.raises(Malformed):
        finished_task(
            task_id=uuid.uuid4(),
            kind="boefje",
            status="completed",
            data=data,
            mula_hash=None,
            priority=None,
            created_at=NOW,
            modified_at=NOW,
            schedule_id=None,
            notes=Counter(),
        )


def _record(**overrides: object) -> ScheduleRecord:
    row = MulaScheduleRowFactory(**overrides)
    return schedule_record(
        schedule_id=row["id"],
        data=row["data"],
        mula_hash=row["hash"],
        enabled=row["enabled"],
        cron=row["schedule"],
        deadline_at=row["deadline_at"],
        created_at=row["created_at"],
        modified_at=row["modified_at"],
        now=NOW,
        notes=Counter(),
    )


def test_a_mula_schedule_keeps_its_id_cron_deadline_and_state() -> None:
    row = MulaScheduleRowFactory(enabled=False)
    record = schedule_record(
        schedule_id=row["id"],
        data=row["data"],
        mula_hash=row["hash"],
        enabled=row["enabled"],
        cron=row["schedule"],
        deadline_at=row["deadline_at"],
        created_at=row["created_at"],
        modified_at=row["modified_at"],
        now=NOW,
        notes=Counter(),
    )
    assert record.id == row["id"] and record.hash == row["hash"]
    assert record.schedule == "0 3 * * *" and record.deadline_at == row["deadline_at"]
    assert not record.enabled and record.disabled_reason == DISABLED_REASON
    assert record.data["boefje"] == {"id": "dns-records", "name": "Dns Records", "version": None}


def test_a_schedule_without_deadline_gets_its_next_cron_time_or_now() -> None:
    assert _record(deadline_at=None, schedule="0 3 * * *").deadline_at == datetime(2026, 5, 2, 3, 0, tzinfo=UTC)
    assert _record(deadline_at=None, schedule=None).deadline_at == NOW


def test_an_invalid_cron_expression_is_malformed() -> None:
    with pytest.raises(Malformed, match="cron"):
        _record(schedule="at noon")


def test_the_summary_names_what_a_dry_run_would_import_and_why_rows_were_skipped() -> None:
    summary = ImportSummary(dry_run=True, since=NOW, layout="current schema", revision="0011")
    summary.add("boefje tasks", Outcome.IMPORTED, 3)
    summary.add("boefje tasks", Outcome.LIVE, 2)
    summary.add("boefje schedules", Outcome.MALFORMED, 0)
    text = "\n".join(summary.lines())
    assert "DRY RUN" in text and "would import" in text and "alembic revision 0011" in text
    assert "live in mula: pending/queued/dispatched/running" in text
    assert "malformed" not in text  # nothing counted, nothing said
    assert summary.total(Outcome.IMPORTED) == 3
