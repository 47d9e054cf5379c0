"""Whether a boefje may run on an object: pure rules, no I/O, no clock.

The rules of KAT (KAT-API.md, "How KAT's scheduler decides"):

* the boefje is enabled for the organisation;
* it consumes the object's type (a boefje with no ``consumes`` only runs on manual request);
* its clearance need is met: ``boefje.scan_level <= object's level``;
* a boefje with ``run_on`` runs only on the matching scan-profile events, never periodically;
* not while a task for the same hash is live; whether a pair is due again (grace, cron, a run
  still going in Bytes) is :func:`kat_scheduler.rules.due.is_due`'s.

Each rule that says no names itself with a :class:`SkipReason`, so ``plan --dry-run`` can explain.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum

from kat_scheduler.models.ooi import ListedObject
from kat_scheduler.models.plugins import Boefje
from kat_scheduler.rules.due import NotDueReason, boefje_facts, is_due


class SkipReason(StrEnum):
    NOT_ENABLED = "not enabled"
    NO_CONSUMES = "manual only (no consumes)"
    TYPE_NOT_CONSUMED = "type not consumed"
    CLEARANCE = "scan level too low"
    RUN_ON_ONLY = "runs on events only"
    RUN_ON_OPERATION = "not on this operation"
    GRACE = "within grace period"
    CRON = "before its next cron time"
    RUNNING = "running in Bytes"
    LIVE = "already live"
    SCHEDULED = "already scheduled"
    DESCHEDULED = "descheduled by its boefje"
    BACKPRESSURE = "queue full (backpressure)"
    ORG_CAP = "organisation cap reached"
    RATE_LIMITED = "rate limit's window full"
    INVALID_PLUGIN = "plugin does not validate"
    INVALID_OBJECT = "object does not validate"


class Trigger(StrEnum):
    """Why a candidate exists; rankers use it."""

    MANUAL = "manual"
    NEW_OBJECT = "new object"
    SCHEDULE = "schedule"
    PLAN = "plan"


def grace_period(boefje: Boefje, default_seconds: int) -> timedelta:
    """How long after a run ended the same boefje waits before running on the same object again."""
    if boefje.interval:
        return timedelta(minutes=boefje.interval)
    return timedelta(seconds=default_seconds)


def clearance_skip(boefje: Boefje, ooi: ListedObject) -> SkipReason | None:
    """Why ``boefje`` may not run on ``ooi`` whatever the trigger (manual included), or ``None``."""
    if boefje.scan_level > ooi.scan_level:
        return SkipReason.CLEARANCE
    return None


def static_skip(boefje: Boefje, ooi: ListedObject, *, periodic: bool) -> SkipReason | None:
    """The rules that need no history: enabled, consumes, clearance, run_on.

    ``periodic`` is true for the planner and due schedules, false for scan-profile events.
    """
    if not boefje.enabled:
        return SkipReason.NOT_ENABLED
    if not boefje.consumes:
        return SkipReason.NO_CONSUMES
    if ooi.object_type not in boefje.consumes:
        return SkipReason.TYPE_NOT_CONSUMED
    reason = clearance_skip(boefje, ooi)
    if reason is not None:
        return reason
    if periodic and boefje.run_on:
        return SkipReason.RUN_ON_ONLY
    return None


#: The skip a pair that is not due counts under.
NOT_DUE_SKIP: dict[NotDueReason, SkipReason] = {
    NotDueReason.GRACE: SkipReason.GRACE,
    NotDueReason.CRON: SkipReason.CRON,
    NotDueReason.RUNNING: SkipReason.RUNNING,
}


def grace_skip(
    boefje: Boefje, last_run_ended: datetime | None, now: datetime, default_seconds: int
) -> SkipReason | None:
    """Why a boefje whose last run (by our own history) ended at ``last_run_ended`` is not due, or ``None``.

    A shorthand for :func:`~kat_scheduler.rules.due.is_due` without Bytes' facts (kept for callers
    that know only a last run end): cron decides when the boefje has one, else the grace period.
    """
    facts = boefje_facts(
        boefje,
        now=now,
        last_ended=last_run_ended,
        bytes_run=None,
        default_grace=timedelta(seconds=default_seconds),
        stall_age=timedelta(0),
    )
    decision = is_due(facts)
    return None if decision.due else NOT_DUE_SKIP[NotDueReason(decision.reason)]
