"""The event listener's machinery: KAT's events off the broker, in batches, into a handler.

KAT publishes ``scan_profile_mutations`` and ``raw_file_received`` as plain JSON bodies on the
default exchange, to durable queues of those names. :class:`EventConsumer` consumes them with
kombu (RabbitMQ in production, kombu's Redis transport in an embedded run), collects the messages
of each queue into batches, validates them and calls ``handler(queue, events)`` once per batch.

A message is acked only after its work is done:

* a message that is not JSON or does not validate is published, body untouched, to
  ``<queue>.dead`` with the headers ``x-death-reason`` and ``x-original-queue``, then acked;
* when the handler returns, the events it rejected go to ``<queue>.dead`` and the rest are acked;
* when the handler raises, the batch waits out a backoff (doubling up to ``max_backoff``, reset
  by the next success) and goes back on the queue;
* when the connection is lost, the broker puts our unacked messages back by itself, and we
  reconnect after the same kind of backoff.

So every event is handled at least once; a batch cut off between handler and ack is handled
again, which the handler's claims make harmless. We declare nothing but our two queues and
their ``.dead`` queues, and an event queue that already exists is used as it is, so however
KAT declared it, our declaration never clashes with KAT's.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Protocol, TypeVar, runtime_checkable

from kombu.connection import Connection
from kombu.entity import Queue as KombuQueue
from kombu.message import Message
from kombu.messaging import Consumer, Producer
from pydantic import BaseModel, ValidationError

from kat_scheduler.models.events import RawFileReceived, ScanProfileMutation
from kat_scheduler.queues import RAW_FILE_RECEIVED, SCAN_PROFILE_MUTATIONS, transport_of
from kat_scheduler.runtime.heartbeat import Heartbeat
from kat_scheduler.settings import Settings, masked_url

logger = logging.getLogger(__name__)


#: The model that validates the events of each queue.
EVENT_MODELS: dict[str, type[BaseModel]] = {
    SCAN_PROFILE_MUTATIONS: ScanProfileMutation,
    RAW_FILE_RECEIVED: RawFileReceived,
}

STATS = ("received", "acked", "dead_lettered", "requeued", "batches", "reconnects")
PERSISTENT = 2
#: RabbitMQ's prefetch count is a 16-bit number.
MAX_PREFETCH = 65535
#: Longest wait for a message while no batch is open: a stop is noticed within this time.
IDLE_WAIT = 0.5
#: Longest ``x-death-reason`` kept.
MAX_REASON = 300
#: On the Redis transport our unacked messages are kept under keys of their own, away from
#: Celery's (which may share the database): a killed listener's messages come back after this
#: visibility timeout, and neither side's restore ever redelivers the other's messages.
REDIS_TRANSPORT_OPTIONS: dict[str, Any] = {
    "visibility_timeout": 300,
    "unacked_key": "kat_scheduler.events.unacked",
    "unacked_index_key": "kat_scheduler.events.unacked_index",
    "unacked_mutex_key": "kat_scheduler.events.unacked_mutex",
}
#: On RabbitMQ a dead letter counts as stored once the broker has confirmed it.
AMQP_TRANSPORT_OPTIONS: dict[str, Any] = {"confirm_publish": True}


class TransientError(Exception):
    """Raised by a handler: the batch cannot be done now (a service or the database is down)."""


@dataclass(frozen=True)
class Rejected:
    """Returned by a handler: the event at ``index`` of its batch can never be processed."""

    index: int
    reason: str


#: ``handler(queue, events) -> rejected``: ``events`` are the validated events of one batch
#: (:class:`ScanProfileMutation` or :class:`RawFileReceived`, see :data:`EVENT_MODELS`). Whatever
#: the batch causes is persisted before it returns; it returns the events it will never be able
#: to process, and raises :class:`TransientError` to have the whole batch tried again later.
Handler = Callable[[str, list[Any]], list[Rejected]]
#: A :class:`StagedHandler` batch's last stage: sends what its writes claimed; returns as a handler does.
Send = Callable[[], list[Rejected]]
#: What a :class:`StagedHandler`'s ``plan`` returns: the batch's database writes, which return its :data:`Send`.
Write = Callable[[], Send]


@runtime_checkable
class StagedHandler(Protocol):
    """A handler written in three stages: ``plan(queue, events)`` decides (and may raise, as a
    handler does) and returns ``write``, which claims and cancels in the database and returns
    ``send``, which publishes what was claimed and returns the rejected events.

    Calling the handler does all three at once, and that is how the listener calls it: one batch
    at a time. The stages let a caller (a test, or a wrapper such as
    :class:`~kat_scheduler.events.recording_handler.RecordingHandler`) look between them.
    """

    def __call__(self, queue: str, events: list[Any]) -> list[Rejected]: ...

    def plan(self, queue: str, events: list[Any]) -> Write: ...


def dead_letter_queue(queue: str) -> str:
    return f"{queue}.dead"


class Backoff:
    """Delays that double from ``first`` up to ``cap``, until :meth:`reset`."""

    def __init__(self, first: float, cap: float) -> None:
        self.first = first
        self.cap = cap
        self.failures = 0

    def next(self) -> float:
        delay = min(self.cap, self.first * 2.0 ** min(self.failures, 32))
        self.failures += 1
        return delay

    def reset(self) -> None:
        self.failures = 0


class Poison(Exception):
    """A message that can never become an event."""


T = TypeVar("T")

#: While a batch is being handled, how often (seconds) the receiving loop looks whether it is done.
HANDLER_POLL = 0.002


#: A batch in the handler for longer than this (seconds) stops the heartbeat: the listener is
#: connected but stuck (a service or the database hanging past its timeouts).
STALLED_AFTER = 120.0


@dataclass
class _InFlight:
    """A batch handed to the handler's thread, waiting to be acked."""

    queue: str
    held: list[Message]
    events: int
    future: Future[dict[int, str]]
    started: float
    warned: bool = False

    def stalled(self, now: float) -> bool:
        if now - self.started < STALLED_AFTER:
            return False
        if not self.warned:
            self.warned = True
            logger.warning(
                "%s: a batch of %d events has been in the handler for %.0f s; the heartbeat stops until it is done",
                self.queue,
                self.events,
                now - self.started,
            )
        return True


