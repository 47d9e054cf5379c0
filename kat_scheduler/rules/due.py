"""Whether a (boefje, object) pair is due to run again: one pure function for every path.

KAT's rule (KAT-API.md, "How KAT's scheduler decides"), from the facts of one pair:

* a pair that never ran is due;
* while Bytes' newest run of the pair has a start and no end, the boefje is running (under some
  runner): not due, unless that start is older than the stall age, then the run died and the
  pair is due again (a dead run counts as no run);
* otherwise the last run is the later end of our own last run and Bytes' newest run; when the
  plugin has a ``cron``, cron decides: due once a cron time passed since that end;
* else due once the grace period (the plugin's ``interval`` minutes, else the default) has passed
  since that end.

The tick, due schedules and the event handlers call :func:`is_due` with the facts they have
(events and due schedules know our own history, not Bytes'). No I/O, no clock: ``now`` is a fact.

A manual push ("scan now": ``kat-scheduler push boefje``, the API's push) asks :func:`may_push`
instead: it bypasses grace, interval and cron, never a run still going in Bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from kat_scheduler.models.plugins import Boefje
from kat_scheduler.rules.timing import last_cron, next_cron


class DueReason(StrEnum):
    """Why a pair is due."""

    NEVER_RUN = "never run"
    GRACE_OVER = "grace over"
    CRON_PASSED = "cron time passed"
    STALLED = "stalled run in Bytes"
    MANUAL = "queued by hand"
    REPAIRED = "queued again by the reaper"


class NotDueReason(StrEnum):
    """Why a pair is not due (yet)."""

    GRACE = "within grace period"
    CRON = "before its next cron time"
    RUNNING = "running in Bytes"


@dataclass(frozen=True, slots=True)
class BytesRun:
    """Bytes' newest run of a pair (by ``started_at``): its start and, once it ended, its end."""

    started_at: datetime | None
    ended_at: datetime | None


@dataclass(frozen=True, slots=True)
class PairFacts:
    """What is known about one pair at ``now``.

    ``last_ended``: the end of our own last run (``None``: none, or unknown to the caller);
    ``bytes_run``: Bytes' newest run (``None``: none, or not asked); ``interval`` (minutes) and
    ``cron``: the plugin's; ``default_grace``: the grace period when the plugin has no interval;
    ``stall_age``: how long after its start a run without an end counts as dead.
    """

    now: datetime
    last_ended: datetime | None
    bytes_run: BytesRun | None
    interval: int | None
    cron: str | None
    default_grace: timedelta
    stall_age: timedelta


def boefje_facts(
    boefje: Boefje,
    *,
    now: datetime,
    last_ended: datetime | None,
    bytes_run: BytesRun | None,
    default_grace: timedelta,
    stall_age: timedelta,
) -> PairFacts:
    """The facts of a pair of ``boefje`` (its ``interval`` and ``cron``) and an object."""
    return PairFacts(now, last_ended, bytes_run, boefje.interval, boefje.cron, default_grace, stall_age)


@dataclass(frozen=True, slots=True)
class Decision:
    """Due or not, and why.

    ``until``: when a pair that is not due becomes due, if nothing changes meanwhile (for a
    running pair, when its run counts as stalled). ``last_ended``: the run end the decision
    counted from (``None`` when no ended run counted), for ranking and for the next deadline.
    """

    due: bool
    reason: DueReason | NotDueReason
    until: datetime | None = None
    last_ended: datetime | None = None


#: The decisions that depend on nothing but their reason (the tick makes many of them).
_NEVER_RUN = Decision(True, DueReason.NEVER_RUN)
_STALLED = Decision(True, DueReason.STALLED)


def is_due(facts: PairFacts) -> Decision:
    """Whether the pair of ``facts`` may run at ``facts.now``; see the module for the rule."""
    now = facts.now
    run = facts.bytes_run
    stalled = False
    last = facts.last_ended
    if run is not None:
        if run.ended_at is not None:
            if last is None or run.ended_at > last:
                last = run.ended_at
        elif run.started_at is not None:
            if now - run.started_at < facts.stall_age:
                return Decision(False, NotDueReason.RUNNING, run.started_at + facts.stall_age, last)
            stalled = True
    if last is None:
        return _STALLED if stalled else _NEVER_RUN
    if facts.cron:
        if last < last_cron(facts.cron, now):
            return Decision(True, DueReason.STALLED if stalled else DueReason.CRON_PASSED, None, last)
        return Decision(False, NotDueReason.CRON, next_cron(facts.cron, last), last)
    until = last + (timedelta(minutes=facts.interval) if facts.interval else facts.default_grace)
    if now < until:
        return Decision(False, NotDueReason.GRACE, until, last)
    return Decision(True, DueReason.STALLED if stalled else DueReason.GRACE_OVER, None, last)


def counted_from(decision: Decision, run: BytesRun | None) -> datetime:
    """What the schedule of a pair that is not due counts its next deadline from: the end of the
    run ``decision`` counted, or, for a run still going in Bytes (``run``), its start (such a run
    typically ends soon after; should it die instead, the pair is due one period after that start)."""
    if decision.reason == NotDueReason.RUNNING:
        assert run is not None and run.started_at is not None
        return run.started_at
    assert decision.last_ended is not None
    return decision.last_ended


def may_push(facts: PairFacts) -> Decision:
    """Whether a pair may be queued by hand at ``facts.now`` ("scan now").

    Grace, interval and cron do not apply: that is what a push is for. A run still going in
    Bytes does: Bytes' newest run with a start and no end, younger than the stall age, refuses
    the push (``RUNNING``, ``until`` when it counts as stalled); one past the stall age died and
    does not (``STALLED``). A run going in Bytes that started before our own last run ended is
    older news than that run: it refuses nothing. Otherwise ``MANUAL``.
    """
    run = facts.bytes_run
    last = facts.last_ended
    started = run.started_at if run is not None and run.ended_at is None else None
    if started is not None and (last is None or started > last):
        if facts.now - started < facts.stall_age:
            return Decision(False, NotDueReason.RUNNING, started + facts.stall_age, last)
        return Decision(True, DueReason.STALLED, None, last)
    return Decision(True, DueReason.MANUAL, None, last)
