"""KAT's scheduling rules, as pure functions: no I/O, no clock, no storage, broker or client imports.

This package owns the decisions every producer shares, so no path keeps a copy of its own:

* :mod:`~kat_scheduler.rules.eligibility`: whether a boefje may run on an object at all
  (enabled, consumes, clearance, ``run_on``), with a :class:`SkipReason` when it may not;
* :mod:`~kat_scheduler.rules.due`: whether a pair is due to run again (never run, grace,
  interval, cron, a run still going or stalled in Bytes), from the pair's facts and ``now``;
* :mod:`~kat_scheduler.rules.ranking`: how urgent a candidate is (band and score);
* :mod:`~kat_scheduler.rules.identity`: a task's hash, identical to mula's;
* :mod:`~kat_scheduler.rules.payloads`: the task JSON KAT expects and the Celery message kwargs.

The tick, due schedules, manual push, the event handlers and ``plan --dry-run`` call these.
"""

from kat_scheduler.rules.due import (
    BytesRun,
    Decision,
    DueReason,
    NotDueReason,
    PairFacts,
    boefje_facts,
    counted_from,
    is_due,
    may_push,
)
from kat_scheduler.rules.eligibility import (
    NOT_DUE_SKIP,
    SkipReason,
    Trigger,
    clearance_skip,
    grace_period,
    grace_skip,
    static_skip,
)

__all__ = [
    "NOT_DUE_SKIP",
    "BytesRun",
    "Decision",
    "DueReason",
    "NotDueReason",
    "PairFacts",
    "SkipReason",
    "Trigger",
    "boefje_facts",
    "clearance_skip",
    "counted_from",
    "grace_period",
    "grace_skip",
    "is_due",
    "may_push",
    "static_skip",
]
