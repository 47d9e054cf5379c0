"""The report schedule rules: the task a due report schedule queues, and its next deadline."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from kat_scheduler.rules.identity import report_task_hash
from kat_scheduler.rules.reports import (
    SCHEDULED_REPORT_BAND,
    InvalidReportSchedule,
    next_report_deadline,
    scheduled_report,
)

NOW = datetime(2025, 5, 27, 9, 0, 15, tzinfo=UTC)
RECIPE = "8a4b2c1d-0000-4000-8000-000000000001"


def test_a_due_report_schedule_queues_its_recipes_task_as_mula_does() -> None:
    data = {"organisation_id": "aa", "report_recipe_id": RECIPE, "type": "report"}

    report = scheduled_report("aa", data, "0 6 * * *", NOW)

    assert report.hash == report_task_hash(RECIPE, "aa")
    assert report.data == data and report.data is not data  # Rocky's keys kept, the row's dict not shared
    assert report.priority == int(NOW.timestamp()) == 1748336415
    assert (report.organisation, report.report_recipe_id, report.band) == ("aa", RECIPE, SCHEDULED_REPORT_BAND)
    assert report.next_deadline == datetime(2025, 5, 28, 6, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("cron", "expected"),
    [
        (None, None),  # one-off: never due again
        ("0 6 * * *", datetime(2025, 5, 28, 6, 0, tzinfo=UTC)),
        ("*/5 * * * *", datetime(2025, 5, 27, 9, 5, tzinfo=UTC)),
        ("0 0 1 * *", datetime(2025, 6, 1, 0, 0, tzinfo=UTC)),
    ],
)
def test_the_next_deadline_is_the_next_cron_time_after_now_or_none(cron: str | None, expected: datetime | None) -> None:
    assert next_report_deadline(cron, NOW) == expected


@pytest.mark.parametrize(
    ("data", "cron", "reason"),
    [
        ({"organisation_id": "aa"}, None, "data.report_recipe_id must be a non-empty string, got None"),
        ({"organisation_id": "aa", "report_recipe_id": ""}, None, "data.report_recipe_id must be a non-empty string"),
        ({"organisation_id": 7, "report_recipe_id": RECIPE}, None, "data.organisation_id must be a non-empty string"),
        (
            {"organisation_id": "bb", "report_recipe_id": RECIPE},
            None,
            "data.organisation_id 'bb' is not the schedule's organisation 'aa'",
        ),
        (["aa", RECIPE], None, "data must be a ReportTask object, got list"),
        ({"organisation_id": "aa", "report_recipe_id": RECIPE}, "every morning", "'every morning' is not a valid cron"),
    ],
)
def test_a_schedule_that_cannot_make_a_report_task_says_why(data: Any, cron: str | None, reason: str) -> None:
    with pytest.raises(InvalidReportSchedule, match=reason):
        scheduled_report("aa", data, cron, NOW)
