"""Backpressure's rule (pure) and how an unreadable depth is said: the error's text, URLs masked."""

from __future__ import annotations

import pytest

from kat_scheduler.dispatch.publishing import BrokerError
from kat_scheduler.producers.backpressure import error_text, read_backpressure
from kat_scheduler.rules.backpressure import backpressure


@pytest.mark.parametrize(
    ("depth", "max_band"),
    [(0, None), (10, None), (11, 2), (None, 2)],
    ids=["empty", "at the limit", "over the limit", "unreadable"],
)
def test_bands_above_the_backpressure_band_are_held_back_over_the_limit_or_when_the_depth_is_unknown(
    depth: int | None, max_band: int | None
) -> None:
    decision = backpressure("boefjes", depth, limit=10, band=2)
    assert decision.max_band == max_band and decision.on is (max_band is not None)


def test_an_unknown_depth_says_it_could_not_be_read_and_why() -> None:
    decision = backpressure("boefjes", None, limit=10, band=2, error="BrokerError: refused")
    assert decision.reason == (
        "the depth of queue boefjes could not be read (BrokerError: refused): "
        "only bands <= 2 are added, as when the queue is deep"
    )


def test_an_error_quoting_a_url_loses_its_password() -> None:
    exc = BrokerError("queue depth of 'boefjes': Error 111 connecting to amqp://kat:s3cret@rabbit:5672/kat.\nRefused")
    assert error_text(exc) == (
        "BrokerError: queue depth of 'boefjes': Error 111 connecting to amqp://kat:***@rabbit:5672/kat. Refused"
    )


class DownBroker:
    def queue_depth(self, queue: str) -> int:
        raise BrokerError(f"queue depth of {queue!r}: redis://:s3cret@127.0.0.1:1/0 refused")


def test_reading_an_unreadable_depth_holds_bands_back_and_warns_without_the_password(caplog) -> None:
    decision = read_backpressure(DownBroker(), "boefjes", limit=10, band=3)  # type: ignore[arg-type]
    assert decision.on and decision.max_band == 3 and decision.depth is None
    assert decision.error == "BrokerError: queue depth of 'boefjes': redis://:***@127.0.0.1:1/0 refused"
    [record] = [r for r in caplog.records if r.name == "kat_scheduler.producers.backpressure"]
    assert record.levelname == "WARNING" and "boefjes" in record.getMessage() and "s3cret" not in caplog.text
