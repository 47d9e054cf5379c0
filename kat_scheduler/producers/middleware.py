"""Cross-cutting concerns around a producer's run, in the manner of dramatiq's middleware.

:func:`run_producer` runs a :class:`~kat_scheduler.producers.base.Producer` with a list of
:class:`Middleware`: each one's ``before_run`` in order, the run, then each one's ``after_run``
(or ``after_failure``, with the exception, which goes on as it was) in reverse order. A hook
keeps what it needs between the two in the :class:`ProducerRun` it is handed (one per run, so a
middleware may serve runs on several threads at once). A hook that raises is logged and the run
and the other hooks go on: bookkeeping never gets in a producer's way.

* :class:`Timed`: logs how long each run took;
* :class:`Recorded`: records the run as its producer's last one in ``producer_runs`` (what
  ``kat-scheduler status`` shows), ``ok`` or ``error``, with a summary of its report, through
  :mod:`kat_scheduler.producers.recording`.

The Celery tasks run every producer with ``[Recorded(...), Timed()]`` (the planning tasks a tick
fans out, whose fan-out is the recorded run, with ``Timed`` alone); the CLI's ``plan`` and
``push`` with ``Timed``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from kat_scheduler.models.producers import ProducerName
from kat_scheduler.producers.base import Producer
from kat_scheduler.producers.recording import RecordedRun, RunRecorder, StoreFactory, describe
from kat_scheduler.storage.tables import utcnow

logger = logging.getLogger(__name__)

ReportT = TypeVar("ReportT")


@dataclass
class ProducerRun:
    """One run of ``producer``, as the middleware sees it."""

    producer: Producer[Any]
    now: datetime
    dry_run: bool
    #: What middleware keeps between its hooks, by its own key.
    notes: dict[str, Any] = field(default_factory=dict)


class Middleware:
    """Hooks around a producer's run; each does nothing unless overridden."""

    def before_run(self, run: ProducerRun) -> None:
        """Before the producer runs."""

    def after_run(self, run: ProducerRun, report: Any) -> None:
        """After the producer returned ``report``."""

    def after_failure(self, run: ProducerRun, exc: BaseException) -> None:
        """After the producer raised ``exc`` (which is raised again once every hook ran)."""


def run_producer(
    producer: Producer[ReportT], now: datetime, dry_run: bool = False, *, middleware: Sequence[Middleware] = ()
) -> ReportT:
    """``producer.run(now, dry_run)`` with ``middleware`` around it."""
    run = ProducerRun(producer, now, dry_run)
    for m in middleware:
        _guarded(m.before_run, run)
    try:
        report = producer.run(now, dry_run)
    except BaseException as exc:
        for m in reversed(middleware):
            _guarded(m.after_failure, run, exc)
        raise
    for m in reversed(middleware):
        _guarded(m.after_run, run, report)
    return report


def _guarded(hook: Callable[..., None], *args: Any) -> None:
    try:
        hook(*args)
    except Exception:
        logger.exception("producer middleware %s failed; the run goes on", getattr(hook, "__qualname__", hook))


class Timed(Middleware):
    """Logs each run's duration (``DEBUG`` for dry runs, else ``INFO``)."""

    def before_run(self, run: ProducerRun) -> None:
        run.notes["timed.started"] = time.perf_counter()

    def after_run(self, run: ProducerRun, report: Any) -> None:
        self._log(run, "ran")

    def after_failure(self, run: ProducerRun, exc: BaseException) -> None:
        self._log(run, f"failed ({describe(exc)})")

    @staticmethod
    def _log(run: ProducerRun, what: str) -> None:
        seconds = time.perf_counter() - run.notes["timed.started"]
        level = logging.DEBUG if run.dry_run else logging.INFO
        logger.log(level, "%s %s in %.3f s%s", run.producer.name, what, seconds, " (dry run)" if run.dry_run else "")


class Recorded(Middleware):
    """Records each real run as ``name``'s last one in ``producer_runs`` (dry runs are not recorded).

    ``summary`` turns the report into the JSON-able summary that is kept; ``errors`` says when a
    run that returned failed in part (``None``: it did not), which records it as ``error``; and
    ``so_far`` is the summary of a run that raised, from its producer (by default, none). How a
    run is recorded is :mod:`kat_scheduler.producers.recording`'s: this only opens the run before
    the producer runs and ends it after.
    """

    def __init__(
        self,
        name: ProducerName,
        store: StoreFactory,
        summary: Callable[[Any], dict[str, Any]],
        errors: Callable[[Any], str | None] = lambda report: None,
        clock: Callable[[], datetime] = utcnow,
        *,
        so_far: Callable[[Any], dict[str, Any]] | None = None,
    ) -> None:
        self.recorder = RunRecorder(name, store, clock=clock)
        self.summary = summary
        self.errors = errors
        self.so_far = so_far

    def before_run(self, run: ProducerRun) -> None:
        if not run.dry_run:
            run.notes["recorded.run"] = self.recorder.start()

    def after_run(self, run: ProducerRun, report: Any) -> None:
        recorded: RecordedRun | None = run.notes.get("recorded.run")
        if recorded is not None:
            recorded.summary = lambda: self.summary(report)
            recorded.error = self.errors(report)
            recorded.end()

    def after_failure(self, run: ProducerRun, exc: BaseException) -> None:
        recorded: RecordedRun | None = run.notes.get("recorded.run")
        if recorded is not None:
            if self.so_far is not None:
                so_far, producer = self.so_far, run.producer
                recorded.summary = lambda: so_far(producer)
            recorded.end(exc)
