"""What the reaper decides, as pure functions of facts (no I/O, no clock: ``now`` is a fact).

The reaper (:mod:`kat_scheduler.workers.reaper`) reads the facts (rows, heartbeats, the broker's
marker and queue depths, Bytes' runs as a tick last saw them), asks these, and acts:

* when a row counts as stuck running, a silent worker node as lost (and the suspicion as
  confirmed), and how long Bytes' runs are worth keeping: :func:`stuck_running_after`,
  :func:`node_lost_after`, :func:`node_confirm_after`, :func:`bytes_runs_horizon`;
* whether a boefje task a repair queued again (its worker stuck or its node lost) may run again:
  not while another run of its pair is going in Bytes (:func:`may_requeue`, the rule of
  :func:`kat_scheduler.rules.is_due` for a run without an end);
* whether stale queued rows are published again: only when their queue is surely empty
  (:func:`lost_messages`);
* what the broker's marker says: kept, adopted, wiped (every waiting task published again) or
  set for the first time (:func:`broker_marker_state`);
* whether this process prunes Bytes' runs now (:func:`prune_due`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from kat_scheduler.rules.due import BytesRun, Decision, DueReason, NotDueReason

# --- when things count as lost ------------------------------------------------------------------


def stuck_running_after(hard_time_limit: float, running_slack: float) -> float:
    """Seconds a row may be ``running`` before its worker counts as lost: the hard limit plus slack."""
    return hard_time_limit + running_slack


def node_lost_after(worker_lost_after: float, heartbeat_interval: float) -> timedelta:
    """How long a worker node may be silent before it is suspected: ``worker_lost_after``, and at
    least three heartbeat intervals."""
    return timedelta(seconds=max(worker_lost_after, 3 * heartbeat_interval))


def node_confirm_after(heartbeat_interval: float) -> timedelta:
    """How old a suspicion must be before it is confirmed: one and a half heartbeat intervals, in
    which any node that can reach the database beats at least once."""
    return timedelta(seconds=1.5 * heartbeat_interval)


def bytes_runs_horizon(retention_days: float, grace_period: float, stall_age: float) -> timedelta:
    """How long Bytes' runs seen by a tick are kept: the longest horizon that can still matter
    (the retention, the grace period plus a day, the stall age)."""
    return max(
        timedelta(days=retention_days),
        timedelta(seconds=grace_period) + timedelta(days=1),
        timedelta(seconds=stall_age),
    )


# --- a boefje task queued again ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequeueFacts:
    """A boefje task a repair queued again, at ``now``: when its last attempt started (``None``:
    it never started), Bytes' newest run of its pair as last seen, and the stall age."""

    now: datetime
    task_started_at: datetime | None
    bytes_run: BytesRun | None
    stall_age: timedelta


def may_requeue(facts: RequeueFacts) -> Decision:
    """Whether a boefje task queued again by a repair may run again at ``facts.now``.

    A run going in Bytes that started at or after the task's last start is (as far as a run's
    times tell) the task's own run, which the repair knows has died: it refuses nothing. One
    that started before, or while the task never started, is another runner's: younger than the
    stall age it refuses (``RUNNING``, ``until`` when it counts as stalled), as it refuses the
    pair on every other path; past it, that run died (``STALLED``). Otherwise ``REPAIRED``.
    """
    run = facts.bytes_run
    started = run.started_at if run is not None and run.ended_at is None else None
    ours_since = facts.task_started_at
    if started is not None and (ours_since is None or started < ours_since):
        if facts.now - started < facts.stall_age:
            return Decision(False, NotDueReason.RUNNING, started + facts.stall_age)
        return Decision(True, DueReason.STALLED)
    return Decision(True, DueReason.REPAIRED)


# --- messages the broker lost -------------------------------------------------------------------


class LostMessages(StrEnum):
    """What becomes of rows queued past the visibility timeout with no worker activity."""

    REPUBLISH = "republish"
    #: Their queue holds messages: a healthy backlog, republishing would only duplicate it.
    WAIT = "queue not empty"
    #: The queue's depth could not be read: nothing is known, nothing is done.
    UNKNOWN = "depth unknown"


def lost_messages(depth: int | None) -> LostMessages:
    """Stale queued rows are published again only when their queue (``depth``; ``None``: could not
    be read) is surely empty, so their messages are surely gone (a purge)."""
    if depth is None:
        return LostMessages.UNKNOWN
    return LostMessages.WAIT if depth > 0 else LostMessages.REPUBLISH


# --- the broker's marker ------------------------------------------------------------------------


class MarkerState(StrEnum):
    """What the broker's marker key says, against the token the database remembers."""

    #: The marker is there and is the one remembered: the broker kept its data.
    KEPT = "kept"
    #: The marker is there but another (another reaper set it, or this database is new): remember it.
    ADOPT = "adopt"
    #: The marker is gone though one was set: the broker lost its data; publish every waiting task
    #: again, then set a new marker.
    WIPED = "wiped"
    #: No marker was ever set: set one.
    FIRST = "first"


def broker_marker_state(present: str | None, remembered: str | None) -> MarkerState:
    """The state of the broker's marker (``present``: the key's token, ``None`` when missing)."""
    if present is not None:
        return MarkerState.KEPT if present == remembered else MarkerState.ADOPT
    return MarkerState.FIRST if remembered is None else MarkerState.WIPED


def prune_due(last: float | None, clock: float, every: float) -> bool:
    """Whether a process that last pruned at ``last`` (a monotonic clock; ``None``: never) prunes
    again at ``clock``, at most once per ``every`` seconds."""
    return last is None or clock - last >= every
