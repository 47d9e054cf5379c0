"""Claims and new schedules go to PostgreSQL as arrays: any text arrives exactly as it was sent."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine

from kat_scheduler.storage import ScheduleStore, TaskStore
from kat_scheduler.storage.sqlutil import pg_array
from tests.factories import NewScheduleFactory, NewTaskFactory

AWKWARD = [
    'Hostname|internet|quote"d.example.nl',
    "Hostname|internet|back\\slash.example.nl",
    "Hostname|internet|{braces},commas.example.nl",
    "Hostname|internet|NULL",
    "Hostname|internet|it's",
    "Hostname|internet|tab\tand\nnewline",
    "Hostname|internet|ünïcødé-ドメイン.example",
    "Hostname|internet|  spaces  ",
    'Hostname|internet|\\"both\\"',
]


def test_text_is_quoted_and_escaped_and_none_is_null() -> None:
    assert pg_array(["a", None, 'x"y', "b\\c"], "text") == '{"a",NULL,"x\\"y","b\\\\c"}'
    assert pg_array([1, None, 3], "integer") == "{1,NULL,3}"
    assert pg_array([], "text") == "{}"
    moment = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    assert pg_array([moment, None], "timestamptz") == '{"2026-11-22T10:00:00+00:00",NULL}'
    # A NUL inside a value cannot be mistaken for a boundary between values.
    assert pg_array(["a\0b", "c"], "text") == '{"a\0b","c"}'


@pytest.mark.parametrize(
    ("values", "sql_type"),
    [
        ([*AWKWARD, None, "", "NULL", "a\\b"], "text"),
        ([uuid.uuid4(), None, uuid.uuid4()], "uuid"),
        ([1, None, -3, 2**40], "bigint"),
        ([True, None, False], "boolean"),
        ([datetime(2026, 11, 22, 10, 0, 0, 123456, tzinfo=UTC), None], "timestamptz"),
        ([], "text"),
    ],
)
def test_an_array_literal_reads_back_as_the_array_psycopg2_sends_for_the_same_list(
    pg_engine: Engine, values: list[object], sql_type: str
) -> None:
    with pg_engine.connect() as conn:
        cursor = conn.connection.cursor()
        literal = pg_array(values, sql_type)
        cursor.execute(
            f"SELECT CAST(%s AS {sql_type}[]) = %s::{sql_type}[], CAST(%s AS {sql_type}[])::text[]",
            (literal, [str(v) if isinstance(v, uuid.UUID) else v for v in values], literal),
        )
        found = cursor.fetchone()
    assert found is not None
    same, read = found
    assert same is True
    assert len(read) == len(values) and [v is None for v in read] == [v is None for v in values]


def test_a_look_up_by_a_value_longer_than_its_column_finds_nothing(pg_engine: Engine) -> None:
    store = TaskStore(pg_engine)
    task = NewTaskFactory()
    store.claim([task])
    assert len(task.hash) == 32  # the column's length: a longer value must not be cut to it
    assert store.cancel_hashes([task.hash + "0", task.hash + "ffff"]) == []
    assert store.live_hashes([task.hash]) == {task.hash}


def test_a_claim_stores_awkward_object_keys_and_payloads_unchanged(pg_engine: Engine) -> None:
    store = TaskStore(pg_engine)
    tasks = [NewTaskFactory(input_ooi=key, organisation=f"org-{i}\"'\\") for i, key in enumerate(AWKWARD)]
    assert store.claim(tasks) == tasks
    for task in tasks:
        row = store.get(task.id)
        assert row is not None
        assert (row.input_ooi, row.organisation, row.hash, row.data) == (
            task.input_ooi,
            task.organisation,
            task.hash,
            task.data,
        )


def test_look_ups_by_awkward_hashes_and_by_ids_find_exactly_their_rows(pg_engine: Engine) -> None:
    store = TaskStore(pg_engine)
    hashes = [key.removeprefix("Hostname|internet|")[:30] for key in AWKWARD]  # a hash is at most 32
    tasks = [NewTaskFactory(hash=hash_) for hash_ in hashes]
    store.claim(tasks)
    others = [hash_ + "x" for hash_ in hashes]
    assert store.live_hashes(hashes + others) == set(hashes)
    cancelled = store.cancel_hashes(hashes[:3] + others)
    assert sorted(cancelled) == sorted(t.id for t in tasks[:3])
    assert store.live_hashes(hashes) == set(hashes[3:])
    assert store.existing_ids([t.id for t in tasks[::2]] + [uuid.uuid4()]) == {t.id for t in tasks[::2]}


def test_a_claim_without_an_object_stores_null(pg_engine: Engine) -> None:
    store = TaskStore(pg_engine)
    task = NewTaskFactory(input_ooi=None, data={"input_ooi": None})
    assert store.claim([task]) == [task]
    row = store.get(task.id)
    assert row is not None and row.input_ooi is None and row.data == {"input_ooi": None}


def test_new_schedules_keep_awkward_keys_and_a_missing_deadline(pg_engine: Engine) -> None:
    store = ScheduleStore(pg_engine)
    schedules = [NewScheduleFactory(input_ooi=key) for key in AWKWARD] + [NewScheduleFactory(deadline_at=None)]
    assert store.add_many(schedules) == len(schedules)
    found = store.states([s.hash for s in schedules])
    assert set(found) == {s.hash for s in schedules}
    assert found[schedules[-1].hash].deadline_at is None
    assert all(state.enabled for state in found.values())


@pytest.mark.parametrize("rows", [1, 2500])
def test_claims_of_any_size_come_back_in_the_order_given(pg_engine: Engine, rows: int) -> None:
    store = TaskStore(pg_engine)
    tasks = NewTaskFactory.create_batch(rows)
    assert store.claim(tasks) == tasks
    fresh, twin = NewTaskFactory(), NewTaskFactory(input_ooi=tasks[-1].input_ooi)
    assert store.claim([twin, fresh]) == [fresh]


def test_a_message_that_can_never_be_published_is_refused_before_its_row_is_claimed(
    pg_engine: Engine, redis_url: str
) -> None:
    from kat_scheduler.dispatch.dispatcher import Dispatchable, Dispatcher
    from kat_scheduler.dispatch.publishing import make_publisher
    from kat_scheduler.settings import load_settings

    store = TaskStore(pg_engine)
    publisher = make_publisher(load_settings(broker_url=redis_url))
    try:
        good, bad = NewTaskFactory(), NewTaskFactory()
        items = [
            Dispatchable(good, "kat.boefje.run", "boefjes", {"input_ooi": good.input_ooi}),
            Dispatchable(bad, "kat.boefje.run", "boefjes", {"when": object()}),
        ]
        with pytest.raises(TypeError):
            Dispatcher(store, publisher).claim(items)
        assert store.get(good.id) is None and store.get(bad.id) is None
    finally:
        publisher.close()


def test_columns_with_one_value_in_every_row_arrive_in_every_row(pg_engine: Engine) -> None:
    store = TaskStore(pg_engine)
    same = NewTaskFactory.create_batch(300, organisation='one "org"', reason=None, schedule_id=None)
    assert store.claim(same) == same
    rows = [store.get(task.id) for task in same]
    assert {(r.organisation, r.reason, r.schedule_id, r.band) for r in rows if r is not None} == {
        ('one "org"', None, None, 5)
    }
    assert len({r.created_at for r in rows if r is not None}) == 1


def test_json_payloads_arrive_unchanged_whether_they_vary_or_are_the_same_in_every_row(pg_engine: Engine) -> None:
    store = TaskStore(pg_engine)
    awkward = {"text": 'a "quoted" \\ key', "nested": {"list": [1, None, "ünïcødé"], "empty": {}}, "null": None}
    varying = [NewTaskFactory(data={"input_ooi": key, **awkward}) for key in AWKWARD]
    same = NewTaskFactory.create_batch(3, data=awkward)
    for tasks in (varying, same):
        assert store.claim(tasks) == tasks
        assert [row.data for row in map(store.get, (t.id for t in tasks)) if row is not None] == [t.data for t in tasks]
    schedules = ScheduleStore(pg_engine)
    new = [NewScheduleFactory(data={"input_ooi": key, **awkward}) for key in AWKWARD]
    assert schedules.add_many(new) == len(new)
    assert [row.data for row in map(schedules.get_by_hash, (s.hash for s in new)) if row is not None] == [
        s.data for s in new
    ]


@pytest.mark.parametrize("write", ["add_many", "upsert"])
def test_a_new_schedule_keeps_the_id_it_is_given_and_one_without_gets_a_new_id_of_its_own(
    pg_engine: Engine, write: str
) -> None:
    store = ScheduleStore(pg_engine)
    given = NewScheduleFactory(id=uuid.uuid4())
    without = NewScheduleFactory.create_batch(3)
    getattr(store, write)([given, *without])
    rows = [store.get_by_hash(s.hash) for s in (given, *without)]
    assert all(row is not None for row in rows)
    ids = [row.id for row in rows if row is not None]
    assert ids[0] == given.id
    assert len(set(ids)) == 4 and all(i.version == 4 for i in ids)
