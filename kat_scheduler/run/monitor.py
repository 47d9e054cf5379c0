"""What the live view of ``kat-scheduler run`` shows: samples of tasks, queues and the graph.

Each source is read on its own and may fail on its own (a broker restarting, Octopoes slow):
the sample then carries the error for that part and the last good figures stay on screen.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from sqlalchemy import Engine

from kat_scheduler.clients import KATClients, ServiceError
from kat_scheduler.dispatch.publishing import Publisher
from kat_scheduler.models.tasks import TaskStatus
from kat_scheduler.queues import Queue
from kat_scheduler.sim.catalogue import OOI_TYPES
from kat_scheduler.storage.migrate import one_line
from kat_scheduler.storage.task_views import TaskViews

logger = logging.getLogger(__name__)

#: Object types counted in the graph: KAT's common types and the findings boefjes add.
COUNTED_TYPES = (*OOI_TYPES, "Finding")
#: At most this many organisations are counted per graph sample (one request each).
MAX_COUNTED_ORGANISATIONS = 50
#: Seconds one graph count may take before it is given up (the last count stays on screen).
COUNT_BUDGET = 3.0


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
        self.views = TaskViews(engine)
        self.publisher = publisher
        self.clients = clients
        self.objects_every = objects_every
        #: A production tasks table holds millions of rows: count them less often there.
        self.tasks_every = tasks_every
        self._tasks_at = float("-inf")
        self.history: deque[Sample] = deque(maxlen=120)
        self._lock = threading.Lock()  # the sampler thread appends while the view reads
        self.first_objects: int | None = None
        self._objects_at = 0.0
        self._last_objects: tuple[int | None, int | None] = (None, None)
        self._object_errors: dict[str, str] = {}

    def sample(self, *, full: bool = False) -> Sample:
        """A new sample; the graph is counted every ``objects_every`` seconds, or now when ``full``."""
        now = time.monotonic()
        sample = Sample(at=now)
        if full or now - self._tasks_at >= self.tasks_every or not self.history:
            try:
                sample.tasks = self.views.counts_by_type()
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
            self._object_errors = {}
            try:
                self._last_objects = self._count_objects()
            except ServiceError as exc:  # Katalogus (the organisations) or Octopoes (the objects)
                self._object_errors[exc.service] = _short(exc)
            except Exception as exc:
                self._object_errors["graph"] = _short(exc)
        # The graph is counted less often than the rest: its count and its error hold until the next one.
        sample.errors.update(self._object_errors)
        sample.objects, sample.organisations = self._last_objects
        if sample.objects is not None and self.first_objects is None:
            self.first_objects = sample.objects
        with self._lock:
            self.history.append(sample)
        return sample

    def _count_objects(self) -> tuple[int, int]:
        assert self.clients is not None
        deadline = time.monotonic() + COUNT_BUDGET
        organisations = sorted(self.clients.katalogus.organisations())[:MAX_COUNTED_ORGANISATIONS]
        total = 0
        for org in organisations:
            if time.monotonic() > deadline:
                raise TimeoutError(f"counting the graph took longer than {COUNT_BUDGET:.0f}s")
            page = self.clients.octopoes.list_objects(org, types=COUNTED_TYPES, limit=1)
            total += page.count
        return total, len(organisations)

    def rate(self, window: float = 10.0) -> float:
        """Tasks finished per second over the last ``window`` seconds."""
        with self._lock:
            history = list(self.history)
        if len(history) < 2:
            return 0.0
        last = history[-1]
        first = next((s for s in history if last.at - s.at <= window), history[0])
        elapsed = last.at - first.at
        return (last.finished() - first.finished()) / elapsed if elapsed > 0 else 0.0


class Sampler(threading.Thread):
    """Takes samples in the background, so a slow or hung service never delays the view, the
    reaction to Ctrl-C, or the stop (each wait on it is bounded)."""

    def __init__(self, monitor: Monitor, every: float) -> None:
        super().__init__(name="kat-run-sampler", daemon=True)
        self.monitor = monitor
        self.every = every
        self.latest: Sample | None = None
        self._halt = threading.Event()
        self._wake = threading.Event()
        self._full = threading.Event()
        self._full_done = threading.Event()
        self._first = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            full = self._full.is_set()
            try:
                self.latest = self.monitor.sample(full=full)
            except Exception:  # never let the view's thread die
                logger.exception("taking a sample failed")
            self._first.set()
            if full:
                self._full.clear()
                self._full_done.set()
            self._wake.wait(self.every)
            self._wake.clear()

    def first(self, timeout: float) -> Sample | None:
        self._first.wait(timeout)
        return self.latest

    def final(self, timeout: float) -> Sample | None:
        """A full sample taken now, or the latest one if that takes longer than ``timeout``."""
        if self.is_alive():
            self._full_done.clear()
            self._full.set()
            self._wake.set()
            self._full_done.wait(timeout)
        return self.latest

    def stop(self, timeout: float = 1.0) -> bool:
        """Stop sampling; False when a sample is still stuck in a service call."""
        self._halt.set()
        self._wake.set()
        self.join(timeout)
        return not self.is_alive()


def _short(exc: Exception) -> str:
    """The whole reason on one line: a service error without its service's name (the key says
    it), a database error without SQLAlchemy's statement and links."""
    if isinstance(exc, ServiceError):
        return " ".join(f"{exc.endpoint}: {exc.detail}".split())
    return one_line(exc)
