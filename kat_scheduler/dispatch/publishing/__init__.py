"""The bulk publishing path: claimed task rows become Celery task messages, thousands a second.

A producer claims rows, turns each into an :class:`OutgoingMessage` and hands the batch to a
:class:`Publisher`. The messages are Celery protocol 2 task messages that a stock Celery worker
on our configuration consumes unchanged; only the way they reach the broker differs from
``apply_async``:

* Redis (:class:`~kat_scheduler.dispatch.publishing.redis_publisher.RedisPublisher`): kombu's envelope
  goes through a non-transactional redis-py pipeline, one ``LPUSH`` per
  queue and priority key and one round trip per chunk.
* RabbitMQ and anything else
  (:class:`~kat_scheduler.dispatch.publishing.kombu_publisher.KombuPublisher`): kombu's ``Producer`` on
  the default exchange, inside ``Producer.batch``.

Every message carries an explicit priority from :func:`kat_scheduler.queues.broker_priority`
(invariant 6). This module imports neither Celery, kombu nor redis: producers' pure parts may
import it freely; :func:`make_publisher` loads the broker code when it is called.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from kat_scheduler.settings import Settings

__all__ = ["BrokerError", "OutgoingMessage", "PublishError", "Publisher", "make_publisher"]


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """One task message to publish."""

    #: The tasks-table row id, which is also the Celery task id.
    task_id: uuid.UUID
    #: Celery task name, e.g. ``TaskName.BOEFJE_RUN`` (``kat.boefje.run``).
    task_name: str
    #: The queue it goes to (one of :class:`kat_scheduler.queues.Queue`).
    queue: str
    #: The ranker's band, 0 (most urgent) to 9; mapped by ``broker_priority``.
    band: int
    #: Keyword arguments of the task: JSON-able, shown in Flower, never secrets.
    kwargs: dict[str, Any]
    #: The message as its publisher will send it, when :meth:`Publisher.prepare` encoded it ahead.
    prepared: str | None = field(default=None, compare=False, repr=False)
    #: Not before this moment (timezone-aware): Celery protocol 2's ``eta`` header. A worker's
    #: consumer keeps such a message in its timer, not in a pool process, until then (and raises
    #: its prefetch count meanwhile, so other messages keep coming); ``None`` (every producer's
    #: message): at once, the header ``null`` as before.
    eta: datetime | None = None


class BrokerError(Exception):
    """The broker could not be reached or refused a request."""


class PublishError(BrokerError):
    """Publishing stopped part-way.

    ``published`` holds the task ids that are certainly on the broker. When ``certain`` is true,
    every other message of the call is certainly *not* on the broker (its row may be released);
    when false, some of the others may have been published (their rows must stay claimed, for
    the reaper to publish again; a duplicate message is harmless, invariant 3).
    """

    def __init__(self, reason: str, published: Iterable[uuid.UUID] = (), *, certain: bool) -> None:
        self.published: tuple[uuid.UUID, ...] = tuple(published)
        self.certain = certain
        super().__init__(reason)

    def __str__(self) -> str:
        outcome = "the rest certainly not" if self.certain else "the rest uncertain"
        return f"{self.args[0]} ({len(self.published)} published, {outcome})"


class Publisher(Protocol):
    """Publishes task messages in bulk over one reused broker connection."""

    def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """Publish all ``messages``, keeping their order within each queue and band.

        Raises :class:`PublishError` (after a bounded retry on connection errors) saying which
        were certainly published; ``ValueError`` or ``TypeError`` for a message that can never
        be published (unknown queue, band out of range, kwargs not JSON-able), before anything
        is sent.
        """
        ...

    def prepare(self, messages: Sequence[OutgoingMessage]) -> list[OutgoingMessage]:
        """``messages`` with as much of their encoding done as can be done ahead, on any thread.

        Publishing the result then only sends. Raises ``ValueError`` or ``TypeError`` for a
        message that can never be published, as :meth:`publish` would.
        """
        ...

    def queue_depth(self, queue: str) -> int:
        """Messages waiting on the broker in ``queue`` (all priorities); raises :class:`BrokerError`."""
        ...

    def close(self) -> None:
        """Release the connection; a later call connects again."""
        ...


def make_publisher(settings: Settings) -> Publisher:
    """The publisher for ``settings.broker_url``: Redis' fast path, or kombu for everything else."""
    from kat_scheduler.runtime.celery_config import broker_transport_options, task_queues

    url = settings.broker_url
    if urlsplit(url).scheme in ("redis", "rediss"):
        from kat_scheduler.dispatch.publishing.redis_publisher import RedisPublisher

        return RedisPublisher(
            url,
            transport_options=broker_transport_options(settings),
            queues=[queue.name for queue in task_queues(url)],
        )

    from kat_scheduler.dispatch.publishing.kombu_publisher import KombuPublisher

    return KombuPublisher(url, transport_options=broker_transport_options(settings), queues=task_queues(url))