def _in_daemon_thread(function: Callable[..., T], *args: Any) -> Future[T]:
    """``function(*args)`` on a daemon thread of its own (a process exiting does not wait for it)."""
    future: Future[T] = Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(function(*args))
        except BaseException as exc:  # handed to the receiving thread, which decides
            future.set_exception(exc)

    threading.Thread(target=run, name="events-handler", daemon=True).start()
    return future


#: A batch is handed over at the latest this long after its first message, however busy the queue.
MAX_BATCH_AGE = 0.25


@dataclass
class Batch:
    started: float
    messages: list[Message] = field(default_factory=list)
    last: float = 0.0

    def due_at(self, window: float) -> float:
        """When no message came for ``window`` seconds, or the batch reached its maximum age."""
        return min(max(self.last, self.started) + window, self.started + MAX_BATCH_AGE)


class _Batches:
    """The messages of one connection, collected per queue into batches."""

    def __init__(self, size: int, window: float) -> None:
        self.size = size
        self.window = window
        self.open: dict[str, Batch] = {}

    def add(self, queue: str, message: Message) -> None:
        now = time.monotonic()
        batch = self.open.setdefault(queue, Batch(now))
        batch.messages.append(message)
        batch.last = now

    def next_due(self, now: float) -> tuple[str, list[Message]] | None:
        """Take the oldest batch that is full or whose window has passed."""
        due = [
            (batch.started, queue)
            for queue, batch in self.open.items()
            if len(batch.messages) >= self.size or now >= batch.due_at(self.window)
        ]
        if not due:
            return None
        queue = min(due)[1]
        batch = self.open.pop(queue)
        taken, rest = batch.messages[: self.size], batch.messages[self.size :]
        if rest:
            self.open[queue] = Batch(now, rest, now)
        return queue, taken

    def full(self, queue: str) -> bool:
        """Whether ``queue``'s open batch holds a whole batch."""
        batch = self.open.get(queue)
        return batch is not None and len(batch.messages) >= self.size

    def wait(self, now: float) -> float:
        """How long to wait for more messages before a batch falls due."""
        if not self.open:
            return IDLE_WAIT
        first_due = min(batch.due_at(self.window) for batch in self.open.values())
        return max(first_due - now, 0.001)

    def take_all(self) -> list[Message]:
        messages = [message for batch in self.open.values() for message in batch.messages]
        self.open.clear()
        return messages


