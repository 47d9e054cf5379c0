"""The application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy import Engine

from kat_scheduler.api import explain, health, pop, push, schedulers, schedules, tasks
from kat_scheduler.api.context import ApiContext
from kat_scheduler.api.known_pops import KnownPops
from kat_scheduler.settings import Settings
from kat_scheduler.storage.db import make_engine
from kat_scheduler.storage.task_views import TaskViews
from kat_scheduler.version import __version__

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
    app.add_middleware(KnownPops, forms=ctx.pop_forms)
    app.include_router(health.router)
    app.include_router(schedulers.router)
    app.include_router(push.router)
    app.include_router(pop.router)
    app.include_router(tasks.router)
    app.include_router(schedules.router)
    app.include_router(explain.router)
    return app
