"""KAT's scheduling rules, as pure functions: no I/O, no clock, no storage, broker or client imports.

This package owns the decisions every producer shares, so no path keeps a copy of its own:

* :mod:`~kat_scheduler.rules.eligibility`: whether a boefje may run on an object at all
  (enabled, consumes, clearance, ``run_on``), with a :class:`SkipReason` when it may not;
* :mod:`~kat_scheduler.rules.due`: whether a pair is due to run again (never run, grace,
  interval, cron, a run still going or stalled in Bytes), from the pair's facts and ``now``;
  and whether a manual push may queue it (:func:`may_push`: grace, interval and cron bypassed,
  never a run going in Bytes);
* :mod:`~kat_scheduler.rules.repair`: what the reaper decides (when a row is stuck or a node
  lost, whether a boefje task may be queued again while Bytes shows its pair running, whether
  lost messages are republished, what the broker's marker says);
* :mod:`~kat_scheduler.rules.ranking`: how urgent a candidate is (band and score);
* :mod:`~kat_scheduler.rules.identity`: a task's hash, identical to mula's;
* :mod:`~kat_scheduler.rules.payloads`: the task JSON KAT expects and the Celery message kwargs.

The tick, due schedules, manual push (the CLI's and the API's, through one check in
:mod:`kat_scheduler.producers.push`), the event handlers, ``plan --dry-run`` and the reaper call these.
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
