"""The HTTP API OpenKAT's other components already speak: mula's REST API, served by FastAPI.

This package owns the wire (the pydantic models of ``/work/shared/SCHEDULER-API.md``: Task,
Scheduler, the paginated envelope, ``{"detail": ...}`` errors), the routes and the application
factory (:func:`create_app`, one SQLAlchemy engine per application). It holds no SQL: every
statement goes through :mod:`kat_scheduler.storage`. ``kat-scheduler api`` serves it with uvicorn.
"""

from kat_scheduler.api.app import create_app

__all__ = ["create_app"]
