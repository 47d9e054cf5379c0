from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from kat_scheduler.storage import ScheduleStore
from tests.factories import NewScheduleFactory

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def test_a_schedule_is_created_once_per_hash(engine: Engine) -> None:
    store = ScheduleStore(engine)
    schedules = NewScheduleFactory.create_batch(3)
    assert store.add_many(schedules) == 3
    assert store.add_many([NewScheduleFactory(input_ooi=schedules[0].input_ooi), NewScheduleFactory()]) == 1
    assert store.existing_hashes([s.hash for s in schedules]) == {s.hash for s in schedules}


def test_every_due_schedule_is_found_oldest_first_without_a_cap(engine: Engine) -> None:
    store = ScheduleStore(engine)
    due = [NewScheduleFactory(deadline_at=NOW - timedelta(minutes=n)) for n in range(2500)]
    later = NewScheduleFactory.create_batch(5, deadline_at=NOW + timedelta(hours=1))
    store.add_many(due + later)
    batches = list(store.iter_due(NOW, batch_size=1000))
    found = [row for batch in batches for row in batch]
    assert [len(b) for b in batches] == [1000, 1000, 500]
    assert len(found) == 2500
    deadlines = [row.deadline_at for row in found]
    assert None not in deadlines
    assert deadlines == sorted(d for d in deadlines if d is not None)
    assert deadlines[0] == NOW - timedelta(minutes=2499)


def test_advancing_a_deadline_takes_the_schedule_off_the_due_list(engine: Engine) -> None:
    store = ScheduleStore(engine)
    a, b = NewScheduleFactory.create_batch(2, deadline_at=NOW - timedelta(minutes=1))
    store.add_many([a, b])
    row_a = store.get_by_hash(a.hash)
    assert row_a is not None
    store.set_deadlines({row_a.id: NOW + timedelta(days=1)})
    due = [row.hash for batch in store.iter_due(NOW) for row in batch]
    assert due == [b.hash]
    advanced = store.get_by_hash(a.hash)
    assert advanced is not None and advanced.deadline_at == NOW + timedelta(days=1)


def test_a_disabled_schedule_is_never_due_and_says_why(engine: Engine) -> None:
    store = ScheduleStore(engine)
    kept, gone = NewScheduleFactory.create_batch(2, deadline_at=NOW - timedelta(minutes=1))
    store.add_many([kept, gone])
    assert store.disable_for_ooi("aa", gone.input_ooi, reason="object deleted") == 1
    assert [row.hash for batch in store.iter_due(NOW) for row in batch] == [kept.hash]
    row = store.get_by_hash(gone.hash)
    assert row is not None and not row.enabled and row.disabled_reason == "object deleted"
    store.enable([row.id], deadline_at=NOW)
    assert len([r for batch in store.iter_due(NOW) for r in batch]) == 2


def test_adding_a_disabled_schedule_again_enables_it_and_an_enabled_one_is_left_alone(engine) -> None:
    from dataclasses import replace

    store = ScheduleStore(engine)
    first, second = NewScheduleFactory.create_batch(2)
    store.add_many([first, second])
    store.disable_hashes([first.hash], "not enabled")
    later = NOW + timedelta(days=3)
    again = [replace(s, deadline_at=later) for s in (first, second)]
    assert store.add_many(again) == 1
    enabled_again = store.get_by_hash(first.hash)
    assert enabled_again is not None and enabled_again.deadline_at is not None
    assert enabled_again.enabled and enabled_again.disabled_reason is None
    assert abs((enabled_again.deadline_at - later).total_seconds()) < 1
    untouched = store.get_by_hash(second.hash)
    assert untouched is not None and untouched.deadline_at is not None and second.deadline_at is not None
    assert abs((untouched.deadline_at - second.deadline_at).total_seconds()) < 1
    assert store.existing_hashes([first.hash, second.hash], enabled_only=True) == {first.hash, second.hash}
