"""The application factory."""

from __future__ import annotations

import email.message
import json
import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl

import orjson
from fastapi import FastAPI
from sqlalchemy import Engine
from starlette.types import ASGIApp, Receive, Scope, Send

from kat_scheduler.api import explain, health, pop, push, schedulers, schedules, tasks
from kat_scheduler.api.asgi import content_type, read_body, replay, send_json
from kat_scheduler.api.context import ApiContext
from kat_scheduler.api.known_pops import KnownPops
from kat_scheduler.settings import Settings
from kat_scheduler.storage.db import make_engine
from kat_scheduler.storage.task_views import TaskViews
from kat_scheduler.version import __version__

logger = logging.getLogger(__name__)

#: Database connections per API process (FastAPI runs each request on a worker thread).
POOL_SIZE = 10


def create_app(settings: Settings, *, engine: Engine | None = None) -> FastAPI:
    """The API on ``settings``' database (or on ``engine``, which the caller then owns and disposes)."""
    own_engine = engine is None
    db = engine if engine is not None else make_engine(settings.db_uri, pool_size=POOL_SIZE)
    ctx = ApiContext(settings=settings, engine=db, tasks=TaskViews(db, prepared_pops=settings.api_prepared_pops))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            ctx.close()
            if own_engine:
                db.dispose()

    app = FastAPI(
        title="kat_scheduler",
        version=__version__,
        description="OpenKAT's scheduler API (mula-compatible): health, metrics, schedulers, tasks and schedules.",
        lifespan=lifespan,
    )
    app.state.context = ctx
    # Inside KnownPops: a pop it answers was read here when the route first took it.
    app.add_middleware(UnusableInput)
    app.add_middleware(KnownPops, forms=ctx.pop_forms)
    app.include_router(health.router)
    app.include_router(schedulers.router)
    app.include_router(push.router)
    app.include_router(pop.router)
    app.include_router(tasks.router)
    app.include_router(schedules.router)
    app.include_router(explain.router)
    return app


#: The methods whose JSON body FastAPI reads.
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class UnusableInput:
    """ASGI middleware: input that parses but no route could use is refused before routing.

    - A query parameter with a NUL character (``%00``): 400 naming it (PostgreSQL cannot compare
      text holding one, and no name, code or id holds one).
    - A JSON body that Python's parser reads but JSON does not allow: a lone surrogate
      (``"\\ud800"``, no Unicode character), ``NaN``, ``Infinity``, a number beyond a double
      (``1e400``). It is answered as FastAPI answers a body that is not JSON (422,
      ``json_invalid``, the position and what is wrong there); the routes would otherwise fail
      to store, compare or even echo it. Each JSON body is read once more here with orjson
      (strict); only one it refuses is read with Python's parser and looked through. Any other
      body (JSON, JSON orjson does not read such as UTF-16, or no JSON for either) reaches
      FastAPI as it came.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        query: bytes = scope["query_string"]
        if b"%00" in query:
            names = [
                name
                for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True)
                if "\x00" in name + value
            ]
            if names:
                detail = {"detail": f"query parameter {names[0]!r} holds a NUL character"}
                await send_json(send, 400, orjson.dumps(detail))
                return
        if scope["method"] not in _BODY_METHODS or not _read_as_json(scope):
            await self.app(scope, receive, send)
            return
        body, messages = await read_body(receive)
        refused = _not_json(body) if body else None
        if refused is not None:
            await send_json(send, 422, orjson.dumps({"detail": [refused]}))
            return
        await self.app(scope, replay(messages, receive), send)


def _read_as_json(scope: Scope) -> bool:
    """Whether FastAPI reads this request's body as JSON (no content type, or a JSON one)."""
    value = content_type(scope)
    if value in (b"", b"application/json"):
        return True
    message = email.message.Message()
    message["content-type"] = value.decode("latin-1")
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def _not_json(body: bytes) -> dict[str, Any] | None:
    """FastAPI's error for a body Python reads but JSON does not allow (``None``: a JSON body, or
    one Python refuses too, which FastAPI then answers itself)."""
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError as strict:
        try:
            value = json.loads(body)
        except (ValueError, RecursionError):
            return None
        problem = _beyond_json(value)
        if problem is None:  # JSON orjson does not read (UTF-16, deeper than it nests)
            return None
        logger.info("a request body is refused: it holds %s (at %d: %s)", problem, strict.pos, strict.msg)
        return {
            "type": "json_invalid",
            "loc": ["body", strict.pos],
            "msg": "JSON decode error",
            "input": {},
            "ctx": {"error": f"{strict.msg}: the body holds {problem}, which JSON does not allow"},
        }
    return None


def _beyond_json(value: Any) -> str | None:
    """What Python's parser gave that JSON has not: a lone surrogate, NaN or Infinity."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return "a lone surrogate (\\ud800 to \\udfff, no Unicode character)"
        elif isinstance(item, float) and not math.isfinite(item):
            return "NaN or Infinity (or a number beyond a double)"
    return None
