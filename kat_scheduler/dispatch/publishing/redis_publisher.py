"""Publishing on Redis: kombu's envelope, pushed through a redis-py pipeline.

Kombu's Redis transport keeps one list per queue and priority step (``boefjes``,
``boefjes:1``, ... with our ``sep``); a consumer pops the lowest step first. We push the
document kombu's Redis channel pushes for a message on the default exchange onto the list it
pushes it to, but many messages per ``LPUSH`` and one round trip per chunk, with no exchange
lookups.

A dropped connection is replaced when the next call takes it from the pool. A chunk whose
round trip failed after it was sent is sent again (bounded): a message may then be on the queue
twice, which the worker's claim makes harmless (invariant 3). Thread-safe: redis-py's pool
hands each call its own connection, and starts afresh after a fork.
"""

from __future__ import annotations

import bisect
import logging
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import redis
from kombu.transport.redis import Channel as KombuRedisChannel
from redis.backoff import NoBackoff
from redis.retry import Retry

from kat_scheduler.dispatch.publishing import BrokerError, OutgoingMessage, PublishError
from kat_scheduler.dispatch.publishing.envelope import BODY_ENCODING, RedisEnvelopes, origin
from kat_scheduler.queues import broker_priority

logger = logging.getLogger(__name__)

#: Shown by ``CLIENT LIST``, so an operator can tell our connections apart.
CLIENT_NAME = "kat_scheduler.dispatch.publishing"
_TRANSIENT = (redis.ConnectionError, redis.TimeoutError)
#: Encoded messages by Redis key: (task id, envelope), in publishing order.
Chunk = dict[str, list[tuple[uuid.UUID, str]]]


class PriorityKeys:
    """The Redis list kombu's Redis channel keeps for a queue and priority.

    Kombu publishes no function for this name, only its parts as public channel attributes:
    a priority goes to the highest of ``priority_steps`` not above it (``Channel.priority``),
    and the list of step ``n`` is ``queue + sep + n`` (``queue`` itself for step 0), prefixed
    by ``global_keyprefix``. ``sep``, ``priority_steps`` and ``global_keyprefix`` come from the
    broker transport options Celery is configured with; what they leave out takes kombu's own
    defaults. Tests publish with a real kombu producer and compare the keys it wrote.
    """

    def __init__(self, transport_options: Mapping[str, Any]) -> None:
        self.sep: str = transport_options.get("sep", KombuRedisChannel.sep)
        self.steps: list[int] = sorted(transport_options.get("priority_steps", KombuRedisChannel.priority_steps))
        self.prefix: str = transport_options.get("global_keyprefix", KombuRedisChannel.global_keyprefix) or ""

    def step(self, priority: int) -> int:
        """The priority step a message of ``priority`` lands on (the highest step not above it)."""
        return self.steps[bisect.bisect(self.steps, priority) - 1]

    def key(self, queue: str, priority: int) -> str:
        step = self.step(priority)
        return f"{self.prefix}{queue}{self.sep}{step}" if step else f"{self.prefix}{queue}"

    def all_keys(self, queue: str) -> list[str]:
        return [self.key(queue, step) for step in self.steps]


