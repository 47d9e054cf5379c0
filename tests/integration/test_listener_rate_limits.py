"""The event listener and rate limits: a storm of mutations on objects of a rate-limited boefje
publishes only what the group may start now; every other task of the group is claimed and waits
for its window as a worker's put-back leaves it (no message, listed as waiting with its limit,
group and time), and the worker nodes' release sends them as room opens. Real PostgreSQL, Redis
and (for the drain) a real worker node on the simulated KAT."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import Engine, select

from kat_scheduler.models import TaskStatus
from kat_scheduler.storage import TaskRow, TaskStore
from kat_scheduler.storage.tables import utcnow
from kat_scheduler.storage.waiting import RATE_LIMIT_KEY, WaitingStore
from tests.factories import NewTaskFactory


def test_claimed_tasks_held_back_wait_as_a_put_back_leaves_them_and_only_those_still_unsent(
    pg_engine: Engine,
) -> None:
    store = TaskStore(pg_engine)
    held, sent = NewTaskFactory(), NewTaskFactory()
    store.claim([held, sent])
    store.mark_published([sent.id])  # its message is on the broker: it no longer waits for one
    until = utcnow() + timedelta(seconds=30)
    waiting = WaitingStore(pg_engine)

    assert waiting.hold({held.id: ("2/second", "g", until), sent.id: ("2/second", "g", until)}) == 1

    assert waiting.waiting_until([held.id, sent.id]) == {held.id: until}
    assert waiting.summary() == (1, until)
    with pg_engine.connect() as conn:
        row = conn.execute(select(TaskRow).where(TaskRow.id == held.id)).one()
    assert row.status == TaskStatus.QUEUED
    assert row.data[RATE_LIMIT_KEY] == {"limit": "2/second", "group": "g", "until": until.isoformat()}
    assert {k: v for k, v in row.data.items() if k != RATE_LIMIT_KEY} == held.data
    assert [(w.group, w.limit, w.count) for w in waiting.by_group()] == [("g", "2/second", 1)]
    assert waiting.hold({uuid.uuid4(): ("2/second", "g", until)}) == 0
