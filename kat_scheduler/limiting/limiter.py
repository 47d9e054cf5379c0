"""The counters: one moving window per group and limit, in Redis, shared by every worker process on
every machine (the ``limits`` library's :class:`~limits.strategies.MovingWindowRateLimiter` over
its Redis storage).

A start is counted when a worker is about to start a boefje (:meth:`RateLimiter.admit`); a killed
worker does not reset a window, since the window is in Redis, not in the process. A limit of
several parts (``10/hour;100/day``) admits a start only when every part has room: each is tested
first, then each is hit, so a start refused by one part takes nothing from the others (two
workers racing between the test and the hit can only be refused, never let through over a limit).

The release (:mod:`kat_scheduler.limiting.release`) counts what it publishes the same way, in a
window of its own per group and limit (:meth:`RateLimiter.take_releases`): a published task is
not counted as a start until a worker starts it, so the starts' window alone would let every
release pass in between publish the same room again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from limits import RateLimitItem
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from kat_scheduler.models.plugins import Boefje
from kat_scheduler.rules.rate_limits import RateLimit, Unresolvable, limit_for, parse_overrides, resolve_group
from kat_scheduler.settings import Settings

logger = logging.getLogger(__name__)

#: The Redis keys of the counters start with this (``limits`` adds the limit and the group).
KEY_PREFIX = "kat_scheduler:rate_limits"
#: The first identifier of the release's counters (:meth:`RateLimiter.take_releases`).
RELEASED = "released"


@dataclass(frozen=True, slots=True)
class Admission:
    """A limiter's answer for one start: allowed, or refused until ``until``."""

    allowed: bool
    limit: RateLimit | None = None
    group: str | None = None
    #: When refused: the earliest time a start of the group may be admitted.
    until: datetime | None = None
    #: When admitted under a limit: the moment it was counted (read right before the count, with
    #: no I/O between), which the task's row records as its start.
    at: datetime | None = None


FREE = Admission(True)

#: Looks a start makes for a window about to open before it goes back to wait (another worker may
#: take the room first).
LEAD_TRIES = 3
#: Seconds past the window's opening a waiting start looks again: a start is recorded from this
#: process's clock a moment before the counters take it, so a start right on the window's edge
#: could be recorded inside the window it must not share.
LEAD_SLACK = 0.01


def _at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


