"""The listener's runs in ``producer_runs``: each handled batch is a run, recorded with a throttle.

:class:`RecordingHandler` wraps a handler and opens a run of the listener's
:class:`~kat_scheduler.producers.recording.ThrottledRecorder` per batch, ended when the batch is
sent or when any of its stages raises. How a run is recorded (times, outcome, the error's text,
the throttle, a failure to record only logged) is :mod:`kat_scheduler.producers.recording`'s; the
batch's own result (or exception) is passed on untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

from kat_scheduler.events.consumer import Handler, Rejected, Send, StagedHandler, Write
from kat_scheduler.producers.recording import RecordedRun, ThrottledRecorder

T = TypeVar("T")


class RecordingHandler:
    """``handler``, and after each batch the listener's run (throttled by ``recorder``).

    Staged itself (see :class:`~kat_scheduler.events.consumer.StagedHandler`): a run is recorded
    when a batch is sent, or when any of its stages fails (the error led by the queue's name).
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
        run = self.recorder.start(self.summary, context=queue)
        handler = self.handler
        write: Write = (
            _stage(run, partial(handler.plan, queue, events))
            if isinstance(handler, StagedHandler)
            else partial(_at_once, handler, queue, events)
        )

        def recorded_write() -> Send:
            send = _stage(run, write)

            def recorded_send() -> list[Rejected]:
                rejected = _stage(run, send)
                run.end()
                return rejected

            return recorded_send

        return recorded_write


def _stage(run: RecordedRun, stage: Callable[[], T]) -> T:
    """``stage()``; an exception ends ``run`` (recorded) and goes on."""
    try:
        return stage()
    except Exception as exc:
        run.end(exc)
        raise


def _at_once(handler: Handler, queue: str, events: list[Any]) -> Send:
    """A plain handler's whole batch, done as a staged handler's writes."""
    rejected = handler(queue, events)
    return lambda: rejected
