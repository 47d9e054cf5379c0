"""The counters: one moving window per group and limit, in Redis, shared by every worker process on
every machine (:mod:`kat_scheduler.limiting.window`: our own, counted on the Redis server's clock).

A start is counted when a worker is about to start a boefje (:meth:`RateLimiter.admit`), and the
task's row records as its start the very moment its window counted it (:attr:`Admission.at`), so
the recorded starts hold the limit in every window, not only the counters. A killed worker does
not reset a window, since the window is in Redis, not in the process; and every worker on every
machine counts by one clock, the Redis server's, so a machine whose clock is off counts no
differently. A limit of several parts (``10/hour;100/day``) admits a start only when every part
has room, in one atomic call: a start refused by one part takes nothing from the others.

Why not the ``limits`` library's moving window (it still parses the limit strings,
:mod:`kat_scheduler.rules.rate_limits`): it counts by each client's clock and does not say at
which moment it counted, so a start recorded by the worker's clock a moment before the count, right
at a window's edge, lands inside the window it must not share; and a limit of several parts there
is tested, then hit part by part.

The release (:mod:`kat_scheduler.limiting.release`) counts what it publishes the same way, in a
window of its own per group and limit (:meth:`RateLimiter.take_releases`, as many as it wants in
one call): a published task is not counted as a start until a worker starts it, so the starts'
window alone would let every release pass in between publish the same room again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from kat_scheduler.limiting.window import PREFIX, MovingWindows, Part
from kat_scheduler.models.plugins import Boefje
from kat_scheduler.rules.rate_limits import RateLimit, Unresolvable, limit_for, parse_overrides, resolve_group
from kat_scheduler.settings import Settings

logger = logging.getLogger(__name__)

#: The Redis keys of the counters start with this (:mod:`~kat_scheduler.limiting.window` adds the
#: part of the limit and the window's name).
KEY_PREFIX = PREFIX
#: The name of a group's starts' window is this, ``:`` and the group.
STARTS = "starts"
#: The name of a group's releases' window (:meth:`RateLimiter.take_releases`) is this, ``:`` and
#: the group.
RELEASED = "released"


@dataclass(frozen=True, slots=True)
class Admission:
    """A limiter's answer for one start: allowed, or refused until ``until``."""

    allowed: bool
    limit: RateLimit | None = None
    group: str | None = None
    #: When refused: the earliest time a start of the group may be admitted (the Redis server's
    #: clock).
    until: datetime | None = None
    #: When admitted under a limit: the moment its window counted it (the Redis server's clock),
    #: which the task's row records as its start.
    at: datetime | None = None


FREE = Admission(True)

#: Looks a start makes for a window about to open before it goes back to wait (another worker may
#: take the room first).
LEAD_TRIES = 3
#: Seconds past the moment its room opens a waiting start looks again. The pause is measured from
#: the Redis server's answer, so the machine's own clock does not enter; the margin only keeps a
#: sleep that ends a hair early from costing another look.
LEAD_SLACK = 0.001
#: The longest :meth:`RateLimiter.admit` holds a worker's pool process for a window about to open
#: (seconds; never more than the lead). A message the release sent ahead carries the moment its
#: room opens as Celery's ``eta``, so the worker's consumer, not a pool process, holds it until
#: then (:mod:`kat_scheduler.limiting.release`); what is left to wait at the start is the worker
#: machine's clock against the Redis server's and the timer's jitter. A window further away than
#: this puts the task back to wait.
CLOCK_WAIT = 0.05


def parts(limit: RateLimit) -> list[Part]:
    """The parts of a limit, as its windows count them."""
    return [Part(item.amount, item.get_expiry()) for item in limit.items]


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
        self.windows = MovingWindows(storage_uri, key_prefix)
        self.overrides = overrides
        #: Seconds a plugin's limit fields, as Katalogus gave them, are reused (per organisation).
        self.plugin_ttl = plugin_ttl
        #: Seconds before a group's room opens that the release publishes its next tasks
        #: (``SCHEDULER_RATE_LIMIT_LEAD``), each with that moment as its ``eta``.
        self.lead = lead
        #: Seconds :meth:`admit` waits for a window about to open: :data:`CLOCK_WAIT`, at most the
        #: lead (0: never).
        self.wait = min(lead, CLOCK_WAIT)
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

        A window that opens within :attr:`wait` seconds (a few hundredths at most) is waited for
        here, in the pool process: the release publishes a group's next tasks :attr:`lead` seconds
        early with the moment their room opens as their ``eta``, so the worker's consumer keeps
        them in its timer (no pool process held) and they reach a pool process as the window
        opens; this wait only absorbs the worker machine's clock against the Redis server's. A
        window further away refuses at once (the task is put back, with the exact time)."""
        limit = self.limit_of(boefje_id, boefje)
        if limit is None:
            return FREE
        group = self.group_of(limit, boefje_id, organisation, input_ooi)
        if group is None:
            return FREE
        admission, now = self._admit(limit, group)
        latest = time.monotonic() + self.wait  # the whole wait, however many looks
        for _ in range(LEAD_TRIES):
            if admission.allowed or admission.until is None:
                break
            # Both on the Redis server's clock: the pause does not depend on this machine's.
            pause = max((admission.until - now).total_seconds(), 0.0) + LEAD_SLACK
            if time.monotonic() + pause > latest + LEAD_SLACK:
                break
            time.sleep(pause)
            admission, now = self._admit(limit, group)
        return admission

    def take_releases(self, limit: RateLimit, group: str, wanted: int) -> int:
        """How many of ``wanted`` tasks of ``group`` the release may publish now (each one counted).

        Releases are counted like starts, in a window of their own (``released`` and the group):
        every node's release passes count there, so a group's tasks are published no faster than
        its limit lets them start, however often the release passes before those tasks start."""
        if wanted < 1:
            return 0
        return self.windows.take(parts(limit), f"{RELEASED}:{group}", wanted).count

    def room(self, limit: RateLimit, group: str) -> tuple[int, datetime]:
        """How many starts the group has room for now, and when its next room opens."""
        return self._room(limit, f"{STARTS}:{group}")

    def openings(self, limit: RateLimit, group: str, n: int) -> tuple[list[datetime], datetime]:
        """When each of the group's next ``n`` starts (at most :attr:`RateLimit.capacity`) could be
        counted, earliest first, and the Redis server's clock: the ``eta`` of what the release
        sends ahead. A hint, not a reservation: :meth:`admit` still counts each start."""
        return self.windows.openings(parts(limit), f"{STARTS}:{group}", n)

    def release_room(self, limit: RateLimit, group: str) -> tuple[int, datetime]:
        """How many releases of the group may go now (:meth:`take_releases`), and when the next may."""
        return self._room(limit, f"{RELEASED}:{group}")

    def _admit(self, limit: RateLimit, group: str) -> tuple[Admission, datetime]:
        """One look: the admission, and the Redis server's clock when it answered."""
        taken = self.windows.take(parts(limit), f"{STARTS}:{group}")
        if taken.count:
            return Admission(True, limit, group, at=taken.at), taken.now
        return Admission(False, limit, group, until=taken.at), taken.now

    def _room(self, limit: RateLimit, name: str) -> tuple[int, datetime]:
        rooms, _ = self.windows.room(parts(limit), name)
        free = min(r.remaining for r in rooms)
        return free, max(r.opens for r in rooms if r.remaining == free)
