"""Pops a runner has sent before, answered without FastAPI's routing and validation.

A runner pops with the same request all its life: the same path, ``limit`` and filter body,
many times a second. The first time, the pop route (:mod:`kat_scheduler.api.pop`) checks it
(the scheduler, the limit, the filters) and, when it is a pop of a pull scheduler, remembers the
request's exact form (path, query string, content type and body bytes) with what to run for it.
:class:`KnownPops`, an ASGI middleware in front of the application, answers a request of a form
remembered with that, as the route would: same statement, same batches, same body and status.
Anything else (a form never seen, one the route refused, every other route) goes to FastAPI as
it came, so the route stays the one place that decides what a pop means and what is wrong with one.

Routing, dependency solving and validating the body again for every pop cost the API process
more CPU than the pop's own statement (docs/benchmarks.md).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row
from starlette.types import ASGIApp, Receive, Scope, Send

from kat_scheduler.api.asgi import content_type, read_body, replay, send_json
from kat_scheduler.api.batching import Batcher

#: Forms of pop requests remembered per application (the oldest used is forgotten first).
REMEMBERED = 256
#: A body larger than this is never looked up (FastAPI gets it): a runner's filters are small.
MAX_BODY = 16_384

#: What a pop request is, byte for byte: path, query string, content type, body.
PopForm = tuple[str, bytes, bytes, bytes]


@dataclass(frozen=True, slots=True)
class KnownPop:
    """What a remembered pop runs: its batcher, its limit, and how rows become the answer's body."""

    popper: Batcher[int, list[Row[Any]]]
    limit: int
    render: Callable[[list[Row[Any]]], bytes]


class PopForms:
    """The remembered pop requests of one application (the route adds, the middleware reads)."""

    def __init__(self, size: int = REMEMBERED) -> None:
        self._size = size
        self._known: OrderedDict[PopForm, KnownPop] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, form: PopForm, pop: KnownPop) -> None:
        if len(form[3]) > MAX_BODY:
            return
        with self._lock:
            self._known[form] = pop
            self._known.move_to_end(form)
            if len(self._known) > self._size:
                self._known.popitem(last=False)

    def get(self, form: PopForm) -> KnownPop | None:
        with self._lock:
            return self._known.get(form)


class KnownPops:
    """ASGI middleware: a pop request of a remembered form is run at once (see the module)."""

    def __init__(self, app: ASGIApp, forms: PopForms) -> None:
        self.app = app
        self.forms = forms

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].endswith("/pop"):
            await self.app(scope, receive, send)
            return
        body, messages = await read_body(receive, MAX_BODY)
        known = (
            None if body is None else self.forms.get((scope["path"], scope["query_string"], content_type(scope), body))
        )
        if known is None:
            await self.app(scope, replay(messages, receive), send)
            return
        rows = await known.popper.submit(known.limit)
        await send_json(send, 200, known.render(rows))