class RateLimiter:
    """Admits boefje starts against their limits (Katalogus's, or ``SCHEDULER_RATE_LIMITS``)."""

    def __init__(
        self,
        storage_uri: str,
        overrides: dict[str, RateLimit | None],
        *,
        key_prefix: str = KEY_PREFIX,
        plugin_ttl: float = 30.0,
        lead: float = 0.0,
    ):
        self.storage = storage_from_string(storage_uri, key_prefix=key_prefix)
        self.strategy = MovingWindowRateLimiter(self.storage)
        self.overrides = overrides
        #: Seconds a plugin's limit fields, as Katalogus gave them, are reused (per organisation).
        self.plugin_ttl = plugin_ttl
        #: Seconds :meth:`admit` waits for a window about to open (``SCHEDULER_RATE_LIMIT_LEAD``).
        self.lead = lead
        self._plugins: dict[tuple[str, str], tuple[float, Boefje | None]] = {}
        #: Plugin limit strings that are no limit, said once per process.
        self._said: set[tuple[str, str | None, str | None]] = set()

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimiter | None:
        """The limiter of ``settings``, or ``None`` with no Redis to count in."""
        uri = settings.rate_limit_store
        if uri is None:
            return None
        return cls(
            uri,
            parse_overrides(settings.rate_limits),
            plugin_ttl=settings.katalogus_cache_ttl,
            lead=settings.rate_limit_lead,
        )

    def plugin(self, organisation: str, boefje_id: str, fetch: Callable[[], object]) -> Boefje | None:
        """The boefje as Katalogus gave it for its limit fields: an operator's override needs no
        plugin; otherwise ``fetch`` is called at most once per ``plugin_ttl`` per organisation, so
        the count right before a start waits for no request."""
        if boefje_id in self.overrides:
            return None
        key = (organisation, boefje_id)
        now = time.monotonic()
        cached = self._plugins.get(key)
        if cached is not None and now - cached[0] < self.plugin_ttl:
            return cached[1]
        found = fetch()
        boefje = found if isinstance(found, Boefje) else None
        self._plugins[key] = (now, boefje)
        return boefje

    def limit_of(self, boefje_id: str, boefje: Boefje | None) -> RateLimit | None:
        """The boefje's limit; a plugin string that is no limit is logged (once) and ignored."""
        text = None if boefje is None else boefje.rate_limit
        group = None if boefje is None else boefje.rate_limit_group
        try:
            return limit_for(boefje_id, text, group, self.overrides)
        except ValueError as exc:
            if (boefje_id, text, group) not in self._said:
                self._said.add((boefje_id, text, group))
                logger.warning("boefje %s: Katalogus's rate limit is ignored: %s", boefje_id, exc)
            return None

    def group_of(self, limit: RateLimit, boefje_id: str, organisation: str, input_ooi: str | None) -> str | None:
        """The group a task counts in, or ``None`` (logged) when its template cannot be resolved."""
        try:
            return resolve_group(limit.group, boefje_id=boefje_id, organisation=organisation, input_ooi=input_ooi)
        except Unresolvable as exc:
            logger.warning("boefje %s on %s in %s: not rate limited: %s", boefje_id, input_ooi, organisation, exc)
            return None

    def admit(self, boefje_id: str, boefje: Boefje | None, organisation: str, input_ooi: str | None) -> Admission:
        """Count one start of ``boefje_id`` if its limit has room; otherwise say until when it has
        none. ``boefje``: its plugin, for Katalogus's limit (``None``: only an override applies).

        A window that opens within :attr:`lead` seconds is waited for here: the release publishes
        a group's next tasks that early, so they are at a worker when their window opens (a slot
        held that long, at most), not still on their way from the database."""
        limit = self.limit_of(boefje_id, boefje)
        if limit is None:
            return FREE
        group = self.group_of(limit, boefje_id, organisation, input_ooi)
        if group is None:
            return FREE
        admission = self._admit(limit, group)
        latest = time.monotonic() + self.lead  # the whole wait, however many looks
        for _ in range(LEAD_TRIES):
            if admission.allowed or admission.until is None:
                break
            pause = max((admission.until - datetime.now(UTC)).total_seconds(), 0.0) + LEAD_SLACK
            if time.monotonic() + pause > latest + LEAD_SLACK:
                break
            time.sleep(pause)
            admission = self._admit(limit, group)
        return admission

    def take_releases(self, limit: RateLimit, group: str, wanted: int) -> int:
        """How many of ``wanted`` tasks of ``group`` the release may publish now (each one counted).

        Releases are counted like starts, in a window of their own (``released`` and the group):
        every node's release passes count there, so a group's tasks are published no faster than
        its limit lets them start, however often the release passes before those tasks start."""
        taken = 0
        while taken < wanted and not self._full(limit, RELEASED, group) and self._hit(limit, RELEASED, group) is None:
            taken += 1
        return taken

    def _full(self, limit: RateLimit, *identifiers: str) -> list[RateLimitItem]:
        """The parts of a limit of several parts that have no room now (tested, nothing counted), so
        a start one part refuses takes no room from the others. One part: none (its hit tests)."""
        if len(limit.items) == 1:
            return []
        return [item for item in limit.items if not self.strategy.test(item, *identifiers)]

    def _hit(self, limit: RateLimit, *identifiers: str) -> RateLimitItem | None:
        """Count one in every part; the part that had no room (another worker took it meanwhile)."""
        for item in limit.items:
            if not self.strategy.hit(item, *identifiers):
                return item
        return None

    def _admit(self, limit: RateLimit, group: str) -> Admission:
        full = self._full(limit, group)
        if not full:
            at = datetime.now(UTC)
            refused = self._hit(limit, group)
            if refused is None:
                return Admission(True, limit, group, at=at)
            full = [refused]
        until = max(self.strategy.get_window_stats(item, group).reset_time for item in full)
        return Admission(False, limit, group, _at(until))

    def room(self, limit: RateLimit, group: str) -> tuple[int, datetime]:
        """How many starts the group has room for now, and when its next room opens."""
        return self._room(limit, group)

    def release_room(self, limit: RateLimit, group: str) -> tuple[int, datetime]:
        """How many releases of the group may go now (:meth:`take_releases`), and when the next may."""
        return self._room(limit, RELEASED, group)

    def _room(self, limit: RateLimit, *identifiers: str) -> tuple[int, datetime]:
        stats = [self.strategy.get_window_stats(item, *identifiers) for item in limit.items]
        free = min(s.remaining for s in stats)
        opens = max(s.reset_time for s in stats if s.remaining == free)
        return max(free, 0), _at(opens)
