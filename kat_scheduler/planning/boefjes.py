"""``BoefjePlanner``: the transitional entry point to the boefje producers.

The tick, due schedules and manual push are producers of their own in :mod:`kat_scheduler.producers`
(:class:`~kat_scheduler.producers.TickProducer`, :class:`~kat_scheduler.producers.DueSchedulesProducer`,
:class:`~kat_scheduler.producers.ManualPush`), each behind the one
:class:`~kat_scheduler.producers.Producer` protocol. This facade keeps the calls its callers make
today (``plan``, ``queue_due``, ``push``, ``organisations``) and builds the producer for each from
its current clients, stores, settings and publisher. New code should use the producers directly;
the callers move over one by one, after which this module goes.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from kat_scheduler.clients import KATClients
from kat_scheduler.producers import (
    DueSchedulesProducer,
    ManualPush,
    OrgPlan,
    PlanReport,
    ProducerContext,
    PushRefused,
    PushResult,
    TickProducer,
)
from kat_scheduler.producers.middleware import Middleware, run_producer
from kat_scheduler.settings import Settings
from kat_scheduler.storage.schedules import ScheduleStore
from kat_scheduler.storage.tasks import TaskStore

if TYPE_CHECKING:
    from kat_scheduler.dispatch.publishing import Publisher

#: Re-exported for the callers that import them from here (``celery_tasks/scheduler.py``, the CLI).
__all__ = ["BoefjePlanner", "PlanReport", "PushRefused", "PushResult"]


class BoefjePlanner:
    """The boefje producers behind the calls of old: ``plan`` (the tick), ``queue_due``, ``push``.

    Transitional: each call builds its producer from the attributes as they are then (a caller
    may change ``settings`` between calls), so it behaves exactly as that producer does, and runs
    it with ``middleware`` around it (none by default).
    """

    def __init__(
        self,
        clients: KATClients,
        tasks: TaskStore,
        schedules: ScheduleStore,
        settings: Settings,
        publisher: Publisher | None = None,
        *,
        middleware: Sequence[Middleware] = (),
    ) -> None:
        self.clients = clients
        self.tasks = tasks
        self.schedules = schedules
        self.settings = settings
        self.publisher = publisher
        #: Run around every producer run (:func:`~kat_scheduler.producers.middleware.run_producer`).
        self.middleware = list(middleware)

    @property
    def context(self) -> ProducerContext:
        return ProducerContext(self.clients, self.tasks, self.schedules, self.settings, self.publisher)

    def organisations(self) -> list[str]:
        """Every organisation Katalogus knows."""
        return self.context.organisations()

    def tick(self, organisations: Sequence[str] | None = None) -> TickProducer:
        """The tick's producer for ``organisations`` (all of Katalogus' if ``None``)."""
        return TickProducer(self.context, organisations)

    def plan(self, organisations: Sequence[str] | None, *, now: datetime, dry_run: bool = False) -> PlanReport:
        """Plan ``organisations`` (all of Katalogus' if ``None``) and, unless dry, queue the result."""
        return run_producer(self.tick(organisations), now, dry_run, middleware=self.middleware)

    def plan_org(self, organisation: str, now: datetime) -> OrgPlan:
        """The candidates of one organisation (nothing claimed or written)."""
        return self.tick([organisation]).plan_org(organisation, now)

    def queue_due(self, *, now: datetime, dry_run: bool = False) -> PlanReport:
        """Queue every due schedule (oldest deadline first, no cap), re-checking eligibility."""
        return run_producer(DueSchedulesProducer(self.context), now, dry_run, middleware=self.middleware)

    def push(self, organisation: str, boefje_id: str, input_ooi: str | None, *, now: datetime) -> PushResult:
        """Queue one boefje at band 0: bypasses grace, never clearance. Raises :class:`PushRefused`."""
        push = ManualPush(self.context, organisation, boefje_id, input_ooi)
        return run_producer(push, now, middleware=self.middleware)
