"""What the live view of ``kat-scheduler run`` shows: samples of tasks, queues and the graph.

Each source is read on its own and may fail on its own (a broker restarting, Octopoes slow):
the sample then carries the error for that part and the last good figures stay on screen.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field

from sqlalchemy import Engine, func, select

from kat_scheduler.clients import KATClients
from kat_scheduler.models.tasks import TaskStatus
from kat_scheduler.publisher import Publisher
from kat_scheduler.queues import Queue
from kat_scheduler.sim.catalogue import OOI_TYPES
from kat_scheduler.storage.tables import TaskRow

logger = logging.getLogger(__name__)

#: Object types counted in the graph: KAT's common types and the findings boefjes add.
COUNTED_TYPES = (*OOI_TYPES, "Finding")
#: At most this many organisations are counted per graph sample (one request each).
MAX_COUNTED_ORGANISATIONS = 50


@dataclass
class Sample:
    at: float
    #: tasks[type][status] from the database, e.g. tasks["boefje"]["completed"].
    tasks: dict[str, dict[str, int]] = field(default_factory=dict)
    depths: dict[str, int] = field(default_factory=dict)
    objects: int | None = None
    organisations: int | None = None
    errors: dict[str, str] = field(default_factory=dict)

    def count(self, task_type: str, status: TaskStatus) -> int:
        return self.tasks.get(task_type, {}).get(status.value, 0)

    def finished(self) -> int:
        return sum(
            counts.get(TaskStatus.COMPLETED.value, 0) + counts.get(TaskStatus.FAILED.value, 0)
            for counts in self.tasks.values()
        )


def count_tasks(engine: Engine) -> dict[str, dict[str, int]]:
    table = TaskRow.__table__
    stmt = select(table.c.type, table.c.status, func.count()).group_by(table.c.type, table.c.status)
    out: dict[str, dict[str, int]] = {}
    with engine.connect() as conn:
        for task_type, status, n in conn.execute(stmt):
            out.setdefault(str(task_type), {})[str(getattr(status, "value", status))] = int(n)
    return out


class Monitor:
    """Takes samples; keeps the last minute of them for rates."""

    def __init__(
        self,
        engine: Engine,
        publisher: Publisher,
        clients: KATClients | None,
        *,
        objects_every: float = 5.0,
        tasks_every: float = 0.0,
    ) -> None:
        self.engine = engine
        self.publisher = publisher
        self.clients = clients
        self.objects_every = objects_every
        #: A production tasks table holds millions of rows: count them less often there.
        self.tasks_every = tasks_every
        self._tasks_at = float("-inf")
        self.history: deque[Sample] = deque(maxlen=120)
        self.first_objects: int | None = None
        self._objects_at = 0.0
        self._last_objects: tuple[int | None, int | None] = (None, None)

    def sample(self, *, full: bool = False) -> Sample:
        """A new sample; the graph is counted every ``objects_every`` seconds, or now when ``full``."""
        now = time.monotonic()
        sample = Sample(at=now)
        if full or now - self._tasks_at >= self.tasks_every or not self.history:
            try:
                sample.tasks = count_tasks(self.engine)
                self._tasks_at = now
            except Exception as exc:
                sample.errors["database"] = _short(exc)
                if self.history:
                    sample.tasks = self.history[-1].tasks
        else:
            sample.tasks = self.history[-1].tasks
        for queue in Queue:
            try:
                sample.depths[queue.value] = self.publisher.queue_depth(queue.value)
            except Exception as exc:
                sample.errors["broker"] = _short(exc)
        if self.clients is not None and (full or now - self._objects_at >= self.objects_every):
            self._objects_at = now
            try:
                self._last_objects = self._count_objects()
            except Exception as exc:
                sample.errors["octopoes"] = _short(exc)
        sample.objects, sample.organisations = self._last_objects
        if sample.objects is not None and self.first_objects is None:
            self.first_objects = sample.objects
        self.history.append(sample)
        return sample

    def _count_objects(self) -> tuple[int, int]:
        assert self.clients is not None
        organisations = sorted(self.clients.katalogus.organisations())[:MAX_COUNTED_ORGANISATIONS]
        total = 0
        for org in organisations:
            page = self.clients.octopoes.list_objects(org, types=COUNTED_TYPES, limit=1)
            total += page.count
        return total, len(organisations)

    def rate(self, window: float = 10.0) -> float:
        """Tasks finished per second over the last ``window`` seconds."""
        if len(self.history) < 2:
            return 0.0
        last = self.history[-1]
        first = next((s for s in self.history if last.at - s.at <= window), self.history[0])
        elapsed = last.at - first.at
        return (last.finished() - first.finished()) / elapsed if elapsed > 0 else 0.0


def _short(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:160]
