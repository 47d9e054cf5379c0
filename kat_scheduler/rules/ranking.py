"""Rankers: how urgent a candidate is. Pure functions of (candidate, now, settings): no I/O, no clock.

A rank is a **band** 0–9 (0 most urgent; it becomes the broker priority) plus a fine **score**
(lower = sooner; stored in ``tasks.priority`` and used to order within a band when publishing).

Boefje bands:

| band | who |
|---|---|
| 0 | manual requests (also bypass grace, never clearance) |
| 1 | new objects (a scan-profile create or a raised level), never run before |
| 2 | never run before, found by the planner |
| 3–8 | re-runs, by how overdue they are relative to their interval: ≥ 4× overdue → 3, … , barely due → 8 |
| 9 | re-runs with no known last run that are not new (history lost) |

Within a band the score orders by clearance need (higher scan level first, it was asked for
deliberately) and then by how long the object has waited. Normalizers: older raw data first,
band 4 for every raw file, manual 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from kat_scheduler.queues import LEAST_URGENT_BAND, MANUAL_BAND
from kat_scheduler.rules import Trigger
from kat_scheduler.rules.due import Decision, DueReason

NEW_OBJECT_BAND = 1
NEVER_RUN_BAND = 2
#: Re-run bands from most to least overdue, and the overdue ratio at which each starts.
OVERDUE_BANDS: tuple[tuple[float, int], ...] = ((4.0, 3), (2.0, 4), (1.5, 5), (1.2, 6), (1.05, 7), (0.0, 8))
NORMALIZER_BAND = 4
#: The score is seconds; anything older than this is as old as it gets (keeps it in 63 bits).
MAX_WAIT = timedelta(days=3650)


@dataclass(frozen=True, slots=True)
class Rank:
    band: int
    score: int
    reason: str


@dataclass(frozen=True, slots=True)
class BoefjeCandidate:
    """What a ranker may look at: no objects, no clients."""

    trigger: Trigger
    scan_level: int
    interval: timedelta
    last_run_ended: datetime | None = None
    since: datetime | None = None


def _wait_score(now: datetime, since: datetime | None) -> int:
    """Seconds waited, negated so that longer waits sort first (lower = sooner)."""
    if since is None:
        return 0
    waited = min(max(now - since, timedelta(0)), MAX_WAIT)
    return -int(waited.total_seconds())


def rank_boefje(candidate: BoefjeCandidate, now: datetime) -> Rank:
    # Higher clearance sorts first within a band: 4 → 0, 0 → 4 (×10^10 keeps it above any wait).
    level_part = (4 - max(0, min(candidate.scan_level, 4))) * 10**10
    if candidate.trigger == Trigger.MANUAL:
        return Rank(MANUAL_BAND, _wait_score(now, candidate.since), "manual")
    if candidate.last_run_ended is None:
        if candidate.trigger == Trigger.NEW_OBJECT:
            return Rank(NEW_OBJECT_BAND, level_part + _wait_score(now, candidate.since), "new object")
        if candidate.trigger == Trigger.SCHEDULE:
            return Rank(LEAST_URGENT_BAND, level_part + _wait_score(now, candidate.since), "re-run, no history")
        return Rank(NEVER_RUN_BAND, level_part + _wait_score(now, candidate.since), "never run")
    elapsed = now - candidate.last_run_ended
    interval = candidate.interval if candidate.interval > timedelta(0) else timedelta(seconds=1)
    ratio = elapsed / interval
    band = next(band for threshold, band in OVERDUE_BANDS if ratio >= threshold)
    return Rank(band, level_part + _wait_score(now, candidate.last_run_ended), f"re-run, {ratio:.1f}x interval")


def rank_normalizer(raw_created: datetime | None, now: datetime, *, manual: bool = False) -> Rank:
    """Older raw data first."""
    if manual:
        return Rank(MANUAL_BAND, _wait_score(now, raw_created), "manual")
    return Rank(NORMALIZER_BAND, _wait_score(now, raw_created), "new raw file")


def shown_reason(rank: Rank, decision: Decision) -> Rank:
    """The rank, saying "stalled run in Bytes" when that is why the pair is due (``plan --dry-run``)."""
    if decision.reason == DueReason.STALLED:
        return Rank(rank.band, rank.score, str(DueReason.STALLED))
    return rank
