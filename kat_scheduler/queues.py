"""Queue names, task names and the one mapping from a ranker's band to a broker priority.

Bands run 0–9, **0 most urgent** (manual requests get band 0). Brokers disagree on direction:

* Redis (kombu's emulation): lower number is consumed first, with ``priority_steps = list(range(10))``
  every band gets its own list; the band is used as it is.
* RabbitMQ: higher number is delivered first, and only on a queue declared with
  ``x-max-priority``; the band is reversed (``9 - band``).

No Celery or kombu import here: rankers and producers' pure parts may use these names freely.
"""

from __future__ import annotations

from enum import StrEnum
from urllib.parse import urlsplit

BAND_COUNT = 10
MOST_URGENT_BAND = 0
LEAST_URGENT_BAND = BAND_COUNT - 1
MANUAL_BAND = MOST_URGENT_BAND
#: Priority steps of the Redis transport: one list per band.
REDIS_PRIORITY_STEPS = list(range(BAND_COUNT))
#: ``x-max-priority`` of every RabbitMQ queue we declare.
AMQP_MAX_PRIORITY = BAND_COUNT - 1


#: KAT's two event queues on its RabbitMQ (the listener's input; KAT-API.md).
SCAN_PROFILE_MUTATIONS = "scan_profile_mutations"
RAW_FILE_RECEIVED = "raw_file_received"


class Queue(StrEnum):
    BOEFJES = "boefjes"
    NORMALIZERS = "normalizers"
    SCHEDULER = "scheduler"


class TaskName(StrEnum):
    """Celery task names, chosen to read well in Flower."""

    BOEFJE_RUN = "kat.boefje.run"
    NORMALIZER_RUN = "kat.normalizer.run"
    PLAN_BOEFJES = "kat.scheduler.plan_boefjes"
    PLAN_BOEFJES_FOR_ORG = "kat.scheduler.plan_boefjes_for_org"
    QUEUE_DUE_SCHEDULES = "kat.scheduler.queue_due_schedules"
    QUEUE_REPORT_SCHEDULES = "kat.scheduler.queue_report_schedules"
    REAP = "kat.scheduler.reap"


#: Which queue each task family is routed to.
ROUTES: dict[str, Queue] = {
    "kat.boefje.*": Queue.BOEFJES,
    "kat.normalizer.*": Queue.NORMALIZERS,
    "kat.scheduler.*": Queue.SCHEDULER,
}


def transport_of(broker_url: str) -> str:
    """``redis`` or ``amqp`` (the two brokers we support), or the scheme as it is."""
    scheme = urlsplit(broker_url).scheme.split("+", 1)[0]
    if scheme in ("redis", "rediss", "sentinel"):
        return "redis"
    if scheme in ("amqp", "amqps", "pyamqp"):
        return "amqp"
    return scheme


def broker_priority(band: int, transport: str) -> int:
    """The message priority that makes ``band`` (0 most urgent) come out in order on ``transport``."""
    if not isinstance(band, int) or not MOST_URGENT_BAND <= band <= LEAST_URGENT_BAND:
        raise ValueError(f"band must be an integer from 0 to {LEAST_URGENT_BAND}, got {band!r}")
    if transport == "redis":
        return band
    if transport == "amqp":
        return AMQP_MAX_PRIORITY - band
    # The in-memory transport (tests of pure parts) has no priorities; keep Redis' direction.
    return band


def band_of_priority(priority: int, transport: str) -> int:
    """The inverse of :func:`broker_priority`."""
    return AMQP_MAX_PRIORITY - priority if transport == "amqp" else priority
