"""The Celery application: ``celery -A kat_scheduler worker|beat|flower``."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from celery import Celery
from celery.signals import beat_init, worker_init

from kat_scheduler.runtime.celery_config import celery_config
from kat_scheduler.settings import Settings, SettingsError, get_settings

logger = logging.getLogger(__name__)

TASK_MODULES: list[str] = [
    "kat_scheduler.celery_tasks.scheduler",
    "kat_scheduler.celery_tasks.workers",
    "kat_scheduler.celery_tasks.rate_limits",
]


def create_app(settings: Settings | None = None, *, main: str = "kat_scheduler", tasks: bool = True) -> Celery:
    """A Celery app configured from ``settings``, or from the ``celeryconfig`` module if none given.

    ``tasks=False`` leaves our task modules out (for test apps that bring stand-in tasks).
    """
    celery = Celery(main, include=TASK_MODULES if tasks else [])
    if settings is not None:
        celery.config_from_object(celery_config(settings))
    else:
        celery.config_from_object(os.environ.get("CELERY_CONFIG_MODULE", "celeryconfig"))
    if tasks:
        require_schema_at_start(celery, (settings or _settings_or_exit()).db_uri)
    return celery


def _settings_or_exit() -> Settings:
    """The process's settings; invalid ones stop ``celery -A kat_scheduler …`` in one line, not a traceback."""
    try:
        return get_settings()
    except SettingsError as exc:
        print(f"kat-scheduler: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def require_schema_at_start(celery: Celery, db_uri: str) -> None:
    """A worker or beat of ``celery`` stops at start, in one logged line, when the database is not
    migrated (or cannot be read), instead of failing on its first task or creating an empty file."""

    def check(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not celery:
            return  # another app's worker in this process
        from kat_scheduler.storage.migrate import DatabaseNotReady, require_schema

        try:
            require_schema(db_uri)
        except DatabaseNotReady as exc:
            logger.critical("kat-scheduler: %s", exc)
            sys.exit(2)

    worker_init.connect(check, weak=False)
    beat_init.connect(check, weak=False)


app = create_app()
