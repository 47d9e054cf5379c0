"""What the routes share: the settings, one engine per application, the stores, the KAT clients."""

from __future__ import annotations

import threading
import uuid
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fastapi import Request
from sqlalchemy import Engine, Row

from kat_scheduler.api.batching import Batcher
from kat_scheduler.api.known_pops import PopForms
from kat_scheduler.clients import KATClients, clients_from_settings
from kat_scheduler.dispatch.dispatcher import Dispatchable, Dispatcher, DispatchResult
from kat_scheduler.dispatch.publishing import Publisher, make_publisher
from kat_scheduler.models.tasks import SchedulerId
from kat_scheduler.settings import Settings
from kat_scheduler.storage.filters import FilterRequest, conditions, split_images
from kat_scheduler.storage.tables import utcnow
from kat_scheduler.storage.task_views import HeldConnection, PopStatement, TaskViews
from kat_scheduler.storage.tasks import NewTask, TaskStore

#: Pop statements kept per application: one per scheduler and filter body in use.
POP_STATEMENTS = 256
#: The most tasks one pop may take, and one batch of pops.
MAX_POP = 500
#: The most pushes claimed in one statement.
MAX_PUSH_BATCH = 100


@dataclass
class ApiContext:
    settings: Settings
    engine: Engine
    tasks: TaskViews
    #: ``SCHEDULER_PULL_SCHEDULERS``: the schedulers whose tasks are popped, not published.
    pull_schedulers: frozenset[SchedulerId] = field(init=False)
    #: Schedulers delivered through Celery that a runner tried to pop from (logged once each).
    warned_pops: set[SchedulerId] = field(default_factory=set, repr=False)
    #: Pop requests the pop route accepted, run again without it (:mod:`kat_scheduler.api.known_pops`).
    pop_forms: PopForms = field(default_factory=PopForms, repr=False)
    _clients: KATClients | None = field(default=None, repr=False)
    _publisher: Publisher | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _poppers: OrderedDict[tuple[SchedulerId, str | None], Batcher[int, list[Row[Any]]]] = field(
        default_factory=OrderedDict, repr=False
    )
    _holder: Batcher[NewTask, tuple[bool, datetime]] | None = field(default=None, repr=False)
    #: The connections the poppers hold between batches (given back on close, too).
    _held: weakref.WeakSet[HeldConnection] = field(default_factory=weakref.WeakSet, repr=False)
    #: One dispatch at a time over the one broker connection.
    _dispatch_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.pull_schedulers = self.settings.pull_scheduler_ids

    @property
    def clients(self) -> KATClients:
        """Octopoes, Katalogus and Bytes, created on first use (only health with externals needs them)."""
        with self._lock:
            if self._clients is None:
                self._clients = clients_from_settings(self.settings)
            return self._clients

    def popper(self, scheduler_id: SchedulerId, filters: FilterRequest | None) -> Batcher[int, list[Row[Any]]]:
        """The pops of ``scheduler_id`` with these filters, run together when they arrive together
        (:class:`~kat_scheduler.api.batching.Batcher`): a request is its ``limit``, its result the
        tasks it took. Built (and the filters checked, raising
        :class:`~kat_scheduler.storage.filters.FilterError`) the first time, then kept: a runner
        pops with the same body all its life, so the pops after its first build nothing."""
        key = (scheduler_id, None if filters is None else filters.model_dump_json())
        with self._lock:
            found = self._poppers.get(key)
            if found is not None:
                self._poppers.move_to_end(key)
                return found
        dialect = self.engine.dialect.name
        # The workers' image filter, taken out: a pop by image reads only the images asked for.
        images, rest = split_images(filters) if dialect == "postgresql" else ((), filters)
        where = conditions(rest, dialect)
        built = self._popper(self.tasks.pop_statement(scheduler_id, where=where, images=images))
        with self._lock:
            self._poppers[key] = built
            if len(self._poppers) > POP_STATEMENTS:
                self._poppers.popitem(last=False)
        return built

    def _popper(self, statement: PopStatement) -> Batcher[int, list[Row[Any]]]:
        tasks = self.tasks
        # Batches following each other pop on one connection, given back once no pop waits.
        held = HeldConnection(self.engine)
        with self._lock:
            self._held.add(held)

        def pop(limits: list[int]) -> list[list[Row[Any]]]:
            # One statement for the batch; its rows, most urgent first, go to the requests in the
            # order they came, each its own limit's worth.
            rows = tasks.pop_with(statement, sum(limits), held=held)
            taken: list[list[Row[Any]]] = []
            for limit in limits:
                taken.append(rows[:limit])
                rows = rows[limit:]
            return taken

        def hand_back(lost: list[list[Row[Any]]]) -> None:
            tasks.hand_back([row.id for rows in lost for row in rows])

        return Batcher(pop, most=MAX_POP, weight=lambda limit: limit, lost=hand_back, idle=held.release)

    def dispatch(self, item: Dispatchable) -> DispatchResult:
        """Claim ``item``'s row, then publish its message: the producers' own path (``dispatch.py``)."""
        with self._dispatch_lock:
            if self._publisher is None:
                self._publisher = make_publisher(self.settings)
            dispatcher = Dispatcher(TaskStore(self.engine), self._publisher, pull=self.settings.pull_scheduler_ids)
            return dispatcher.dispatch([item])

    def claim_for_pull(self, tasks: list[NewTask], now: datetime | None = None) -> list[bool]:
        """Claim the rows of ``tasks`` (of pull schedulers) through the producers' own path
        (:meth:`Dispatcher.hold`): queued for a pop, never published; for each, whether it was
        claimed (its id and its hash were free). A task whose id comes again in ``tasks`` is
        claimed after the others, so the first of them is the one that can win."""
        dispatcher = Dispatcher(TaskStore(self.engine), None, pull=self.settings.pull_scheduler_ids)
        first: dict[uuid.UUID, int] = {}
        for index, task in enumerate(tasks):
            first.setdefault(task.id, index)
        result = dispatcher.hold([tasks[index] for index in first.values()], now=now)
        won = {task.id for task in result.published_tasks}
        claimed = [first[task.id] == index and task.id in won for index, task in enumerate(tasks)]
        for index, task in enumerate(tasks):
            if first[task.id] != index:  # its id again: taken by the first, unless that one lost
                claimed[index] = dispatcher.hold([task], now=now).claimed == 1
        return claimed

    @property
    def holder(self) -> Batcher[NewTask, tuple[bool, datetime]]:
        """Pushes to pull schedulers, claimed together when they arrive together: a request is
        its task, its result whether it was claimed and when."""
        with self._lock:
            if self._holder is None:

                def hold(tasks: list[NewTask]) -> list[tuple[bool, datetime]]:
                    now = utcnow()
                    return [(claimed, now) for claimed in self.claim_for_pull(tasks, now=now)]

                self._holder = Batcher(hold, most=MAX_PUSH_BATCH)
            return self._holder

    def close(self) -> None:
        with self._lock:
            held = list(self._held)
        for connection in held:  # a popper stopped with the loop, before it gave its connection back
            connection.release()
        with self._lock:
            if self._clients is not None:
                self._clients.close()
                self._clients = None
        with self._dispatch_lock:
            if self._publisher is not None:
                self._publisher.close()
                self._publisher = None


async def context(request: Request) -> ApiContext:
    """The application's context (a FastAPI dependency; ``async`` because it does no I/O: FastAPI
    runs a plain ``def`` dependency on its thread pool, one more thread hop per request)."""
    found = request.app.state.context
    assert isinstance(found, ApiContext)
    return found
