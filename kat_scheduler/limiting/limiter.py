"""The counters: one moving window per group and limit, in Redis, shared by every worker process on
every machine (the ``limits`` library's :class:`~limits.strategies.MovingWindowRateLimiter` over
its Redis storage).

A start is counted when a worker is about to start a boefje (:meth:`RateLimiter.admit`); a killed
worker does not reset a window, since the window is in Redis, not in the process. A limit of
several parts (``10/hour;100/day``) admits a start only when every part has room: each is tested
first, then each is hit, so a start refused by one part takes nothing from the others (two
workers racing between the test and the hit can only be refused, never let through over a limit).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from kat_scheduler.models.plugins import Boefje
from kat_scheduler.rules.rate_limits import RateLimit, Unresolvable, limit_for, parse_overrides, resolve_group
from kat_scheduler.settings import Settings

logger = logging.getLogger(__name__)

#: The Redis keys of the counters start with this (``limits`` adds the limit and the group).
KEY_PREFIX = "kat_scheduler:rate_limits"


@dataclass(frozen=True, slots=True)
class Admission:
    """A limiter's answer for one start: allowed, or refused until ``until``."""

    allowed: bool
    limit: RateLimit | None = None
    group: str | None = None
    #: When refused: the earliest time a start of the group may be admitted.
    until: datetime | None = None


FREE = Admission(True)


def _at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


class RateLimiter:
    """Admits boefje starts against their limits (Katalogus's, or ``SCHEDULER_RATE_LIMITS``)."""

    def __init__(self, storage_uri: str, overrides: dict[str, RateLimit | None], *, key_prefix: str = KEY_PREFIX):
        self.storage = storage_from_string(storage_uri, key_prefix=key_prefix)
        self.strategy = MovingWindowRateLimiter(self.storage)
        self.overrides = overrides
        #: Plugin limit strings that are no limit, said once per process.
        self._said: set[tuple[str, str | None, str | None]] = set()

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimiter | None:
        """The limiter of ``settings``, or ``None`` with no Redis to count in."""
        uri = settings.rate_limit_store
        if uri is None:
            return None
        return cls(uri, parse_overrides(settings.rate_limits))

    def limit_of(self, boefje: Boefje) -> RateLimit | None:
        """The boefje's limit; a plugin string that is no limit is logged (once) and ignored."""
        try:
            return limit_for(boefje.id, boefje.rate_limit, boefje.rate_limit_group, self.overrides)
        except ValueError as exc:
            said = (boefje.id, boefje.rate_limit, boefje.rate_limit_group)
            if said not in self._said:
                self._said.add(said)
                logger.warning("boefje %s: Katalogus's rate limit is ignored: %s", boefje.id, exc)
            return None

    def group_of(self, limit: RateLimit, boefje_id: str, organisation: str, input_ooi: str | None) -> str | None:
        """The group a task counts in, or ``None`` (logged) when its template cannot be resolved."""
        try:
            return resolve_group(limit.group, boefje_id=boefje_id, organisation=organisation, input_ooi=input_ooi)
        except Unresolvable as exc:
            logger.warning("boefje %s on %s in %s: not rate limited: %s", boefje_id, input_ooi, organisation, exc)
            return None

    def admit(self, boefje: Boefje, organisation: str, input_ooi: str | None) -> Admission:
        """Count one start of ``boefje`` if its limit has room; otherwise say until when it has none."""
        limit = self.limit_of(boefje)
        if limit is None:
            return FREE
        group = self.group_of(limit, boefje.id, organisation, input_ooi)
        if group is None:
            return FREE
        full = [item for item in limit.items if not self.strategy.test(item, group)]
        if not full:
            for item in limit.items:
                if not self.strategy.hit(item, group):  # another worker took the last room meanwhile
                    full = [item]
                    break
            else:
                return Admission(True, limit, group)
        until = max(self.strategy.get_window_stats(item, group).reset_time for item in full)
        return Admission(False, limit, group, _at(until))

    def room(self, limit: RateLimit, group: str) -> tuple[int, datetime]:
        """How many starts the group has room for now, and when its next room opens."""
        stats = [self.strategy.get_window_stats(item, group) for item in limit.items]
        free = min(s.remaining for s in stats)
        opens = max(s.reset_time for s in stats if s.remaining == free)
        return max(free, 0), _at(opens)
