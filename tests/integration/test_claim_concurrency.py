"""Racing producers on PostgreSQL: every hash is claimed exactly once."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from sqlalchemy import Engine, func, select

from kat_scheduler.models import TaskStatus
from kat_scheduler.storage import TaskRow, TaskStore
from tests.factories import NewTaskFactory


@pytest.mark.parametrize("threads", [2, 4])
def test_racing_claims_of_the_same_hashes_claim_each_hash_once(pg_engine: Engine, threads: int) -> None:
    references = [f"Hostname|internet|race-{n}.example.nl" for n in range(3000)]
    store = TaskStore(pg_engine)
    won: list[list[str]] = [[] for _ in range(threads)]
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def producer(index: int) -> None:
        # Each producer builds its own tasks (own ids) for the same objects, in its own order.
        order = references if index % 2 == 0 else list(reversed(references))
        tasks = [NewTaskFactory(input_ooi=ref) for ref in order]
        barrier.wait()
        try:
            for start in range(0, len(tasks), 500):
                won[index].extend(t.hash for t in store.claim(tasks[start : start + 500]))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    workers = [threading.Thread(target=producer, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()

    assert not errors
    claimed = Counter(h for hashes in won for h in hashes)
    assert len(claimed) == len(references)
    assert set(claimed.values()) == {1}
    with pg_engine.connect() as conn:
        live = conn.execute(
            select(func.count()).select_from(TaskRow).where(TaskRow.status == TaskStatus.QUEUED)
        ).scalar_one()
    assert live == len(references)
