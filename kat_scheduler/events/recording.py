"""The listener's runs in ``producer_runs``: each handled batch is a run, recorded with a throttle.

:class:`RecordingHandler` wraps a handler; the batch's own result (or exception) is passed on
untouched, and a failure to record is only logged (see :mod:`kat_scheduler.recording`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kat_scheduler.events.consumer import Handler, Rejected
from kat_scheduler.models.producers import RunOutcome
from kat_scheduler.recording import ThrottledRecorder, describe
from kat_scheduler.storage.tables import utcnow


class RecordingHandler:
    """``handler``, and after each batch the listener's run (throttled by ``recorder``)."""

    def __init__(
        self,
        handler: Handler,
        recorder: ThrottledRecorder,
        summary: Callable[[], dict[str, Any]],
    ) -> None:
        self.handler = handler
        self.recorder = recorder
        self.summary = summary

    def __call__(self, queue: str, events: list[Any]) -> list[Rejected]:
        started = utcnow()
        try:
            rejected = self.handler(queue, events)
        except Exception as exc:
            self.recorder.record(
                started_at=started,
                finished_at=utcnow(),
                outcome=RunOutcome.ERROR,
                summary=self.summary,
                error=f"{queue}: {describe(exc)}",
            )
            raise
        self.recorder.record(started_at=started, finished_at=utcnow(), outcome=RunOutcome.OK, summary=self.summary)
        return rejected
