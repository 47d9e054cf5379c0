"""The producers: each decides on its own what to queue, behind one :class:`Producer` protocol.

* :mod:`~kat_scheduler.producers.tick`: the cold planning tick (:class:`TickProducer`);
* :mod:`~kat_scheduler.producers.due`: due boefje schedules (:class:`DueSchedulesProducer`);
* :mod:`~kat_scheduler.producers.push`: a boefje queued by hand (:class:`ManualPush`);
* :mod:`~kat_scheduler.producers.reports`: due report schedules, held for a pop (:class:`ReportProducer`).

What they share has one module each: :mod:`~kat_scheduler.producers.base` (the protocol and the
:class:`ProducerContext` of clients, stores, settings and publisher),
:mod:`~kat_scheduler.producers.results` (:class:`PlanReport`),
:mod:`~kat_scheduler.producers.backpressure` (reading the queue depth; a depth that cannot be
read holds the low bands back), :mod:`~kat_scheduler.producers.bytes_history` (Bytes' run
history, listed in bulk and kept) and :mod:`~kat_scheduler.producers.dispatching` (claims ahead,
publishing in order, bookkeeping after). Cross-cutting concerns wrap a run as middleware
(:mod:`~kat_scheduler.producers.middleware`: timing, recording in ``producer_runs``). Whether a
pair may run and is due, and its rank, are :mod:`kat_scheduler.rules`'; which pairs are
candidates, :mod:`kat_scheduler.planning.candidates`'.

The Celery tasks and the CLI run them through :func:`~kat_scheduler.producers.middleware.run_producer`
with their middleware (``Recorded``, ``Timed``; see ``celery_tasks/scheduler.py``), on the process's
:class:`ProducerContext` (``runtime.producers()``); a benchmark that runs one in process calls ``run``.
"""

from kat_scheduler.producers.base import Producer, ProducerContext
from kat_scheduler.producers.due import DueSchedulesProducer
from kat_scheduler.producers.push import ManualPush, PushRefused, PushResult
from kat_scheduler.producers.results import PlanReport
from kat_scheduler.producers.tick import OrgPlan, TickProducer

__all__ = [
    "DueSchedulesProducer",
    "ManualPush",
    "OrgPlan",
    "PlanReport",
    "Producer",
    "ProducerContext",
    "PushRefused",
    "PushResult",
    "TickProducer",
]
