"""The ASGI pieces our two middlewares share (:mod:`kat_scheduler.api.known_pops` and the input
check in :mod:`kat_scheduler.api.app`): a request's content type, its body read ahead and handed
on unchanged, and a JSON answer sent without FastAPI."""

from __future__ import annotations

from starlette.types import Message, Receive, Scope, Send


def content_type(scope: Scope) -> bytes:
    """The request's ``Content-Type`` header as sent (``b""`` without one)."""
    for name, value in scope["headers"]:
        if name == b"content-type":
            return bytes(value)
    return b""


async def read_body(receive: Receive, most: int | None = None) -> tuple[bytes | None, list[Message]]:
    """The request's body (``None`` past ``most`` bytes or when the client went away) and the
    messages it came in, to hand on unchanged with :func:`replay`."""
    messages: list[Message] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return None, messages
        size += len(message.get("body", b""))
        if most is not None and size > most:
            return None, messages
        if not message.get("more_body", False):
            return b"".join(m.get("body", b"") for m in messages), messages


def replay(messages: list[Message], receive: Receive) -> Receive:
    """``receive`` giving ``messages`` first, then what the client sends next (for a middleware
    that read a request's body before passing the request on)."""
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed


async def send_json(send: Send, status: int, body: bytes) -> None:
    """Answer with ``body``, JSON already encoded, and ``status``."""
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
