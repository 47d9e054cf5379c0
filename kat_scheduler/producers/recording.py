"""Recording producer runs in ``producer_runs`` without ever getting in a producer's way.

A producer's work matters more than its bookkeeping: every write here is wrapped, and a failure
(database down, an old schema without the table) is logged and forgotten.

* :func:`recorded_run` wraps one run of a beat-ticked task: ``ok`` when its body returns,
  ``error`` (with the exception's text) when it raises, and the exception goes on as it was;
  a body that failed in part says so in :attr:`RunNote.error`.
* :class:`ThrottledRecorder` is for the event listener, which finishes many batches a second: it
  writes at most once per ``min_interval`` seconds, and at once when the outcome changes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kat_scheduler.models.producers import ProducerName, RunOutcome
from kat_scheduler.storage.producers import ProducerRunStore
from kat_scheduler.storage.tables import utcnow

logger = logging.getLogger(__name__)

#: Builds the store when a run is recorded (so even creating the engine cannot break a producer).
StoreFactory = Callable[[], ProducerRunStore]
#: Seconds between two records of the listener, unless its outcome changed.
LISTENER_RECORD_INTERVAL = 5.0


def describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def record_safely(
    store: StoreFactory,
    name: ProducerName,
    *,
    started_at: datetime,
    finished_at: datetime,
    outcome: RunOutcome,
    summary: dict[str, Any] | Callable[[], dict[str, Any]],
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


@dataclass
class RunNote:
    """Handed to the body of :func:`recorded_run`: what the run did goes in ``summary``.

    A body that returns normally but failed in part (an organisation's service was down) sets
    ``error``; the run is then recorded as ``error`` with that text.
    """

    summary: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@contextmanager
def recorded_run(name: ProducerName, store: StoreFactory, clock: Callable[[], datetime] = utcnow) -> Iterator[RunNote]:
    """Record the run of the ``with`` body as ``name``'s last run (``ok``, or ``error`` if it raised)."""
    note = RunNote()
    started = clock()
    try:
        yield note
    except Exception as exc:
        record_safely(
            store,
            name,
            started_at=started,
            finished_at=clock(),
            outcome=RunOutcome.ERROR,
            summary=note.summary,
            error=describe(exc),
        )
        raise
    record_safely(
        store,
        name,
        started_at=started,
        finished_at=clock(),
        outcome=RunOutcome.OK if note.error is None else RunOutcome.ERROR,
        summary=note.summary,
        error=note.error,
    )


class ThrottledRecorder:
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
    ) -> None:
        self.name = name
        self.store = store
        self.min_interval = min_interval
        self.monotonic = monotonic
        self._last: tuple[float, RunOutcome] | None = None
        self._lock = threading.Lock()

    def due(self, outcome: RunOutcome) -> bool:
        """Whether a run ending now with ``outcome`` would be written."""
        with self._lock:
            return self._due(outcome, self.monotonic())

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
        summary: Callable[[], dict[str, Any]],
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
        return record_safely(
            self.store,
            self.name,
            started_at=started_at,
            finished_at=finished_at,
            outcome=outcome,
            summary=summary,
            error=error,
        )
