"""A descheduled schedule stays disabled whatever a producer writes; only an operator enables it."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from kat_scheduler.storage import ScheduleStore
from tests.factories import NewScheduleFactory

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def test_descheduling_disables_an_existing_schedule_and_creates_a_missing_one(engine: Engine) -> None:
    store = ScheduleStore(engine)
    existing, missing, other = NewScheduleFactory.create_batch(3, deadline_at=NOW - timedelta(minutes=1))
    store.add_many([existing, other])
    written = store.deschedule([(existing, "descheduled by boefje a"), (missing, "descheduled by boefje b")], now=NOW)
    assert sorted(written) == sorted([existing.hash, missing.hash])
    for schedule, reason in ((existing, "descheduled by boefje a"), (missing, "descheduled by boefje b")):
        row = store.get_by_hash(schedule.hash)
        assert row is not None and not row.enabled
        assert row.disabled_reason == reason and row.descheduled_at == NOW
    assert [row.hash for batch in store.iter_due(NOW) for row in batch] == [other.hash]
    states = store.states([existing.hash, other.hash])
    assert states[existing.hash].descheduled and not states[other.hash].descheduled


def test_no_producer_write_enables_a_descheduled_schedule(engine: Engine) -> None:
    store = ScheduleStore(engine)
    descheduled, disabled = NewScheduleFactory.create_batch(2)
    store.add_many([descheduled, disabled])
    store.deschedule([(descheduled, "descheduled")], now=NOW)
    store.disable_hashes([disabled.hash], "object deleted or scan level too low")
    later = NOW + timedelta(days=2)
    assert store.add_many([replace(s, deadline_at=later) for s in (descheduled, disabled)]) == 1
    store.upsert([replace(descheduled, deadline_at=later)])
    row = store.get_by_hash(descheduled.hash)
    assert row is not None and not row.enabled and row.descheduled_at is not None
    enabled = store.get_by_hash(disabled.hash)
    assert enabled is not None and enabled.enabled and enabled.deadline_at == later


def test_held_hashes_are_the_enabled_and_the_descheduled(engine: Engine) -> None:
    store = ScheduleStore(engine)
    enabled, disabled, descheduled = NewScheduleFactory.create_batch(3)
    store.add_many([enabled, disabled, descheduled])
    store.disable_hashes([disabled.hash], "not enabled")
    store.deschedule([(descheduled, "descheduled")], now=NOW)
    assert store.held_hashes([enabled.hash, disabled.hash, descheduled.hash, "0" * 32]) == {
        enabled.hash: False,
        descheduled.hash: True,
    }


def test_enabling_clears_the_deschedule(engine: Engine) -> None:
    store = ScheduleStore(engine)
    schedule = NewScheduleFactory()
    store.deschedule([(schedule, "descheduled")], now=NOW)
    row = store.get_by_hash(schedule.hash)
    assert row is not None
    store.enable([row.id], deadline_at=NOW)
    row = store.get_by_hash(schedule.hash)
    assert row is not None and row.enabled and row.descheduled_at is None and row.disabled_reason is None
    assert store.add_many([replace(schedule, deadline_at=NOW + timedelta(days=1))]) == 0
