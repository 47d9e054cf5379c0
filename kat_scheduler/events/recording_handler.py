"""The listener's runs in ``producer_runs``: each handled batch is a run, recorded with a throttle.

:class:`RecordingHandler` wraps a handler; the batch's own result (or exception) is passed on
untouched, and a failure to record is only logged (see :mod:`kat_scheduler.producers.recording`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from functools import partial
from typing import Any

from kat_scheduler.events.consumer import Handler, Rejected, Send, StagedHandler, Write
from kat_scheduler.models.producers import RunOutcome
from kat_scheduler.producers.recording import ThrottledRecorder, describe
from kat_scheduler.storage.tables import utcnow


class RecordingHandler:
    """``handler``, and after each batch the listener's run (throttled by ``recorder``).

    Staged itself (see :class:`~kat_scheduler.events.consumer.StagedHandler`): a run is recorded
    when a batch is sent, or when any of its stages fails.
    """

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
        return self.plan(queue, events)()()

    def plan(self, queue: str, events: list[Any]) -> Write:
        """The handler's plan (when it is staged: else the whole batch is done in ``write``)."""
        started = utcnow()
        try:
            write: Write = (
                self.handler.plan(queue, events)
                if isinstance(self.handler, StagedHandler)
                else partial(_at_once, self.handler, queue, events)
            )
        except Exception as exc:
            self._failed(queue, started, exc)
            raise

        def recorded_write() -> Send:
            try:
                send = write()
            except Exception as exc:
                self._failed(queue, started, exc)
                raise

            def recorded_send() -> list[Rejected]:
                try:
                    rejected = send()
                except Exception as exc:
                    self._failed(queue, started, exc)
                    raise
                self.recorder.record(
                    started_at=started, finished_at=utcnow(), outcome=RunOutcome.OK, summary=self.summary
                )
                return rejected

            return recorded_send

        return recorded_write

    def _failed(self, queue: str, started: datetime, exc: Exception) -> None:
        self.recorder.record(
            started_at=started,
            finished_at=utcnow(),
            outcome=RunOutcome.ERROR,
            summary=self.summary,
            error=f"{queue}: {describe(exc)}",
        )


def _at_once(handler: Handler, queue: str, events: list[Any]) -> Send:
    """A plain handler's whole batch, done as a staged handler's writes."""
    rejected = handler(queue, events)
    return lambda: rejected
