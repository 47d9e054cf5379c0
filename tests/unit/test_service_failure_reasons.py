"""How a task given up on a service says so, and how many times in a row (#19 item 4)."""

from __future__ import annotations

import pytest

from kat_scheduler.storage.tables import SERVICE_FAILED_PREFIX
from kat_scheduler.storage.tasks import (
    handled_reason,
    requeued_reason,
    service_failed_reason_after,
    service_failures_in_a_row,
)


def test_a_first_service_failure_names_only_the_service() -> None:
    assert service_failed_reason_after("bytes", "new raw file") == "service failed: bytes"
    assert service_failed_reason_after("bytes", None) == "service failed: bytes"
    assert service_failures_in_a_row("service failed: bytes") == 1


def test_a_task_queued_again_that_fails_on_a_service_again_counts_the_failures_in_a_row() -> None:
    reason = service_failed_reason_after("octopoes", requeued_reason(2))
    assert reason == "service failed: octopoes (3 in a row)"
    assert service_failures_in_a_row(reason) == 3
    assert requeued_reason(1) == "queued again after 1 service failure"


def test_a_handled_row_keeps_the_prefix_so_it_stays_no_run() -> None:
    queued = handled_reason("service failed: bytes (2 in a row)", "queued again")
    assert queued == "service failed: bytes (2 in a row); queued again"
    gave_up = handled_reason("service failed: bytes (6 in a row)", "gave up after 6 service failures")
    assert gave_up == "service failed: bytes; gave up after 6 service failures"


@pytest.mark.parametrize("service", ["katalogus", "a-very-long-service-name-that-nobody-would-ever-use-in-practice"])
def test_every_reason_fits_the_column_and_keeps_its_prefix(service: str) -> None:
    failed = service_failed_reason_after(service, requeued_reason(999))
    for reason in (
        failed,
        handled_reason(failed, "queued again"),
        handled_reason(failed, "gave up after 1000 service failures"),
    ):
        assert len(reason) <= 64 and reason.startswith(SERVICE_FAILED_PREFIX)
    assert service_failures_in_a_row(failed) == 1000