class EventConsumer:
    """Consumes the event queues that have a handler, in batches; see the module docstring.

    ``prefetch`` (default ``2 * batch_size``: the batch in the handler and the next one) is how
    many unacked messages the broker lets us hold. ``min_backoff`` is the first delay after a
    failed batch or a lost connection; each further failure doubles it, up to ``max_backoff``.
    """

    def __init__(
        self,
        url: str,
        handlers: dict[str, Handler],
        *,
        batch_size: int = 500,
        batch_window: float = 0.05,
        prefetch: int | None = None,
        max_backoff: float = 30.0,
        connect_timeout: float = 10.0,
        min_backoff: float = 0.5,
        heartbeat: Heartbeat | None = None,
    ) -> None:
        unknown = sorted(set(handlers) - set(EVENT_MODELS))
        if unknown or not handlers:
            raise ValueError(f"handlers must be given for some of {sorted(EVENT_MODELS)}, not {unknown or 'none'}")
        if batch_size < 1 or batch_window < 0 or min_backoff < 0 or max_backoff < min_backoff:
            raise ValueError("batch_size must be at least 1, batch_window >= 0 and 0 <= min_backoff <= max_backoff")
        self.url = url
        self.handlers = dict(handlers)
        self.batch_size = batch_size
        self.batch_window = batch_window
        self.prefetch = min(prefetch or 2 * batch_size, MAX_PREFETCH)
        self.connect_timeout = connect_timeout
        self.heartbeat = heartbeat or Heartbeat(None)
        self._handler_backoff = Backoff(min_backoff, max_backoff)
        self._reconnect_backoff = Backoff(min_backoff, max_backoff)
        self._stats = dict.fromkeys(STATS, 0)
        self._stats_lock = threading.Lock()
        self._multiple_acks = False

    # --- public --------------------------------------------------------------------------

    def run(self, *, stop: threading.Event | None = None, max_batches: int | None = None) -> None:
        """Consume until ``stop`` is set (or ``max_batches`` batches are done), reconnecting as needed."""
        stop = stop or threading.Event()
        while not (stop.is_set() or self._finished(max_batches)):
            connection = self._connection()
            lost = (*connection.connection_errors, *connection.channel_errors, OSError)
            try:
                with connection:
                    self._consume(connection, stop, max_batches)
            except lost as exc:
                self._count("reconnects")
                delay = self._reconnect_backoff.next()
                logger.warning(
                    "events broker %s: connection lost (%s); reconnecting in %.1f s",
                    masked_url(self.url),
                    str(exc) or type(exc).__name__,
                    delay,
                )
                stop.wait(delay)

    def stats(self) -> dict[str, int]:
        """Counters since creation: received, acked, dead_lettered, requeued, batches, reconnects.

        ``received`` counts redeliveries again; ``acked`` counts acks sent (an ack sent just as the
        connection died is counted, and the broker delivers that message again); ``batches``
        counts batches taken up, including ones that held only poison or whose handler failed.
        """
        with self._stats_lock:
            return dict(self._stats)

    # --- one connection ------------------------------------------------------------------

    def _connection(self) -> Connection:
        transport = transport_of(self.url)
        options: dict[str, Any] = {}
        if transport == "amqp":
            options = dict(AMQP_TRANSPORT_OPTIONS)
        elif transport == "redis":
            options = {**REDIS_TRANSPORT_OPTIONS, "socket_connect_timeout": self.connect_timeout}
        return Connection(self.url, connect_timeout=self.connect_timeout, transport_options=options)

    def _consume(self, connection: Connection, stop: threading.Event, max_batches: int | None) -> None:
        # one attempt: the retries are ours (they heed the stop event), not kombu's
        connection.ensure_connection(max_retries=0, reraise_as_library_errors=False)
        self._declare(connection)
        # On RabbitMQ each queue gets a channel of its own, so that delivery tags are per queue
        # and a handled batch is acked with one ``multiple`` ack (see _ack). kombu's virtual
        # transports (Redis) ignore ``multiple``: there one channel serves both queues, and every
        # message is acked by itself.
        self._multiple_acks = connection.transport.driver_type == "amqp"
        channel = connection.channel()
        channels = {queue: connection.channel() if self._multiple_acks else channel for queue in self.handlers}
        for each in {id(c): c for c in (channel, *channels.values())}.values():
            each.basic_qos(0, self.prefetch, False)
        batches = _Batches(self.batch_size, self.batch_window)
        producer = Producer(channel, auto_declare=False)  # the default exchange, for dead letters
        consumers = [self._consumer(channels[queue], batches, queue) for queue in self.handlers]
        for consumer in consumers:
            consumer.consume()
        self._reconnect_backoff.reset()
        logger.info(
            "listening on %s at %s (batches of up to %d, prefetch %d)",
            ", ".join(self.handlers),
            masked_url(self.url),
            self.batch_size,
            self.prefetch,
        )

        # One batch at a time is handled on a thread of its own while this one goes on receiving
        # (and decoding) the next; acks and dead letters stay on this thread, which owns the
        # channel. A batch in the handler when the connection fails is waited for and left
        # unacked: the broker delivers its events again, and the claim keeps that harmless.
        handling: _InFlight | None = None
        try:
            while not (stop.is_set() or self._finished(max_batches)):
                now = time.monotonic()
                if handling is None or not handling.stalled(now):
                    self.heartbeat.beat()  # connected and going round: at least every IDLE_WAIT
                if handling is not None and handling.future.done():
                    done, handling = handling, None
                    self._settle(producer, done, stop)
                    continue
                if handling is None:
                    due = batches.next_due(now)
                    if due is not None:
                        handling = self._start(producer, *due)
                        continue
                elif batches.full(handling.queue):
                    # The next batch of the queue in the handler is full already: more of that
                    # queue would wait behind it anyway. Wait for the handler itself rather than
                    # look at the socket every HANDLER_POLL, which takes the GIL from it each time.
                    futures_wait([handling.future], timeout=IDLE_WAIT)
                    continue
                wait = batches.wait(now)
                if handling is not None:
                    wait = min(wait, HANDLER_POLL)
                with contextlib.suppress(TimeoutError):  # nothing came: a batch may be due now
                    connection.drain_events(timeout=wait)
            if handling is not None:
                futures_wait([handling.future])
                done, handling = handling, None
                self._settle(producer, done, stop)
        except (SystemExit, KeyboardInterrupt):
            # A second signal: leave at once. The handler thread is a daemon and ends with the
            # process; its events were not acked, so the broker delivers them again.
            handling = None
            raise
        finally:
            if handling is not None:  # the connection failed: let the batch finish before the next
                futures_wait([handling.future])

        for consumer in consumers:
            consumer.cancel()
        self._requeue(batches.take_all())
        logger.info("stopped listening: %s", self.stats())

    def _declare(self, connection: Connection) -> None:
        """Our event queues unless they exist already (as KAT declared them), and their ``.dead`` queues."""
        for queue in self.handlers:
            with connection.channel() as channel:
                try:
                    KombuQueue(queue).queue_declare(passive=True, channel=channel)
                    exists = True
                except connection.channel_errors:
                    exists = False
            for name in ([] if exists else [queue]) + [dead_letter_queue(queue)]:
                with connection.channel() as channel:
                    KombuQueue(name, durable=True).declare(channel=channel)

    def _consumer(self, channel: Any, batches: _Batches, queue: str) -> Consumer:
        """A consumer that only collects: a message is looked at when its batch falls due."""

        def receive(message: Message, _decode_error: Exception | None = None) -> None:
            self._count("received")
            batches.add(queue, message)

        return Consumer(
            channel,
            [KombuQueue(queue, no_declare=True)],
            on_message=receive,
            on_decode_error=receive,  # e.g. a compression that fails: dead-lettered as it came
            auto_declare=False,
        )

    # --- one batch -----------------------------------------------------------------------

    def _start(self, producer: Producer, queue: str, messages: list[Message]) -> _InFlight | None:
        """Decode a batch, dead-letter its poison, and hand the rest to the handler's thread."""
        self._count("batches")
        events: list[BaseModel] = []
        held: list[Message] = []
        for message in messages:
            try:
                event = decode_event(queue, message)
            except Poison as exc:
                self._dead_letter(producer, queue, message, str(exc))
                continue
            if message.delivery_info.get("redelivered") and isinstance(event, ScanProfileMutation):
                event.redelivered = True  # it may come after later events of its object
            events.append(event)
            held.append(message)
        if not events:
            return None
        future = _in_daemon_thread(self._run_handler, queue, events)
        return _InFlight(queue, held, len(events), future, time.monotonic())

    def _run_handler(self, queue: str, events: list[BaseModel]) -> dict[int, str]:
        return {r.index: r.reason for r in self.handlers[queue](queue, events)}

    def _settle(self, producer: Producer, batch: _InFlight, stop: threading.Event) -> None:
        """Ack a handled batch (dead-lettering what the handler rejected), or requeue it on failure."""
        error = batch.future.exception()
        if error is not None:
            self._retry_later(batch.queue, batch.held, error, stop)
            return
        self._handler_backoff.reset()
        rejected = batch.future.result()
        accepted: list[Message] = []
        for index, message in enumerate(batch.held):
            reason = rejected.pop(index, None)
            if reason is None:
                accepted.append(message)
            else:
                self._dead_letter(producer, batch.queue, message, reason)  # acked by itself
        self._ack(accepted)
        if rejected:
            logger.warning("%s: the handler rejected indices outside its batch: %s", batch.queue, sorted(rejected))
        logger.debug("%s: handled %d events in %.3f s", batch.queue, batch.events, time.monotonic() - batch.started)

    def _ack(self, messages: list[Message]) -> None:
        """Ack ``messages``: on RabbitMQ with one ``multiple`` ack of the last of them.

        That is right because the queue has a channel of its own and its batches are settled in
        the order they came: every unsettled delivery up to the last tag of a batch belongs to
        that batch (earlier batches are acked or requeued, later ones have higher tags, and
        poison and rejected events were acked when they were dead-lettered).
        """
        if not messages:
            return
        if self._multiple_acks:
            max(messages, key=lambda m: m.delivery_tag).ack(multiple=True)
        else:
            for message in messages:
                message.ack()
        self._count("acked", len(messages))

    def _retry_later(self, queue: str, messages: list[Message], exc: BaseException, stop: threading.Event) -> None:
        delay = self._handler_backoff.next()
        if isinstance(exc, TransientError):
            logger.warning("%s: %d events not handled (%s); requeued in %.1f s", queue, len(messages), exc, delay)
        else:
            logger.error(
                "%s: the handler failed on %d events; requeued in %.1f s", queue, len(messages), delay, exc_info=exc
            )
        stop.wait(delay)
        self._requeue(messages)

    def _requeue(self, messages: list[Message]) -> None:
        for message in messages:
            message.requeue()
        self._count("requeued", len(messages))

    def _dead_letter(self, producer: Producer, queue: str, message: Message, reason: str) -> None:
        """Publish the message as it came to ``<queue>.dead``, then ack it."""
        reason = reason if len(reason) <= MAX_REASON else reason[: MAX_REASON - 3] + "..."
        producer.publish(
            message.body,
            exchange="",
            routing_key=dead_letter_queue(queue),
            headers={**(message.headers or {}), "x-death-reason": reason, "x-original-queue": queue},
            content_type=message.content_type or "application/octet-stream",
            content_encoding=message.content_encoding,
            delivery_mode=PERSISTENT,
            retry=False,
        )
        message.ack()
        self._count("dead_lettered")
        logger.error("%s: message dead-lettered to %s: %s", queue, dead_letter_queue(queue), reason)

    # --- bookkeeping ---------------------------------------------------------------------

    def _count(self, name: str, n: int = 1) -> None:
        with self._stats_lock:
            self._stats[name] += n

    def _finished(self, max_batches: int | None) -> bool:
        return max_batches is not None and self.stats()["batches"] >= max_batches


