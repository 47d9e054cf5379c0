"""Celery protocol 2 task messages, and kombu's Redis envelope around them, built without Celery.

What ``app.amqp.as_task_v2`` and kombu's virtual transport would produce for
``send_task(name, kwargs=..., task_id=..., priority=...)`` on the default exchange, minus the
costly parts (``saferepr``, routing and exchange lookups). The standard library and orjson only.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import socket
import uuid
from json.encoder import encode_basestring_ascii as quote
from typing import Any

import orjson

from kat_scheduler.dispatch.publishing import OutgoingMessage

CONTENT_TYPE = "application/json"
CONTENT_ENCODING = "utf-8"
#: A persistent message (AMQP ``delivery_mode`` 2), as Celery sends them.
PERSISTENT = 2
#: Celery truncates ``argsrepr``/``kwargsrepr`` (shown in Flower) to this many characters.
REPR_MAXSIZE = 1024
#: Kombu's virtual transports (Redis) base64-encode the body inside their JSON envelope.
BODY_ENCODING = "base64"

_compact = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode
#: The body is ``[args, kwargs, embed]``; we never send args, and embed is always empty.
_BODY_HEAD = b"[[],"
_BODY_TAIL = b"," + _compact({"callbacks": None, "errbacks": None, "chain": None, "chord": None}).encode() + b"]"


def origin() -> str:
    """The ``origin`` header: the sender's node name, as Celery's ``anon_nodename`` spells it."""
    return f"gen{os.getpid()}@{socket.gethostname()}"


def kwargs_repr(kwargs: dict[str, Any]) -> str:
    text = repr(kwargs)
    return text if len(text) <= REPR_MAXSIZE else text[: REPR_MAXSIZE - 3] + "..."


def eta_header(message: OutgoingMessage) -> str | None:
    """The ``eta`` header: ISO 8601 with its offset, as ``as_task_v2`` writes an aware ``eta``."""
    if message.eta is None:
        return None
    if message.eta.tzinfo is None:
        raise ValueError(f"task {message.task_id}: eta {message.eta!r} has no time zone")
    return message.eta.isoformat()


def task_headers(message: OutgoingMessage, sender: str) -> dict[str, Any]:
    """The protocol 2 headers: the same keys and defaults as ``as_task_v2``."""
    task_id = str(message.task_id)
    return _headers(message.task_name, task_id, kwargs_repr(message.kwargs), sender, eta_header(message))


def _headers(task: Any, task_id: Any, kwargsrepr: Any, sender: str, eta: str | None = None) -> dict[str, Any]:
    return {
        "lang": "py",
        "task": task,
        "id": task_id,
        "shadow": None,
        "eta": eta,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": "()",
        "kwargsrepr": kwargsrepr,
        "origin": sender,
        # None: the task's own ``ignore_result`` decides, as with ``send_task``.
        "ignore_result": None,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }


def task_body(message: OutgoingMessage) -> bytes:
    """The protocol 2 body ``[[], kwargs, embed]`` as UTF-8 JSON; ``TypeError`` if not JSON-able.

    orjson writes it (faster than the ``json`` module on this hot path): the same JSON,
    except that text outside ASCII is written as UTF-8 rather than ``\\u`` escapes, which every
    JSON reader (a Celery worker's among them) decodes to the same kwargs.
    """
    return _BODY_HEAD + orjson.dumps(message.kwargs) + _BODY_TAIL


def _envelope(
    body: Any,
    task: Any,
    task_id: Any,
    kwargsrepr: Any,
    queue: Any,
    priority: Any,
    tag: Any,
    sender: str,
    eta: str | None = None,
) -> dict[str, Any]:
    """Kombu's Redis envelope: ``Channel.prepare_message`` + ``_inplace_augment_message``.

    ``delivery_info`` names the anonymous exchange and the queue, so kombu restores an unacked
    message to the same queue; ``priority`` is what the consumer and the restore path read back.
    """
    return {
        "body": body,
        "content-encoding": CONTENT_ENCODING,
        "content-type": CONTENT_TYPE,
        "headers": _headers(task, task_id, kwargsrepr, sender, eta),
        "properties": {
            "correlation_id": task_id,
            "reply_to": "",
            "delivery_mode": PERSISTENT,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": priority,
            "body_encoding": BODY_ENCODING,
            "delivery_tag": tag,
        },
    }


def redis_envelope(message: OutgoingMessage, priority: int, sender: str) -> str:
    """The JSON document kombu's Redis transport pushes for ``message`` (the readable reference)."""
    return _compact(
        _envelope(
            body=base64.b64encode(task_body(message)).decode("ascii"),
            task=message.task_name,
            task_id=str(message.task_id),
            kwargsrepr=kwargs_repr(message.kwargs),
            queue=message.queue,
            priority=priority,
            tag=str(uuid.uuid4()),
            sender=sender,
            eta=eta_header(message),
        )
    )


class RedisEnvelopes:
    """:func:`redis_envelope`, faster: the constant JSON is encoded once per sender.

    The template is the reference envelope encoded with placeholders, so both agree by
    construction. Values that never need JSON escaping (base64, uuids, hex) go between the
    quotes; the others are escaped by the ``json`` module's own string encoder.
    """

    _RAW = ("body", "task_id", "tag")  # safe characters only: inserted between the quotes
    _QUOTED = ("task", "kwargsrepr", "queue", "priority")  # inserted as JSON values
    #: The placeholders in the order the template holds them; ``__call__`` fills them so.
    _ORDER = ("body", "task", "task_id", "task_id", "kwargsrepr", "task_id", "queue", "priority", "tag")

    def __init__(self, sender: str) -> None:
        self.sender = sender
        slots = {name: f"\0{name}\0" for name in self._RAW + self._QUOTED}
        template = _compact(_envelope(sender=sender, **slots)).replace("%", "%%")
        found = []
        for name in self._RAW + self._QUOTED:
            token = quote(slots[name])[1:-1] if name in self._RAW else quote(slots[name])
            found += [(match.start(), name) for match in re.finditer(re.escape(token), template)]
            template = template.replace(token, "%s")
        if tuple(name for _, name in sorted(found)) != self._ORDER:
            raise AssertionError(f"envelope placeholders out of order: {sorted(found)}")
        self._template = template

    def __call__(self, message: OutgoingMessage, priority: int) -> str:
        if message.eta is not None:  # rare (the rate limits' release): the reference path
            return redis_envelope(message, priority, self.sender)
        task_id = str(message.task_id)
        return self._template % (
            base64.b64encode(task_body(message)).decode("ascii"),
            quote(message.task_name),
            task_id,
            task_id,
            quote(kwargs_repr(message.kwargs)),
            task_id,
            quote(message.queue),
            int(priority),
            # Any unique string will do (kombu uses it as a key of its unacked hash).
            secrets.token_hex(16),
        )
