"""Producers do not flood the broker with what a rate-limited group cannot start yet: per run of a
producer (a tick, a due-schedules run), each group gets at most what its limit lets start before
the producer's next run (at least one window's worth); the rest stay unclaimed and are found again
by the next run."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

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


class GroupBudget:
    """What each rate-limited group may still be sent in one producer run."""

    def __init__(self, overrides: dict[str, RateLimit | None], every: float) -> None:
        self.overrides = overrides
        #: Seconds until the producer runs again.
        self.every = every
        self.left: dict[str, int] = {}
        #: Each plugin's limit, read once per producer run: (boefje, its limit, its group) -> limit or None.
        self.limits: dict[tuple[str, str | None, str | None], RateLimit | None] = {}

    @classmethod
    def of(cls, settings: Settings, every: float) -> GroupBudget:
        """The budget of a producer that runs every ``every`` seconds."""
        return cls(parse_overrides(settings.rate_limits) if settings.rate_limits.strip() else {}, every)

    def _limit(self, boefje_id: str, plugin_limit: str | None, plugin_group: str | None) -> RateLimit | None:
        """:func:`limit_for`, parsed once per plugin and run (a tick holds thousands of one boefje's
        candidates); a plugin whose limit is no limit is not limited (the worker says why)."""
        key = (boefje_id, plugin_limit, plugin_group)
        if key not in self.limits:
            try:
                self.limits[key] = limit_for(boefje_id, plugin_limit, plugin_group, self.overrides)
            except ValueError:
                self.limits[key] = None
        return self.limits[key]

    def _group(self, candidate: Candidate) -> tuple[str, int] | None:
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
        return f"{limit.text}@{group}", limit.starts_within(self.every)

    def keep(self, candidates: Sequence[Candidate], skipped: Counter[SkipReason]) -> list[Candidate]:
        """The candidates that fit their groups' budgets, in order; the others are counted in
        ``skipped`` (as :attr:`SkipReason.RATE_LIMITED`)."""
        if not self.overrides and not any(c.boefje.rate_limit for c in candidates):
            return list(candidates)
        kept, held = within_capacity(candidates, self._group, self.left)
        skipped[SkipReason.RATE_LIMITED] += held
        return kept
