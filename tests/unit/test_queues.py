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


@pytest.mark.parametrize("transport", ["redis", "amqp"])
def test_every_band_comes_back_from_its_broker_priority(transport: str) -> None:
    assert [band_of_priority(broker_priority(band, transport), transport) for band in range(10)] == list(range(10))


def test_kombu_redis_keys_hold_one_band_each_with_our_transport_options() -> None:
    from kat_scheduler.dispatch.publishing.redis_publisher import PriorityKeys
    from kat_scheduler.runtime.celery_config import broker_transport_options
    from kat_scheduler.settings import load_settings

    keys = PriorityKeys(broker_transport_options(load_settings(broker_url="redis://127.0.0.1:6379/0")))
    assert keys.all_keys("boefjes") == ["boefjes"] + [f"boefjes:{n}" for n in range(1, 10)]
    assert [keys.key("boefjes", broker_priority(band, "redis")) for band in (0, 3, 9)] == [
        "boefjes",
        "boefjes:3",
        "boefjes:9",
    ]
