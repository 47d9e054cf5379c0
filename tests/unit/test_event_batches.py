"""When the listener hands a batch over: full, quiet for one window, or at its maximum age."""

import pytest

from kat_scheduler.events.consumer import MAX_BATCH_AGE, _Batch


def test_a_lone_event_goes_after_one_quiet_window() -> None:
    batch = _Batch(started=100.0, last=100.0)
    assert batch.due_at(window=0.01) == pytest.approx(100.01)


def test_a_steady_stream_keeps_the_batch_open_until_its_maximum_age() -> None:
    batch = _Batch(started=100.0, last=100.2)
    assert batch.due_at(window=0.01) == pytest.approx(100.21)
    busy = _Batch(started=100.0, last=100.0 + MAX_BATCH_AGE)
    assert busy.due_at(window=0.01) == pytest.approx(100.0 + MAX_BATCH_AGE)
