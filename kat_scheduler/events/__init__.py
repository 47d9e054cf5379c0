"""KAT's events: ``scan_profile_mutations`` and ``raw_file_received``.

:mod:`~kat_scheduler.events.consumer` takes them off the events broker (``QUEUE_URI``) in batches
and hands each batch to a handler; :mod:`~kat_scheduler.events.handlers` decides what a batch
turns into.
"""

from kat_scheduler.events.consumer import (
    EVENT_MODELS,
    EventConsumer,
    Handler,
    Rejected,
    TransientError,
    dead_letter_queue,
    run_listener,
)

__all__ = [
    "EVENT_MODELS",
    "EventConsumer",
    "Handler",
    "Rejected",
    "TransientError",
    "dead_letter_queue",
    "run_listener",
]
