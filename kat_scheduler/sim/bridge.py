"""Publish the simulation's events onto a real broker, as Octopoes and Bytes do.

>>> with EventBridge("amqp://guest:guest@127.0.0.1:5672//") as bridge:
...     kat = SimulatedKAT(world, event_sink=bridge).start()

Each event is a plain JSON body (``application/json``, not a Celery message) on the default
exchange with its queue name as routing key, delivered persistently to a durable queue
(``scan_profile_mutations``, ``raw_file_received``, no extra arguments) that is declared once
per connection (a queue a consumer already declared with other arguments is used as it is).
Works on RabbitMQ (``amqp://``) and on kombu's Redis transport (``redis://``).

The bridge is an event sink that never raises: world listeners run inside the simulated
services' request handlers, and a broker that is down must not turn a raw upload into a 500.
A connection error drops the connection and the chunk is sent again on a new one, a bounded
number of times; after that the events are counted in :attr:`EventBridge.failed`, an error
is logged once per outage, and for ``pause`` seconds events are dropped without trying.

On RabbitMQ the channel is in publisher-confirm mode: an event counts as published once the
broker has confirmed it (for a durable queue and a persistent message: stored), awaited once
per chunk. A chunk sent again may leave some of its events on the queue twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Self

from amqp.exceptions import PreconditionFailed
from kombu.connection import Connection
from kombu.exceptions import BatchPublishError
from kombu.messaging import Producer

from kat_scheduler.queues import transport_of

logger = logging.getLogger(__name__)

CONTENT_TYPE = "application/json"
CONTENT_ENCODING = "utf-8"
PERSISTENT = 2


class BrokerUnavailable(Exception):
    """Every attempt to publish failed, or the broker failed a moment ago."""


class _Confirms:
    """RabbitMQ publisher confirms on one channel, awaited in bulk.

    The broker numbers the messages of a confirm-mode channel 1, 2, 3, ... and acks or nacks
    them one at a time or "everything up to n" at once.
    """

    def __init__(self, channel: Any) -> None:
        self._next_tag = 1
        self._unsettled: set[int] = set()
        self._nacked = 0
        channel.events["basic_ack"].add(self._ack)
        channel.events["basic_nack"].add(self._nack)
        channel.confirm_select()

    def sent(self, count: int) -> None:
        self._unsettled.update(range(self._next_tag, self._next_tag + count))
        self._next_tag += count

    def wait(self, connection: Connection, timeout: float) -> int:
        """Wait until every message sent is settled; returns (and forgets) how many were nacked."""
        deadline = time.monotonic() + timeout
        while self._unsettled:
            connection.drain_events(timeout=max(deadline - time.monotonic(), 0.001))  # TimeoutError at the end
        nacked, self._nacked = self._nacked, 0
        return nacked

    def _settle(self, tag: int, multiple: bool) -> int:
        tags = {t for t in self._unsettled if t <= tag} if multiple else {tag} & self._unsettled
        self._unsettled -= tags
        return len(tags)

    def _ack(self, tag: int, multiple: bool) -> None:
        self._settle(tag, multiple)

    def _nack(self, tag: int, multiple: bool) -> None:
        self._nacked += self._settle(tag, multiple)


class EventBridge:
    """An event sink that publishes every event on a kombu broker; thread-safe.

    ``published`` and ``failed`` count events. :meth:`close` releases the connection; a later
    publish opens a new one.
    """

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = 2.0,
        timeout: float = 5.0,
        confirm_timeout: float = 10.0,
        retries: int = 2,
        backoff: float = 0.1,
        pause: float = 1.0,
        chunk_size: int = 1000,
    ) -> None:
        self.url = url
        #: The broker URL with its password masked, for logs and output.
        self.safe_url = str(Connection(url).as_uri())
        self.transport = transport_of(url)
        self.connect_timeout = connect_timeout
        #: Seconds to wait for the broker once connected (socket reads and writes).
        self.timeout = timeout
        #: Seconds to wait for RabbitMQ to confirm a chunk (a loaded broker may take a few).
        self.confirm_timeout = confirm_timeout
        self.retries = retries
        self.backoff = backoff
        #: Seconds after a failed publish during which events are dropped without trying.
        self.pause = pause
        self.chunk_size = chunk_size
        self.published = 0
        self.failed = 0
        self._lock = threading.Lock()
        self._connection: Connection | None = None
        self._producer: Producer | None = None
        self._confirms: _Confirms | None = None
        self._declared: set[str] = set()
        self._down_until = 0.0
        self._in_outage = False
        probe = self._new_connection()  # does not connect
        self._transient = (*probe.connection_errors, *probe.channel_errors, OSError, BatchPublishError)

    # -- publishing ------------------------------------------------------------------------

    def __call__(self, queue: str, body: dict[str, Any]) -> None:
        """The event sink: publish one event; never raises."""
        try:
            self.publish_many(queue, [body])
        except Exception:
            logger.exception("could not publish a %s event", queue)
            with self._lock:
                self.failed += 1

    def publish(self, queue: str, body: dict[str, Any]) -> bool:
        """Publish one event; whether the broker took it."""
        return self.publish_many(queue, [body]) == 1

    def publish_many(self, queue: str, bodies: Iterable[dict[str, Any]]) -> int:
        """Publish events in order on one connection, in chunks; returns how many the broker took.

        Broker errors are counted and logged, not raised; a body that is not JSON raises
        before anything is sent.
        """
        encoded = [json.dumps(body) for body in bodies]
        taken = 0
        with self._lock:
            for start in range(0, len(encoded), self.chunk_size):
                chunk = encoded[start : start + self.chunk_size]
                try:
                    accepted = self._send(queue, chunk)
                except BrokerUnavailable as error:
                    self._give_up(queue, len(encoded) - start, error)
                    break
                taken += accepted
                self.published += accepted
                if accepted < len(chunk):
                    self.failed += len(chunk) - accepted
                    logger.error("the broker refused %d %s events", len(chunk) - accepted, queue)
        return taken

    def _send(self, queue: str, chunk: list[str]) -> int:
        """Send one chunk, on a new connection again after a connection error; returns how many were taken."""
        if time.monotonic() < self._down_until:
            raise BrokerUnavailable(f"failed less than {self.pause}s ago")
        error: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * attempt)
            try:
                accepted = self._send_once(queue, chunk)
            except self._transient as exc:
                error = exc
                self._drop()
                if attempt < self.retries:
                    logger.warning("publishing %d %s events failed (%r); trying again", len(chunk), queue, exc)
                continue
            except BaseException:
                self._drop()
                raise
            if self._in_outage:
                self._in_outage = False
                logger.warning("publishing events to %s again (%d events dropped so far)", self.safe_url, self.failed)
            return accepted
        self._down_until = time.monotonic() + self.pause
        raise BrokerUnavailable(f"{type(error).__name__}: {error}") from error

    def _send_once(self, queue: str, chunk: list[str]) -> int:
        producer = self._connected()
        if queue not in self._declared:
            self._declare(queue)
        if self._confirms is not None:
            # Counted before sending: py-amqp reads the broker's acks while publishing the next ones.
            self._confirms.sent(len(chunk))
        with producer.batch(max_size=len(chunk)):  # pipelined on Redis, immediate on AMQP
            for body in chunk:
                producer.publish(
                    body,
                    exchange="",
                    routing_key=queue,
                    content_type=CONTENT_TYPE,
                    content_encoding=CONTENT_ENCODING,
                    delivery_mode=PERSISTENT,
                    retry=False,
                )
        if self._confirms is None:
            return len(chunk)
        assert self._connection is not None
        return len(chunk) - self._confirms.wait(self._connection, self.confirm_timeout)

    def _give_up(self, queue: str, count: int, error: BrokerUnavailable) -> None:
        self.failed += count
        if self._in_outage:
            logger.debug("dropped %d %s events: %s", count, queue, error)
            return
        self._in_outage = True
        logger.error(
            "could not publish %d %s events to %s: %s; dropping events until the broker is back",
            count,
            queue,
            self.safe_url,
            error,
        )

    # -- the connection --------------------------------------------------------------------

    def _new_connection(self) -> Connection:
        if self.transport == "amqp":
            options = {"read_timeout": self.timeout, "write_timeout": self.timeout}
        else:
            options = {"socket_timeout": self.timeout}
        return Connection(self.url, connect_timeout=self.connect_timeout, transport_options=options)

    def _connected(self) -> Producer:
        if self._producer is None:
            connection = self._new_connection()
            self._connection = connection
            connection.ensure_connection(max_retries=0, reraise_as_library_errors=False)  # we retry ourselves
            channel = connection.channel()
            self._confirms = _Confirms(channel) if self.transport == "amqp" else None
            self._producer = Producer(channel, auto_declare=False)
        return self._producer

    def _declare(self, queue: str) -> None:
        """Declare ``queue`` durable, on a channel of its own (a refusal closes the channel)."""
        assert self._connection is not None
        channel = self._connection.channel()
        try:
            channel.queue_declare(queue=queue, durable=True, auto_delete=False)
        except PreconditionFailed as refused:
            logger.warning("queue %s exists with other settings; publishing to it as it is (%s)", queue, refused)
        finally:
            with contextlib.suppress(*self._transient):
                channel.close()
        self._declared.add(queue)

    def _drop(self) -> None:
        connection, self._connection, self._producer, self._confirms = self._connection, None, None, None
        self._declared.clear()
        if connection is None:
            return
        try:
            if self.transport == "amqp":
                connection.collect()  # no goodbye over a connection that may be dead
            else:
                connection.release()
        except Exception:
            logger.debug("error while dropping the connection", exc_info=True)

    # -- lifecycle -------------------------------------------------------------------------

    def close(self, timeout: float = 10.0) -> None:
        """Close the connection; a publish still retrying after ``timeout`` seconds is left to end with the process."""
        if not self._lock.acquire(timeout=timeout):
            logger.warning(
                "a publish to %s is still in progress after %.0fs; not waiting for it", self.safe_url, timeout
            )
            return
        try:
            connection, self._connection, self._producer, self._confirms = self._connection, None, None, None
            self._declared.clear()
            if connection is not None:
                try:
                    connection.release()
                except Exception:
                    logger.debug("error while closing the connection", exc_info=True)
        finally:
            self._lock.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
