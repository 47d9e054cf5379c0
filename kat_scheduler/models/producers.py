"""The producers whose runs are recorded in ``producer_runs`` (and shown by ``kat-scheduler status``)."""

from __future__ import annotations

from enum import StrEnum


class ProducerName(StrEnum):
    """Everything that queues or repairs work on its own: beat's ticks and the event listener."""

    PLAN_BOEFJES = "plan-boefjes"
    QUEUE_DUE_SCHEDULES = "queue-due-schedules"
    QUEUE_REPORT_SCHEDULES = "queue-report-schedules"
    REAP = "reap"
    LISTENER = "listener"


class RunOutcome(StrEnum):
    OK = "ok"
    ERROR = "error"
