"""What a run of the tick or of the due schedules did (or, dry, would do): :class:`PlanReport`."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from kat_scheduler.dispatch.dispatcher import DispatchResult
from kat_scheduler.planning.candidates import Candidate
from kat_scheduler.rules import SkipReason


@dataclass
class PlanReport:
    """What a tick did (or, dry, would do)."""

    now: datetime
    dry_run: bool
    organisations: list[str] = field(default_factory=list)
    planned: list[Candidate] = field(default_factory=list)
    skipped: Counter[SkipReason] = field(default_factory=Counter)
    #: What rate limits held back (counted in ``skipped`` too), per limit (as written) and group:
    #: more than the group may start before the producer's next run.
    rate_limited: Counter[tuple[str, str]] = field(default_factory=Counter)
    errors: dict[str, str] = field(default_factory=dict)
    #: Per organisation, the plugins that do not validate (id → reason).
    invalid_plugins: dict[str, dict[str, str]] = field(default_factory=dict)
    queue_depth: int | None = None
    #: Why the depth of the boefje queue could not be read (the low bands are then held back).
    queue_depth_error: str | None = None
    #: Backpressure held back the bands above :attr:`max_band` (a deep or unreadable queue).
    backpressure: bool = False
    max_band: int | None = None
    dispatch: DispatchResult = field(default_factory=DispatchResult)
    schedules_created: int = 0
    schedules_disabled: int = 0
    schedules_advanced: int = 0
    #: Bytes' newest runs kept in ``bytes_runs`` (every object of every history listed).
    bytes_runs_recorded: int = 0
    #: Wall-clock time the last message of this tick was handed to the broker.
    last_published_at: datetime | None = None
    #: Seconds spent per phase: planning, dispatch (claim + publish), bookkeeping.
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def queued(self) -> int:
        return self.dispatch.published

    def add_time(self, phase: str, seconds: float) -> None:
        """Add ``seconds`` to the time spent in ``phase``."""
        self.timings[phase] = self.timings.get(phase, 0.0) + seconds
