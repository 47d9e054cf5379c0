"""Serving the API with uvicorn: one process, or several (uvicorn's own worker processes).

A pop or a push costs the API process far more CPU than the database (the HTTP parser, FastAPI's
routing and validation, SQLAlchemy), and Python runs one request's Python at a time per process,
so one process uses at most one core. ``workers`` > 1 starts that many processes sharing the one
listening socket (uvicorn's supervisor restarts a worker that dies); each builds its application
from the environment with :func:`app_from_environment`, with its own engine and connection pool.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI

from kat_scheduler.api.app import create_app
from kat_scheduler.settings import Settings, get_settings

logger = logging.getLogger(__name__)

#: The factory each worker process imports (``uvicorn --factory`` with ``workers`` > 1).
FACTORY = f"{__name__}:app_from_environment"


def app_from_environment() -> FastAPI:
    """The application on the settings of the environment (run in each worker process)."""
    return create_app(get_settings())


def serve(settings: Settings, *, host: str | None = None, port: int | None = None, workers: int | None = None) -> None:
    """Serve the API until stopped: on ``host``:``port`` (default: the settings') with ``workers``
    processes (default ``SCHEDULER_API_WORKERS``). With more than one, the worker processes read
    their settings from the environment, as this process did."""
    import uvicorn

    count = settings.api_workers if workers is None else workers
    host = host or settings.api_host
    port = settings.api_port if port is None else port
    level = settings.log_level.lower()
    if count <= 1:
        uvicorn.run(create_app(settings), host=host, port=port, log_level=level)
        return
    logger.info("serving the API with %d worker processes", count)
    uvicorn.run(FACTORY, factory=True, workers=count, host=host, port=port, log_level=level)
