"""Publishing through kombu: RabbitMQ, and any broker without a faster path of ours.

One connection, kept across calls; our queues are declared once per connection exactly as the
workers declare them (``x-max-priority`` on RabbitMQ), then every message goes to the default
exchange with its queue as routing key, inside ``Producer.batch`` (pipelined where the
transport can, immediate on AMQP).

On AMQP the channel is in publisher-confirm mode (unless ``confirm=False``) and the confirms
are awaited once per chunk, not once per message: a message counts as published when RabbitMQ
has confirmed it (for our persistent messages on durable queues: once it is on disk), and a
refused (nacked) one is reported. Without confirms, a passive declare closes each chunk: when it
returns, the broker has taken every message before it, though it may not have stored them yet.
A chunk that failed part-way is sent again on a new connection (bounded), so a message may be
on the queue twice, which the worker's claim makes harmless (invariant 3). Calls are serialised
by a lock, so threads may share one publisher; after a fork the child opens its own connection.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from kombu.connection import Connection
from kombu.entity import Queue as KombuQueue
from kombu.messaging import Producer

from kat_scheduler.dispatch.publishing import BrokerError, OutgoingMessage, PublishError
from kat_scheduler.dispatch.publishing.envelope import (
    CONTENT_ENCODING,
    CONTENT_TYPE,
    PERSISTENT,
    origin,
    task_body,
    task_headers,
)
from kat_scheduler.queues import broker_priority, transport_of

logger = logging.getLogger(__name__)

#: Keyword arguments of ``Producer.publish`` for one message.
Encoded = tuple[uuid.UUID, dict[str, Any]]


class Confirms:
    """RabbitMQ publisher confirms on one channel, settled in bulk.

    The broker numbers the messages of a confirm-mode channel 1, 2, 3, ... and acks (or nacks)
    them, one at a time or "up to n" at once.
    """

    def __init__(self, channel: Any) -> None:
        self.next_tag = 1
        self.unsettled: dict[int, uuid.UUID] = {}
        self.nacked: list[uuid.UUID] = []
        channel.events["basic_ack"].add(self._ack)
        channel.events["basic_nack"].add(self._nack)
        channel.confirm_select()

    def sent(self, task_id: uuid.UUID) -> None:
        self.unsettled[self.next_tag] = task_id
        self.next_tag += 1

    def wait(self, connection: Connection, timeout: float) -> list[uuid.UUID]:
        """Wait until every message sent is settled; return (and forget) the nacked ones."""
        deadline = time.monotonic() + timeout
        while self.unsettled:
            connection.drain_events(timeout=max(deadline - time.monotonic(), 0.001))  # TimeoutError at the end
        nacked, self.nacked = self.nacked, []
        return nacked

    def _settle(self, tag: int, multiple: bool) -> list[uuid.UUID]:
        tags = [t for t in self.unsettled if t <= tag] if multiple else [tag]
        return [self.unsettled.pop(t) for t in tags if t in self.unsettled]

    def _ack(self, tag: int, multiple: bool) -> None:
        self._settle(tag, multiple)

    def _nack(self, tag: int, multiple: bool) -> None:
        self.nacked += self._settle(tag, multiple)


class KombuPublisher:
    """:class:`~kat_scheduler.dispatch.publishing.Publisher` on a kombu connection."""

    def __init__(
        self,
        url: str,
        *,
        transport_options: Mapping[str, Any],
        queues: Iterable[KombuQueue],
        connect_timeout: float = 2.0,
        confirm: bool = True,
        confirm_timeout: float = 10.0,
        retries: int = 2,
        backoff: float = 0.1,
        chunk_size: int = 1000,
    ) -> None:
        self.url = url
        self.transport = transport_of(url)
        self.transport_options = dict(transport_options)
        self.queues = {queue.name: queue for queue in queues}
        self.connect_timeout = connect_timeout
        self.confirm = confirm and self.transport == "amqp"
        self.confirm_timeout = confirm_timeout
        self.retries = retries
        self.backoff = backoff
        self.chunk_size = chunk_size
        # Errors after which the connection is dropped and the call retried.
        errors = Connection(url, transport_options=self.transport_options)  # does not connect
        self._transient = (*errors.connection_errors, *errors.channel_errors, OSError)
        self._lock = threading.Lock()
        self._connection: Connection | None = None
        self._producer: Producer | None = None
        self._confirms: Confirms | None = None
        self._pid = 0

    # --- Publisher ----------------------------------------------------------------------

    def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        # Everything is encoded first: a message that can never be sent fails before any is sent.
        sender = origin()
        encoded = [self._encode(message, sender) for message in messages]
        published: list[uuid.UUID] = []
        with self._lock:
            for start in range(0, len(encoded), self.chunk_size):
                self._publish_chunk(encoded[start : start + self.chunk_size], published)

    def prepare(self, messages: Sequence[OutgoingMessage]) -> list[OutgoingMessage]:
        # kombu encodes again as it sends: here only what would make publish() refuse the batch.
        sender = origin()
        for message in messages:
            self._encode(message, sender)
        return list(messages)

    def queue_depth(self, queue: str) -> int:
        self._check_queue(queue)
        with self._lock:
            for attempt in range(1, self.retries + 2):
                self._pause(attempt)
                try:
                    channel = self._connected().channel
                    return int(channel.queue_declare(queue=queue, passive=True).message_count)
                except self._transient as exc:
                    error: Exception = exc
                    self._drop()
        raise BrokerError(f"queue depth of {queue!r}: {error}") from error

    def close(self) -> None:
        with self._lock:
            self._drop()

    def __enter__(self) -> KombuPublisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- internals ----------------------------------------------------------------------

    def _check_queue(self, queue: str) -> None:
        # On RabbitMQ a message to a queue nobody declared is dropped without a word.
        if queue not in self.queues:
            raise ValueError(f"unknown queue {queue!r}; expected one of {sorted(self.queues)}")

    def _encode(self, message: OutgoingMessage, sender: str) -> Encoded:
        self._check_queue(message.queue)
        return message.task_id, {
            "body": task_body(message),
            "routing_key": message.queue,
            "priority": broker_priority(message.band, self.transport),
            "headers": task_headers(message, sender),
            "correlation_id": str(message.task_id),
        }

    def _pause(self, attempt: int) -> None:
        if attempt > 1:
            time.sleep(self.backoff * 2 ** (attempt - 2))

    def _publish_chunk(self, chunk: list[Encoded], published: list[uuid.UUID]) -> None:
        maybe_sent = False
        for attempt in range(1, self.retries + 2):
            self._pause(attempt)
            try:
                producer = self._connected()
            except self._transient as exc:
                error: Exception = exc
                logger.warning("broker unreachable (attempt %d of %d): %s", attempt, self.retries + 1, exc)
                self._drop()
                continue
            try:
                maybe_sent = True
                nacked = self._send(producer, chunk)
            except self._transient as exc:
                error = exc
                logger.warning("publishing failed (attempt %d of %d): %s", attempt, self.retries + 1, exc)
                self._drop()
                continue
            published.extend(task_id for task_id, _ in chunk if task_id not in nacked)
            if nacked:
                raise PublishError(f"the broker refused {len(nacked)} messages", published, certain=True)
            return
        raise PublishError(f"publish failed: {error}", published, certain=not maybe_sent)

    def _send(self, producer: Producer, chunk: list[Encoded]) -> set[uuid.UUID]:
        """Publish ``chunk``; the task ids the broker refused."""
        confirms = self._confirms
        with producer.batch(self.chunk_size):
            for task_id, fields in chunk:
                producer.publish(
                    exchange="",
                    content_type=CONTENT_TYPE,
                    content_encoding=CONTENT_ENCODING,
                    delivery_mode=PERSISTENT,
                    reply_to="",
                    retry=False,
                    **fields,
                )
                if confirms is not None:
                    confirms.sent(task_id)
        if confirms is not None:
            return set(confirms.wait(producer.connection, self.confirm_timeout))
        if self.transport == "amqp":  # a round trip: the broker has taken every publish before it
            producer.channel.queue_declare(queue=chunk[-1][1]["routing_key"], passive=True)
        return set()

    def _connected(self) -> Producer:
        """The producer on our connection; connects and declares our queues first if needed."""
        if self._producer is not None and self._pid == os.getpid():
            return self._producer
        self._connection = self._producer = self._confirms = None  # a parent's connection is not ours
        connection = Connection(
            self.url, connect_timeout=self.connect_timeout, transport_options=self.transport_options
        )
        try:
            connection.ensure_connection(max_retries=0, reraise_as_library_errors=False)  # we retry ourselves
            channel = connection.channel()
            for queue in self.queues.values():
                queue.bind(channel).declare()
            confirms = Confirms(channel) if self.confirm else None
        except BaseException:
            with contextlib.suppress(Exception):
                connection.release()
            raise
        logger.info("publisher connected to %s", connection.as_uri())
        self._connection, self._confirms, self._pid = connection, confirms, os.getpid()
        self._producer = Producer(channel, auto_declare=False)  # on the default exchange
        return self._producer

    def _drop(self) -> None:
        connection, self._connection, self._producer, self._confirms = self._connection, None, None, None
        if connection is not None and self._pid == os.getpid():
            with contextlib.suppress(Exception):
                connection.release()
