"""Recording producer runs in ``producer_runs``: the one place that says what a recorded run is.

A run is recorded as its producer's last one (what ``kat-scheduler status`` shows): when it
started and finished, ``ok`` or ``error`` (with the error's text), and a summary of what it did.
A producer's work matters more than its bookkeeping: every write here is wrapped, and a failure
(database down, an old schema without the table) is logged and forgotten.

* :class:`RunRecorder` records the runs of one producer; :meth:`RunRecorder.start` opens a
  :class:`RecordedRun`, which :meth:`~RecordedRun.end` records: ``ok`` (or ``error`` when the
  run says it failed in part, :attr:`RecordedRun.error`), or ``error`` with the exception that
  ended it. It is also a context manager: :func:`recorded_run` is a ``with`` body's run.
* :class:`ThrottledRecorder` is the listener's, which finishes many batches a second: it writes at
  most once per ``min_interval`` seconds, and at once when the outcome changes.

Two adapters put a run around a producer, with no recording of their own:
:class:`~kat_scheduler.producers.middleware.Recorded`, the middleware the Celery tasks run
their producers with, and :class:`~kat_scheduler.events.recording_handler.RecordingHandler`,
around each batch of the event listener.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from types import TracebackType
from typing import Any

from kat_scheduler.models.producers import ProducerName, RunOutcome
from kat_scheduler.storage.producers import ProducerRunStore
from kat_scheduler.storage.tables import utcnow

logger = logging.getLogger(__name__)

#: Builds the store when a run is recorded (so even creating the engine cannot break a producer).
StoreFactory = Callable[[], ProducerRunStore]
#: A run's summary, or what builds it (only called when the run is written).
Summary = dict[str, Any] | Callable[[], dict[str, Any]]
#: Seconds between two records of the listener, unless its outcome changed.
LISTENER_RECORD_INTERVAL = 5.0


def describe(exc: BaseException) -> str:
    """``exc`` in one line: its type, and its text when it has one."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def record_safely(
    store: StoreFactory,
    name: ProducerName,
    *,
    started_at: datetime,
    finished_at: datetime,
    outcome: RunOutcome,
    summary: Summary,
    error: str | None = None,
) -> bool:
    """Record a run; ``False`` (and a log line) instead of an exception when that fails."""
    try:
        values = summary() if callable(summary) else summary
        store().record(
            name, started_at=started_at, finished_at=finished_at, outcome=outcome, summary=values, error=error
        )
    except Exception as exc:
        logger.warning("could not record the run of %s: %s", name.value, describe(exc))
        return False
    return True


class RunRecorder:
    """Records the runs of producer ``name``, every one, and never raises."""

    def __init__(self, name: ProducerName, store: StoreFactory, *, clock: Callable[[], datetime] = utcnow) -> None:
        self.name = name
        self.store = store
        self.clock = clock

    def start(self, summary: Summary | None = None, *, context: str | None = None) -> RecordedRun:
        """A run starting now; ``context`` (a queue's name) leads the text of an error that ends it."""
        return RecordedRun(self, self.clock(), {} if summary is None else summary, context)

    def record(
        self,
        *,
        started_at: datetime,
        finished_at: datetime,
        outcome: RunOutcome,
        summary: Summary,
        error: str | None = None,
    ) -> bool:
        """Write a run (``summary`` is only called then); returns whether it was written."""
        return record_safely(
            self.store,
            self.name,
            started_at=started_at,
            finished_at=finished_at,
            outcome=outcome,
            summary=summary,
            error=error,
        )


class RecordedRun:
    """One run of a :class:`RunRecorder`'s producer, recorded when it :meth:`end`\\ s.

    What the run did goes in :attr:`summary`; a run that returns normally but failed in part (an
    organisation's service was down) sets :attr:`error`, and is recorded as ``error`` with it.
    """

    def __init__(self, recorder: RunRecorder, started_at: datetime, summary: Summary, context: str | None) -> None:
        self.recorder = recorder
        self.started_at = started_at
        self.summary: Summary = summary
        self.error: str | None = None
        self.context = context

    def end(self, exc: BaseException | None = None) -> bool:
        """Record the run as ended now: ``ok`` (unless :attr:`error`), or ``error`` when ``exc`` ended it.

        A run ended by an interruption rather than an error (``KeyboardInterrupt``, ``SystemExit``)
        is not recorded. Returns whether the run was written.
        """
        if exc is None:
            outcome, error = (RunOutcome.OK, None) if self.error is None else (RunOutcome.ERROR, self.error)
        elif isinstance(exc, Exception):
            outcome, error = (
                RunOutcome.ERROR,
                describe(exc) if self.context is None else f"{self.context}: {describe(exc)}",
            )
        else:
            return False
        return self.recorder.record(
            started_at=self.started_at,
            finished_at=self.recorder.clock(),
            outcome=outcome,
            summary=self.summary,
            error=error,
        )

    def __enter__(self) -> RecordedRun:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.end(exc)


def recorded_run(name: ProducerName, store: StoreFactory, clock: Callable[[], datetime] = utcnow) -> RecordedRun:
    """A ``with`` body's run as ``name``'s last one: ``ok``, or ``error`` if it raised (the exception goes on)."""
    return RunRecorder(name, store, clock=clock).start()


class ThrottledRecorder(RunRecorder):
    """Records runs of one producer at most once per ``min_interval`` seconds (or when the outcome changes).

    A write that failed counts as written, so a database that is down is not asked again for
    every batch.
    """

    def __init__(
        self,
        name: ProducerName,
        store: StoreFactory,
        *,
        min_interval: float = LISTENER_RECORD_INTERVAL,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        super().__init__(name, store, clock=clock)
        self.min_interval = min_interval
        self.monotonic = monotonic
        self._last: tuple[float, RunOutcome] | None = None
        self._lock = threading.Lock()

    def _due(self, outcome: RunOutcome, now: float) -> bool:
        if self._last is None:
            return True
        at, last_outcome = self._last
        return outcome != last_outcome or now - at >= self.min_interval

    def record(
        self,
        *,
        started_at: datetime,
        finished_at: datetime,
        outcome: RunOutcome,
        summary: Summary,
        error: str | None = None,
    ) -> bool:
        """Record this run unless one was recorded less than ``min_interval`` ago; never raises.

        ``summary`` is only called when the run is written. Returns whether it was written.
        """
        with self._lock:
            now = self.monotonic()
            if not self._due(outcome, now):
                return False
            self._last = (now, outcome)
        return super().record(
            started_at=started_at, finished_at=finished_at, outcome=outcome, summary=summary, error=error
        )