class RedisPublisher:
    """:class:`~kat_scheduler.dispatch.publishing.Publisher` for a Redis broker."""

    def __init__(
        self,
        url: str,
        *,
        transport_options: Mapping[str, Any],
        queues: Iterable[str],
        connect_timeout: float = 2.0,
        socket_timeout: float = 10.0,
        retries: int = 2,
        backoff: float = 0.1,
        chunk_size: int = 2000,
    ) -> None:
        encoding = transport_options.get("body_encoding", BODY_ENCODING)
        if encoding != BODY_ENCODING:
            raise ValueError(f"only the {BODY_ENCODING} body encoding is supported, not {encoding!r}")
        self.keys = PriorityKeys(transport_options)
        self.queues = frozenset(queues)
        self.retries = retries
        self.backoff = backoff
        self.chunk_size = chunk_size
        self._client = redis.Redis.from_url(
            url,
            socket_connect_timeout=connect_timeout,
            socket_timeout=socket_timeout,
            client_name=CLIENT_NAME,
            retry=Retry(NoBackoff(), 0),  # we retry ourselves, knowing what was sent
        )
        self._envelopes: RedisEnvelopes | None = None

    # --- Publisher ----------------------------------------------------------------------

    def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        # Everything is encoded first: a message that can never be sent fails before any is sent.
        size = self.chunk_size
        chunks = [self._encode(messages[start : start + size]) for start in range(0, len(messages), size)]
        published: list[uuid.UUID] = []
        for chunk in chunks:
            self._push(chunk, published)

    def prepare(self, messages: Sequence[OutgoingMessage]) -> list[OutgoingMessage]:
        envelope = self._envelope_maker()
        prepared = []
        for message in messages:
            self._check_queue(message.queue)
            text = envelope(message, broker_priority(message.band, "redis"))
            # Built directly: dataclasses.replace costs more on this hot path.
            prepared.append(
                OutgoingMessage(message.task_id, message.task_name, message.queue, message.band, message.kwargs, text)
            )
        return prepared

    def queue_depth(self, queue: str) -> int:
        return sum(self.depth_by_priority(queue).values())

    def depth_by_priority(self, queue: str) -> dict[int, int]:
        """Messages waiting in ``queue`` per priority step (one ``LLEN`` per step, one round trip)."""
        self._check_queue(queue)
        try:
            with self._client.pipeline(transaction=False) as pipe:
                for key in self.keys.all_keys(queue):
                    pipe.llen(key)
                return dict(zip(self.keys.steps, pipe.execute(), strict=True))
        except redis.RedisError as exc:
            raise BrokerError(f"queue depth of {queue!r}: {exc}") from exc

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> RedisPublisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- internals ----------------------------------------------------------------------

    def _check_queue(self, queue: str) -> None:
        if queue not in self.queues:
            raise ValueError(f"unknown queue {queue!r}; expected one of {sorted(self.queues)}")

    def _envelope_maker(self) -> RedisEnvelopes:
        """One per process: the ``origin`` header names the sending process."""
        sender = origin()
        if self._envelopes is None or self._envelopes.sender != sender:
            self._envelopes = RedisEnvelopes(sender)
        return self._envelopes

    def _encode(self, messages: Sequence[OutgoingMessage]) -> Chunk:
        """The chunk's envelopes by Redis key, in the given order within each key."""
        envelope = self._envelope_maker()
        by_key: Chunk = {}
        for message in messages:
            self._check_queue(message.queue)
            priority = broker_priority(message.band, "redis")
            text = message.prepared if message.prepared is not None else envelope(message, priority)
            by_key.setdefault(self.keys.key(message.queue, priority), []).append((message.task_id, text))
        return by_key

    def _push(self, chunk: Chunk, published: list[uuid.UUID]) -> None:
        """``LPUSH key envelope...`` per key, in one non-transactional redis-py pipeline (one round
        trip); adds the chunk's ids to ``published``.

        Kombu's consumer pops from the right, so the first pushed is the first out. A connection
        is taken from the pool (connecting, or replacing a dropped one) and handed back before the
        pipeline runs: a failure there means nothing of the chunk was sent; a failure while the
        pipeline runs leaves it uncertain.
        """
        maybe_sent = False
        error: Exception | None = None
        for attempt in range(1, self.retries + 2):
            if attempt > 1:
                time.sleep(self.backoff * 2 ** (attempt - 2))
            pool = self._client.connection_pool
            try:
                pool.release(pool.get_connection())
            except _TRANSIENT as exc:
                error = exc
                logger.warning("Redis unreachable (attempt %d of %d): %s", attempt, self.retries + 1, exc)
                continue
            try:
                with self._client.pipeline(transaction=False) as pipe:
                    for key, items in chunk.items():
                        pipe.lpush(key, *[payload for _, payload in items])
                    results = pipe.execute(raise_on_error=False)
            except _TRANSIENT as exc:
                error, maybe_sent = exc, True
                logger.warning("publishing to Redis failed (attempt %d of %d): %s", attempt, self.retries + 1, exc)
                continue
            refused = None
            for items, result in zip(chunk.values(), results, strict=True):
                if isinstance(result, Exception):
                    refused = result  # each LPUSH is all or nothing
                else:
                    published.extend(task_id for task_id, _ in items)
            if refused is not None:
                raise PublishError(f"Redis refused a publish: {refused}", published, certain=True)
            return
        raise PublishError(f"Redis publish failed: {error}", published, certain=not maybe_sent)
