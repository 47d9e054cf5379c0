"""When the listener hands a batch over (full, quiet, or at its maximum age), and how its tasks are claimed."""

import pytest

from kat_scheduler.events.consumer import MAX_BATCH_AGE, _Batch
from kat_scheduler.events.handlers import _spans


def test_a_lone_event_goes_after_one_quiet_window() -> None:
    batch = _Batch(started=100.0, last=100.0)
    assert batch.due_at(window=0.01) == pytest.approx(100.01)


def test_a_steady_stream_keeps_the_batch_open_until_its_maximum_age() -> None:
    batch = _Batch(started=100.0, last=100.2)
    assert batch.due_at(window=0.01) == pytest.approx(100.21)
    busy = _Batch(started=100.0, last=100.0 + MAX_BATCH_AGE)
    assert busy.due_at(window=0.01) == pytest.approx(100.0 + MAX_BATCH_AGE)


# --- how a handler splits a batch's tasks into claims ------------------------------------------


@pytest.mark.parametrize(
    ("count", "spans"),
    [
        (0, []),
        (1, [(0, 1)]),
        (1000, [(0, 1000)]),
        (1025, [(0, 1025)]),  # a tail of 25 rides along: one claim, one commit, one publish
        (1499, [(0, 1499)]),
        (1500, [(0, 1000), (1000, 1500)]),
        (2600, [(0, 1000), (1000, 2000), (2000, 2600)]),
    ],
)
def test_a_short_tail_of_tasks_joins_the_last_claim_and_every_task_is_covered_once(count, spans) -> None:
    assert _spans(count, 1000) == spans
    assert [i for start, end in spans for i in range(start, end)] == list(range(count))
