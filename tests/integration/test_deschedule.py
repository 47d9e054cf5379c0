"""A raw file tagged ``openkat/deschedule`` disables its pair's schedule and cancels its queued task;
no producer runs the pair again until an operator enables the schedule (real PostgreSQL, Redis
broker, the simulated KAT over HTTP; handlers called directly, the listener in test_listener.py)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select, text

from kat_scheduler.clients import KATClients
from kat_scheduler.clients.plugin_cache import PluginCache
from kat_scheduler.dispatch.publishing import make_publisher
from kat_scheduler.events.deschedule import DESCHEDULE_MIME_TYPE, UNKNOWN_BOEFJE, UNKNOWN_PAIR
from kat_scheduler.events.handlers import MutationHandler, RawFileHandler
from kat_scheduler.models import RawFileReceived, ScanProfileMutation, SchedulerId, TaskStatus
from kat_scheduler.producers import DueSchedulesProducer, TickProducer
from kat_scheduler.rules import SkipReason
from kat_scheduler.rules.identity import boefje_task_hash
from kat_scheduler.settings import Settings
from kat_scheduler.sim.catalogue import normalizer_for
from kat_scheduler.sim.world import World
from kat_scheduler.storage import ScheduleStore, TaskRow, TaskStore
from tests.api_server import serve_api

NOW = datetime(2026, 6, 1, 12, 5, tzinfo=UTC)


@pytest.fixture(autouse=True)
def no_bytes_runs(pg_engine: Engine) -> None:
    with pg_engine.begin() as conn:
        conn.execute(text("DELETE FROM bytes_runs"))  # DELETE, not TRUNCATE: as pg_engine (tests/conftest.py)
        conn.execute(text("DELETE FROM bytes_histories"))


@pytest.fixture
def publisher(planner_settings: Settings):
    publisher = make_publisher(planner_settings)
    yield publisher
    publisher.close()


@pytest.fixture
def raw_files(clients: KATClients, pg_engine: Engine, publisher, planner_settings: Settings) -> RawFileHandler:
    plugins = PluginCache(clients.katalogus, ttl=60)
    return RawFileHandler(
        plugins, TaskStore(pg_engine), ScheduleStore(pg_engine), publisher, planner_settings, clock=lambda: NOW
    )


def mutations_at(clients: KATClients, engine: Engine, publisher, settings: Settings, now: datetime) -> MutationHandler:
    plugins = PluginCache(clients.katalogus, ttl=60)
    return MutationHandler(plugins, TaskStore(engine), ScheduleStore(engine), publisher, settings, clock=lambda: now)


def raw_file(org: str, boefje_id: str, input_ooi: str | None, mime_types: list[str]) -> RawFileReceived:
    return RawFileReceived.model_validate(
        {
            "created_at": (NOW - timedelta(minutes=1)).isoformat(),
            "organization": org,
            "raw_data": {
                "id": str(uuid.uuid4()),
                "boefje_meta": {
                    "id": str(uuid.uuid4()),
                    "started_at": (NOW - timedelta(minutes=2)).isoformat(),
                    "ended_at": (NOW - timedelta(minutes=1)).isoformat(),
                    "boefje": {"id": boefje_id},
                    "input_ooi": input_ooi,
                    "organization": org,
                },
                "mime_types": [{"value": m} for m in mime_types],
            },
        }
    )


def deschedule_file(org: str, boefje_id: str, input_ooi: str | None) -> RawFileReceived:
    return raw_file(org, boefje_id, input_ooi, [f"boefje/{boefje_id}", DESCHEDULE_MIME_TYPE])


def task_statuses(engine: Engine, hash_: str) -> list[str]:
    with engine.connect() as conn:
        return [str(s) for s in conn.execute(select(TaskRow.status).where(TaskRow.hash == hash_)).scalars()]


def normalizer_tasks(engine: Engine, input_ooi: str) -> set[str]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(TaskRow.plugin_id).where(
                TaskRow.scheduler_id == SchedulerId.NORMALIZER, TaskRow.input_ooi == input_ooi
            )
        )
        return set(rows.scalars())


def queued_pair(world: World, engine: Engine) -> tuple[str, str, str]:
    """A (organisation, boefje, object) the tick queued, whose normalizer the organisation enabled."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(TaskRow.organisation, TaskRow.plugin_id, TaskRow.input_ooi).where(
                TaskRow.scheduler_id == SchedulerId.BOEFJE, TaskRow.status == TaskStatus.QUEUED
            )
        ).all()
    for org, boefje_id, input_ooi in sorted(rows):
        boefje = world.plugin(boefje_id)
        if input_ooi and world.is_enabled(org, normalizer_for(boefje).id):  # type: ignore[arg-type]
            return org, boefje_id, input_ooi
    raise AssertionError("the tick queued no pair whose normalizer is enabled")


