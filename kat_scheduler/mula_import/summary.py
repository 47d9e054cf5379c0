"""What the mula import does with each row, and its summary."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

logger = logging.getLogger(__name__)

#: ``tasks.reason`` of every imported row, so imported history can be told apart (and removed).
IMPORT_REASON = "imported from mula"
#: ``schedules.disabled_reason`` of a schedule that was disabled in mula.
DISABLED_REASON = "disabled in mula"
#: Band of imported rows: they are finished and never queued again, so any band would do.
IMPORT_BAND = 9

FINISHED = ("completed", "failed")
CANCELLED = "cancelled"
KNOWN_KINDS = ("boefje", "normalizer", "report")


class MulaSchemaError(RuntimeError):
    """The database does not look like a mula database this import understands."""


class Malformed(ValueError):
    """A mula row this import cannot make sense of (skipped, logged with its id)."""


class Outcome(StrEnum):
    IMPORTED = "imported"
    PRESENT = "already present"
    LIVE = "live in mula"
    CANCELLED = "cancelled"
    SUPERSEDED = "superseded"
    BEFORE_SINCE = "before --since"
    UNSUPPORTED = "not supported"
    MALFORMED = "malformed"
    UNKNOWN_SCHEDULER = "unknown scheduler"


#: Why each outcome that is not an import happened (printed under the summary).
WHY: dict[Outcome, str] = {
    Outcome.PRESENT: "this id (or, for a schedule, this task hash) is in the database already: nothing to do",
    Outcome.LIVE: "pending/queued/dispatched/running in mula: no Celery message exists for it, so it is not "
    "imported as live; the planner and the due schedules queue that work again",
    Outcome.CANCELLED: "cancelled in mula: it never ran, so it says nothing about grace periods",
    Outcome.SUPERSEDED: "an older finished run of a task whose newest run was imported; grace needs only the newest",
    Outcome.BEFORE_SINCE: "ended before --since (by default the retention horizon: the reaper would prune it at once)",
    Outcome.UNSUPPORTED: "kat_scheduler runs no report tasks and schedules no normalizers",
    Outcome.MALFORMED: "data that is not the JSON mula writes, or an invalid cron expression (ids in the log)",
    Outcome.UNKNOWN_SCHEDULER: "a scheduler id that is not boefje, normalizer or report (ids in the log)",
}


@dataclass
class ImportSummary:
    """What the import did (or, dry, would do), counted per (what, outcome)."""

    dry_run: bool
    since: datetime | None
    layout: str = ""
    revision: str | None = None
    counts: Counter[tuple[str, Outcome]] = field(default_factory=Counter)
    #: Things worth knowing that are not outcomes (an imported row can count here too).
    notes: Counter[str] = field(default_factory=Counter)

    def add(self, what: str, outcome: Outcome, n: int = 1) -> None:
        if n:
            self.counts[(what, outcome)] += n

    def count(self, what: str, outcome: Outcome) -> int:
        return self.counts[(what, outcome)]

    def total(self, outcome: Outcome) -> int:
        return sum(n for (_, o), n in self.counts.items() if o == outcome)

    def lines(self) -> list[str]:
        revision = f", alembic revision {self.revision}" if self.revision else ""
        out = [f"mula database: {self.layout}{revision}"]
        if self.since is not None:
            out.append(f"task history since: {self.since.isoformat()}")
        if self.dry_run:
            out.append("DRY RUN: nothing was written")
        rows = sorted(self.counts.items(), key=lambda item: (item[0][0], list(Outcome).index(item[0][1])))
        width = max([len(what) for (what, _), _ in rows] + [len("what")])
        out.append(f"{'what':<{width}}  {'outcome':<17}  {'count':>9}")
        for (what, outcome), n in rows:
            label = "would import" if self.dry_run and outcome == Outcome.IMPORTED else outcome.value
            out.append(f"{what:<{width}}  {label:<17}  {n:>9}")
        if not rows:
            out.append("(nothing found)")
        seen = [o for o in Outcome if o in WHY and self.total(o)]
        if seen:
            out.append("why:")
            out.extend(f"  {o.value}: {WHY[o]}" for o in seen)
        for note, n in sorted(self.notes.items()):
            out.append(f"note: {note}: {n}")
        return out
