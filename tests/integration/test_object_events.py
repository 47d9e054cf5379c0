"""``object_events``: which objects a batch finds contested, retiring and pruning (the store alone)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Engine, func, select, update

from kat_scheduler.storage.object_events import RETIRED, ObjectEventStore
from kat_scheduler.storage.tables import ObjectEventRow

FRESH = ("org", "Hostname|internet|fresh.example.nl")
SAME = ("org", "Hostname|internet|same.example.nl")
OTHER = ("org", "Hostname|internet|other.example.nl")
OLD = ("org", "Hostname|internet|old.example.nl")


def age(engine: Engine, key: tuple[str, str], by: timedelta) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(ObjectEventRow)
            .where(ObjectEventRow.organisation == key[0], ObjectEventRow.primary_key == key[1])
            .values(handled_at=func.now() - by)
        )


def contested(
    store: ObjectEventStore, objects: dict[tuple[str, str], str], suspect: frozenset[tuple[str, str]] = frozenset()
) -> set[tuple[str, str]]:
    """Enter ``objects`` as a batch would and release them at once; the contested ones."""
    fence = store.enter(objects, suspect)
    fence.release()
    return fence.contested


def test_another_listener_contests_an_object_it_handled_lately_with_another_last_event(pg_engine: Engine) -> None:
    a, b = ObjectEventStore(pg_engine, "a"), ObjectEventStore(pg_engine, "b")
    contested(a, {SAME: "create:2", OTHER: "create:2", OLD: "create:2"})
    age(pg_engine, OLD, timedelta(minutes=2))  # beyond the window of another listener's rows

    # FRESH: nobody's; SAME: the same event again; OLD: too long ago
    assert contested(b, {FRESH: "create:2", SAME: "create:2", OTHER: "delete", OLD: "delete"}) == {OTHER}
    assert contested(a, {OTHER: "delete"}) == set()  # b's last event is a's: nothing in doubt


def test_an_event_delivered_again_contests_its_object_whoever_handled_it_lately(pg_engine: Engine) -> None:
    a = ObjectEventStore(pg_engine, "a")
    contested(a, {SAME: "create:2", OLD: "create:2"})
    age(pg_engine, OLD, timedelta(minutes=6))  # beyond the redelivery window

    assert contested(a, {SAME: "delete"}) == set()  # a's own order: trusted
    assert contested(a, {SAME: "create:2", OLD: "delete"}, suspect=frozenset({SAME, OLD})) == {SAME}

    a.after_failure()  # a batch of a's own failed: for a while a trusts its own rows no more
    assert contested(a, {SAME: "delete"}) == {SAME}


def test_a_listener_that_retired_contests_nothing_but_its_redelivered_events(pg_engine: Engine) -> None:
    a, b, c = ObjectEventStore(pg_engine, "a"), ObjectEventStore(pg_engine, "b"), ObjectEventStore(pg_engine, "c")
    contested(a, {SAME: "create:2", OTHER: "create:2", OLD: "create:2"})
    contested(c, {FRESH: "create:2"})

    assert a.retire() == 3  # a stopped cleanly: its rows only, c's stays c's
    with pg_engine.connect() as conn:
        listeners = dict(conn.execute(select(ObjectEventRow.primary_key, ObjectEventRow.listener)).all())
    assert listeners == {SAME[1]: RETIRED, OTHER[1]: RETIRED, OLD[1]: RETIRED, FRESH[1]: "c"}

    assert contested(b, {SAME: "delete", FRESH: "delete"}) == {FRESH}  # c is still running
    # An event a had received and not acked comes back marked redelivered: contested all the same.
    assert contested(b, {OTHER: "delete"}, suspect=frozenset({OTHER})) == {OTHER}


def test_a_row_another_listener_holds_is_skipped_by_a_retiring_one_not_waited_for(pg_engine: Engine) -> None:
    a, b = ObjectEventStore(pg_engine, "a"), ObjectEventStore(pg_engine, "b")
    contested(a, {SAME: "create:2", OTHER: "create:2"})
    fence = b.enter({SAME: "delete"})  # b's batch of SAME is being written

    assert a.retire() == 1
    fence.release(written=False)  # it failed: SAME is a's again, and contests as before
    assert contested(b, {SAME: "delete", OTHER: "delete"}) == {SAME}


def test_rows_older_than_the_longest_window_are_pruned(pg_engine: Engine) -> None:
    a = ObjectEventStore(pg_engine, "a")
    contested(a, {SAME: "create:2", OLD: "create:2"})
    age(pg_engine, OLD, timedelta(minutes=6))

    assert a.prune() == 1
    with pg_engine.connect() as conn:
        assert conn.execute(select(ObjectEventRow.primary_key)).scalars().all() == [SAME[1]]
