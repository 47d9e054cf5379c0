"""``SCHEDULER_PULL_SCHEDULERS``: which schedulers' tasks are popped over HTTP instead of published."""

from __future__ import annotations

import pytest

from kat_scheduler.models.tasks import SchedulerId
from kat_scheduler.settings import SettingsError, load_settings


def test_by_default_only_report_tasks_are_pulled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCHEDULER_PULL_SCHEDULERS", raising=False)

    assert load_settings().pull_scheduler_ids == {SchedulerId.REPORT}


@pytest.mark.parametrize(
    ("value", "pulled"),
    [
        ("", set()),
        (" boefje , report,boefje", {SchedulerId.BOEFJE, SchedulerId.REPORT}),
        ("normalizer", {SchedulerId.NORMALIZER}),
    ],
)
def test_a_comma_list_names_the_pulled_schedulers(
    monkeypatch: pytest.MonkeyPatch, value: str, pulled: set[SchedulerId]
) -> None:
    monkeypatch.setenv("SCHEDULER_PULL_SCHEDULERS", value)

    assert load_settings().pull_scheduler_ids == pulled


def test_an_unknown_scheduler_is_refused_at_start_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCHEDULER_PULL_SCHEDULERS", "report,bofje")

    with pytest.raises(SettingsError, match=r"SCHEDULER_PULL_SCHEDULERS: unknown scheduler 'bofje'"):
        load_settings()