def decode_event(queue: str, message: Message) -> BaseModel:
    """The event in ``message``, parsed and validated in one pass; :class:`Poison` says why not."""
    body = message.body
    if not isinstance(body, (bytes, str)):
        raise Poison(f"not JSON: a body of type {type(body).__name__}")
    try:
        return EVENT_MODELS[queue].model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors()
        if errors and errors[0]["type"] == "json_invalid":
            raise Poison(f"not JSON: {errors[0]['msg']}") from None
        shown = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in errors[:3])
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        raise Poison(f"not a valid {queue} event: {shown}{more}") from None


def run_listener(settings: Settings, handlers: dict[str, Handler], stop: threading.Event | None = None) -> None:
    """``kat-scheduler listen``: consume KAT's events from ``QUEUE_URI`` until SIGTERM or SIGINT.

    The first signal stops after the current batch (acked, or requeued when it failed); a second
    one exits at once, and the broker delivers whatever was not acked again.
    """
    stop = stop or threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            raise SystemExit(128 + signum)
        logger.info("%s: stopping after the current batch", signal.Signals(signum).name)
        stop.set()

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        EventConsumer(
            settings.queue_uri,
            handlers,
            batch_size=settings.events_batch_size,
            batch_window=settings.events_batch_window,
            heartbeat=Heartbeat(settings.heartbeat_file),
        ).run(stop=stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