def test_a_deschedule_file_cancels_the_queued_task_disables_the_schedule_and_normalizes_as_usual(
    producers, raw_files, world, pg_engine, clients, publisher, planner_settings
) -> None:
    TickProducer(producers).run(NOW)
    org, boefje_id, pk = queued_pair(world, pg_engine)
    hash_ = boefje_task_hash(boefje_id, org, pk)
    event = deschedule_file(org, boefje_id, pk)

    assert raw_files("raw_file_received", [event]) == []

    assert task_statuses(pg_engine, hash_) == [TaskStatus.CANCELLED.value]
    schedule = ScheduleStore(pg_engine).get_by_hash(hash_)
    assert schedule is not None and not schedule.enabled and schedule.descheduled_at == NOW
    assert (
        schedule.disabled_reason
        == f"descheduled by boefje {boefje_id}: raw file {event.raw_data.id} is tagged openkat/deschedule"
    )
    assert normalizer_tasks(pg_engine, pk) == {normalizer_for(world.plugin(boefje_id)).id}
    assert raw_files.stats.cancelled == 1 and raw_files.stats.schedules_disabled == 1

    # Eight days on, every grace period is over: no producer queues the pair or enables its schedule.
    later = NOW + timedelta(days=8)
    tick = TickProducer(producers).run(later)
    assert tick.skipped[SkipReason.DESCHEDULED] == 1
    DueSchedulesProducer(producers).run(later)
    mutations = mutations_at(clients, pg_engine, publisher, planner_settings, later)
    level = world.get_ooi(org, pk).level
    value = {
        "primary_key": pk,
        "object_type": pk.split("|", 1)[0],
        "scan_profile": {"scan_profile_type": "declared", "reference": pk, "level": level},
    }
    update = ScanProfileMutation.model_validate(
        {"operation": "update", "primary_key": pk, "client_id": org, "value": value}
    )
    mutations("scan_profile_mutations", [update])
    assert mutations.stats.skipped[str(SkipReason.DESCHEDULED)] == 1
    assert task_statuses(pg_engine, hash_) == [TaskStatus.CANCELLED.value]
    schedule = ScheduleStore(pg_engine).get_by_hash(hash_)
    assert schedule is not None and not schedule.enabled and schedule.descheduled_at == NOW


def test_an_operator_enables_a_descheduled_schedule_again_and_its_reason_goes(
    producers, raw_files, world, pg_engine
) -> None:
    TickProducer(producers).run(NOW)
    org, boefje_id, pk = queued_pair(world, pg_engine)
    raw_files("raw_file_received", [deschedule_file(org, boefje_id, pk)])
    schedule = ScheduleStore(pg_engine).get_by_hash(boefje_task_hash(boefje_id, org, pk))
    assert schedule is not None

    with serve_api(Settings(), engine=pg_engine) as api:
        shown: dict[str, Any] = api.get(f"/schedules/{schedule.id}").json()
        assert shown["enabled"] is False
        assert shown["disabled_reason"].startswith(f"descheduled by boefje {boefje_id}")
        assert shown["descheduled_at"] is not None
        search = {"filters": [{"column": "descheduled_at", "operator": "is_not_null"}]}
        found = api.post("/schedules/search", json=search).json()
        assert [s["id"] for s in found["results"]] == [str(schedule.id)]
        enabled = api.patch(f"/schedules/{schedule.id}", json={"enabled": True})
        assert enabled.status_code == 200
        body = enabled.json()
        assert body["enabled"] is True and body["disabled_reason"] is None and body["descheduled_at"] is None

    later = NOW + timedelta(days=8)
    DueSchedulesProducer(producers).run(later)
    assert TaskStatus.QUEUED.value in task_statuses(pg_engine, schedule.hash)


def test_a_deschedule_file_of_an_unknown_boefje_or_pair_changes_nothing_and_the_batch_goes_on(
    producers, raw_files, world, pg_engine
) -> None:
    TickProducer(producers).run(NOW)
    org, boefje_id, pk = queued_pair(world, pg_engine)
    with pg_engine.connect() as conn:
        schedules_before = conn.execute(text("SELECT count(*) FROM schedules")).scalar_one()
    batch = [
        deschedule_file(org, "no-such-boefje", pk),
        deschedule_file(org, boefje_id, "Hostname|internet|never-seen.example.nl"),
        deschedule_file(org, boefje_id, pk),
    ]

    assert raw_files("raw_file_received", batch) == []

    assert raw_files.stats.skipped[UNKNOWN_BOEFJE] == 1
    assert raw_files.stats.skipped[UNKNOWN_PAIR] == 1
    assert raw_files.stats.schedules_disabled == 1  # the good one, after the two bad ones
    assert task_statuses(pg_engine, boefje_task_hash(boefje_id, org, pk)) == [TaskStatus.CANCELLED.value]
    with pg_engine.connect() as conn:
        descheduled = conn.execute(text("SELECT count(*) FROM schedules WHERE descheduled_at IS NOT NULL")).scalar_one()
        schedules_after = conn.execute(text("SELECT count(*) FROM schedules")).scalar_one()
    assert descheduled == 1
    assert schedules_after - schedules_before in (0, 1)  # the good pair's, when the tick gave it none
