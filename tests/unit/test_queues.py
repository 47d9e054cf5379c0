import pytest

from kat_scheduler.queues import band_of_priority, broker_priority, transport_of


@pytest.mark.parametrize(
    ("band", "redis", "amqp"),
    [(0, 0, 9), (1, 1, 8), (5, 5, 4), (9, 9, 0)],
)
def test_band_zero_is_most_urgent_on_both_brokers(band: int, redis: int, amqp: int) -> None:
    # Redis consumes the lowest number first; RabbitMQ delivers the highest first.
    assert broker_priority(band, "redis") == redis
    assert broker_priority(band, "amqp") == amqp
    assert band_of_priority(amqp, "amqp") == band


def test_more_urgent_bands_always_win_on_each_broker() -> None:
    redis = [broker_priority(b, "redis") for b in range(10)]
    amqp = [broker_priority(b, "amqp") for b in range(10)]
    assert redis == sorted(redis)  # ascending number = later on Redis
    assert amqp == sorted(amqp, reverse=True)  # descending number = later on RabbitMQ


@pytest.mark.parametrize("band", [-1, 10, 2.5, None])
def test_a_band_outside_zero_to_nine_is_refused(band) -> None:
    with pytest.raises(ValueError, match="band"):
        broker_priority(band, "redis")


@pytest.mark.parametrize(
    ("url", "transport"),
    [
        ("redis://127.0.0.1:6379/0", "redis"),
        ("rediss://h:6380/0", "redis"),
        ("amqp://guest:guest@127.0.0.1:5672//", "amqp"),
        ("pyamqp://h//", "amqp"),
        ("memory://", "memory"),
    ],
)
def test_the_transport_is_read_from_the_broker_url(url: str, transport: str) -> None:
    assert transport_of(url) == transport
