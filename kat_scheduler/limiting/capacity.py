"""Producers do not flood the broker with what a rate-limited group cannot start yet.

* The tick and the due schedules (:class:`GroupBudget`): per run, each group gets at most what its
  limit lets start before the producer's next run (at least one window's worth); the rest stay
  unclaimed and are found again by the next run.
* The event listener (:class:`ListenerBudget`): an event is not replayed by a next run, so every
  task it decides to queue is claimed; of a rate-limited group it publishes only what the group may
  start now, counted in the group's releases' window that every worker node's release counts in
  too (:meth:`~kat_scheduler.limiting.limiter.RateLimiter.take_releases`). The rest wait as a
  worker's put-back leaves them (:mod:`kat_scheduler.storage.waiting`): queued, no message, listed
  as waiting with the limit, the group and the time their window may open; the release sends them
  as room opens, most urgent first.

Both cost an unlimited world nothing per task beyond a look at each candidate's boefje.
"""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from kat_scheduler.limiting.limiter import RateLimiter
from kat_scheduler.planning.candidates import Candidate
from kat_scheduler.rules.eligibility import SkipReason
from kat_scheduler.rules.rate_limits import (
    RateLimit,
    Unresolvable,
    limit_for,
    parse_overrides,
    resolve_group,
    within_capacity,
)
from kat_scheduler.settings import Settings


class _Limits:
    """The limit and group of each candidate, each plugin's limit parsed once."""

    def __init__(self, overrides: dict[str, RateLimit | None]) -> None:
        self.overrides = overrides
        #: Each plugin's limit, read once: (boefje, its limit, its group) -> limit or None.
        self.limits: dict[tuple[str, str | None, str | None], RateLimit | None] = {}

    def any_limited(self, candidates: Sequence[Candidate]) -> bool:
        """Whether any of ``candidates`` may be limited (the fast check before the real one)."""
        return bool(self.overrides) or any(c.boefje.rate_limit for c in candidates)

    def _limit(self, boefje_id: str, plugin_limit: str | None, plugin_group: str | None) -> RateLimit | None:
        """:func:`limit_for`, parsed once per plugin (a tick holds thousands of one boefje's
        candidates); a plugin whose limit is no limit is not limited (the worker says why)."""
        key = (boefje_id, plugin_limit, plugin_group)
        if key not in self.limits:
            try:
                self.limits[key] = limit_for(boefje_id, plugin_limit, plugin_group, self.overrides)
            except ValueError:
                self.limits[key] = None
        return self.limits[key]

    def limited(self, candidate: Candidate) -> tuple[RateLimit, str] | None:
        """The candidate's limit and group, or ``None`` when it is not limited."""
        boefje = candidate.boefje
        if boefje.id not in self.overrides and not boefje.rate_limit:
            return None
        try:
            limit = self._limit(boefje.id, boefje.rate_limit, boefje.rate_limit_group)
            if limit is None:
                return None
            group = resolve_group(
                limit.group, boefje_id=boefje.id, organisation=candidate.organisation, input_ooi=candidate.input_ooi
            )
        except (ValueError, Unresolvable):  # no limit: the worker says why when it runs
            return None
        return limit, group


