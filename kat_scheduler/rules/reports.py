"""Report schedules, as pure rules: what a due report schedule queues, and when it is due next.

Rocky creates one schedule per report recipe (``scheduler_id`` ``report``): its ``data`` is a
ReportTask (``{"organisation_id", "report_recipe_id"}``, plus any key Rocky adds, such as
``"type": "report"``, kept as it is), its ``schedule`` a cron expression, or none for a schedule
that fires once. See ``SCHEDULER-API.md``, "Report schedules".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from croniter import CroniterBadDateError

from kat_scheduler.rules.identity import report_task_hash
from kat_scheduler.rules.timing import is_valid_cron, next_cron

#: The band of a report task a schedule queued. Pops take the lowest band first, so a report
#: pushed by hand (band 0) goes before the scheduled ones; among those the priority (the epoch
#: seconds of when each was queued) puts the longest waiting first.
SCHEDULED_REPORT_BAND = 2


class InvalidReportSchedule(ValueError):
    """A report schedule that cannot queue a task; the message says why (the schedule's disabled reason)."""


@dataclass(frozen=True, slots=True)
class ScheduledReport:
    """The report task a due schedule queues."""

    organisation: str
    report_recipe_id: str
    hash: str
    band: int
    #: Lower runs sooner: the epoch seconds of ``now`` (as mula does).
    priority: int
    data: dict[str, Any]
    #: The schedule's next deadline: the next cron time after ``now``, ``None`` for a one-off schedule.
    next_deadline: datetime | None


def _text(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidReportSchedule(f"data.{key} must be a non-empty string, got {value!r}")
    return value


def next_report_deadline(cron: str | None, now: datetime) -> datetime | None:
    """When a report schedule that fired at ``now`` is due again: its next cron time, or never (one-off)."""
    if cron is None:
        return None
    if not is_valid_cron(cron):
        raise InvalidReportSchedule(f"schedule {cron!r} is not a valid cron expression")
    try:
        return next_cron(cron, now)
    except CroniterBadDateError:  # its times are all past (a cron with a year field)
        raise InvalidReportSchedule(f"schedule {cron!r} has no time after {now.isoformat()}") from None


def scheduled_report(organisation: str, data: Mapping[str, Any], cron: str | None, now: datetime) -> ScheduledReport:
    """The report task the schedule (of ``organisation``, with ``data`` and ``cron``) queues at ``now``.

    Raises :class:`InvalidReportSchedule` for data that is not a ReportTask of ``organisation``
    or a cron that is not one (a schedule the API would have refused, e.g. imported or edited
    in the database).
    """
    if not isinstance(data, Mapping):
        raise InvalidReportSchedule(f"data must be a ReportTask object, got {type(data).__name__}")
    owner = _text(data, "organisation_id")
    recipe = _text(data, "report_recipe_id")
    if owner != organisation:
        raise InvalidReportSchedule(
            f"data.organisation_id {owner!r} is not the schedule's organisation {organisation!r}"
        )
    return ScheduledReport(
        organisation=organisation,
        report_recipe_id=recipe,
        hash=report_task_hash(recipe, organisation),
        band=SCHEDULED_REPORT_BAND,
        priority=int(now.timestamp()),
        data=dict(data),
        next_deadline=next_report_deadline(cron, now),
    )
