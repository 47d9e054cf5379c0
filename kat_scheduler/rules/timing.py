"""When a schedule is next due. Pure: no clock, no randomness beyond the schedule's own hash.

* ``cron`` set (the schedule's own, else the plugin's) → the next cron time after the reference
  time (cron decides, no jitter);
* else ``interval`` (minutes) → reference + interval + jitter;
* else the default grace period → reference + grace + jitter.

Jitter spreads schedules created in the same tick over ``jitter × period``, so a million objects
found at once do not all fall due in the same minute again. It is derived from the task hash,
so the same schedule always gets the same offset.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta

from croniter import CroniterBadDateError, croniter

from kat_scheduler.models.plugins import Boefje


def jitter_fraction(hash_: str) -> float:
    """A stable number in [0, 1) from a task hash (32 hex characters)."""
    return int(hash_[:8], 16) / 0x1_0000_0000


def period(boefje: Boefje, default_seconds: int) -> timedelta:
    if boefje.interval:
        return timedelta(minutes=boefje.interval)
    return timedelta(seconds=default_seconds)


#: A moment to look for a cron's times after (pure: no clock): a cron with no time after it has none.
_CRON_REFERENCE = datetime(2000, 1, 1, tzinfo=UTC)


@functools.lru_cache(maxsize=4096)
def is_valid_cron(expression: str) -> bool:
    """Whether ``expression`` is a cron expression croniter can follow (cached: schedules share a few).

    It must parse and have a time at all: ``0 6 30 2 *`` (February 30th) parses, but croniter
    finds no next time for it and raises, so a schedule with it would fail each time it is read.
    """
    if not croniter.is_valid(expression):
        return False
    try:
        croniter(expression, _CRON_REFERENCE).get_next(datetime)
    except CroniterBadDateError:
        return False
    return True


@functools.lru_cache(maxsize=4096)
def next_cron(expression: str, after: datetime) -> datetime:
    """The first time of cron ``expression`` after ``after`` (cached: a tick asks the same a lot)."""
    following: datetime = croniter(expression, after).get_next(datetime)
    return following


@functools.lru_cache(maxsize=1024)
def last_cron(expression: str, moment: datetime) -> datetime:
    """The latest time of cron ``expression`` at or before ``moment``.

    A cron boefje last run at ``a`` is due at ``moment`` exactly when ``a < last_cron(moment)``
    (some cron time fell in ``(a, moment]``), which is what ``next_cron(a) <= moment`` says, with
    one cron calculation per tick instead of one per object.
    """
    latest: datetime = croniter(expression, moment).get_prev(datetime)
    following = next_cron(expression, latest)
    return following if following <= moment else latest


def next_deadline(
    boefje: Boefje,
    after: datetime,
    *,
    hash_: str,
    default_seconds: int,
    jitter: float,
    cron: str | None = None,
) -> datetime:
    """The first time after ``after`` the boefje is due again on the object of ``hash_``.

    ``cron``, a schedule's own cron expression (set through ``PATCH /schedules/{id}``), wins over
    the plugin's: a schedule whose cron was changed keeps to it after it fires.
    """
    cron = cron or boefje.cron
    if cron:
        return next_cron(cron, after)
    base = period(boefje, default_seconds)
    return after + base + base * (jitter * jitter_fraction(hash_))