class GroupBudget(_Limits):
    """What each rate-limited group may still be sent in one producer run."""

    def __init__(self, overrides: dict[str, RateLimit | None], every: float) -> None:
        super().__init__(overrides)
        #: Seconds until the producer runs again.
        self.every = every
        self.left: dict[tuple[str, str], int] = {}
        #: What this run held back, per limit (as written) and group.
        self.held: Counter[tuple[str, str]] = Counter()

    @classmethod
    def of(cls, settings: Settings, every: float) -> GroupBudget:
        """The budget of a producer that runs every ``every`` seconds."""
        return cls(parse_overrides(settings.rate_limits) if settings.rate_limits.strip() else {}, every)

    def _group(self, candidate: Candidate) -> tuple[tuple[str, str], int] | None:
        limited = self.limited(candidate)
        if limited is None:
            return None
        limit, group = limited
        return (limit.text, group), limit.starts_within(self.every)

    def keep(
        self,
        candidates: Sequence[Candidate],
        skipped: Counter[SkipReason],
        held: Counter[tuple[str, str]] | None = None,
    ) -> list[Candidate]:
        """The candidates that fit their groups' budgets, in order; the others are counted in
        ``skipped`` (as :attr:`SkipReason.RATE_LIMITED`), and per limit and group in :attr:`held`
        and in ``held`` when given (a report's
        :attr:`~kat_scheduler.producers.results.PlanReport.rate_limited`)."""
        if not self.any_limited(candidates):
            return list(candidates)
        kept, by_group = within_capacity(candidates, self._group, self.left)
        if by_group:
            skipped[SkipReason.RATE_LIMITED] += by_group.total()
            self.held.update(by_group)
            if held is not None:
                held.update(by_group)
        return kept


@dataclass(frozen=True, slots=True)
class Hold:
    """A claimed task the listener keeps back: it waits for its group's window, as a worker's
    put-back leaves it (the limit as written, the group, and when its window may open)."""

    limit: str
    group: str
    until: datetime


class ListenerBudget(_Limits):
    """What the event listener may publish now of each rate-limited group; see the module.

    Without a limiter (no Redis to count in) no limit is enforced, so nothing is held back.
    """

    def __init__(self, limiter: RateLimiter | None, overrides: dict[str, RateLimit | None]) -> None:
        super().__init__(overrides)
        self.limiter = limiter

    @classmethod
    def of(cls, settings: Settings) -> ListenerBudget:
        """The listener's budget under ``settings`` (the limiter the workers count in)."""
        return cls(
            RateLimiter.from_settings(settings),
            parse_overrides(settings.rate_limits) if settings.rate_limits.strip() else {},
        )

    def hold_back(self, claimed: Sequence[tuple[uuid.UUID, Candidate]]) -> dict[uuid.UUID, Hold]:
        """Of the claimed tasks (each task's id with its candidate), those to keep back, with why.

        Per group, the most urgent go now, as many as its starts' window has room for and its
        releases' window lets be sent (counted there, so the release sends no more on top); the
        others wait, the first window's worth until the group's next room opens, the next one a
        window later, and so on (as the release spreads what it cannot send yet)."""
        if self.limiter is None or not claimed or not self.any_limited([c for _, c in claimed]):
            return {}
        groups: dict[tuple[RateLimit, str], list[tuple[uuid.UUID, Candidate]]] = defaultdict(list)
        for task_id, candidate in claimed:
            limited = self.limited(candidate)
            if limited is not None:
                groups[limited].append((task_id, candidate))
        held: dict[uuid.UUID, Hold] = {}
        for (limit, group), members in groups.items():
            members.sort(key=lambda member: member[1].sort_key)
            held.update(self._hold_group(limit, group, [task_id for task_id, _ in members]))
        return held

    def _hold_group(self, limit: RateLimit, group: str, ids: list[uuid.UUID]) -> dict[uuid.UUID, Hold]:
        """One group's tasks (most urgent first): those that wait."""
        limiter = self.limiter
        assert limiter is not None
        room, opens = limiter.room(limit, group)
        wanted = min(room, len(ids))
        sent = limiter.take_releases(limit, group, wanted) if wanted else 0
        if sent == len(ids):
            return {}
        # The next may go when both windows let it: the releases' once it is full, the starts'
        # once this send took all its room.
        free, release_opens = limiter.release_room(limit, group)
        first = max([*([] if free else [release_opens]), *([opens] if room <= sent else [])], default=opens)
        window = timedelta(seconds=min(limit.items, key=lambda item: item.amount).get_expiry())
        return {
            task_id: Hold(limit.text, group, first + (k // limit.capacity) * window)
            for k, task_id in enumerate(ids[sent:])
        }
