"""The Celery application: ``celery -A kat_scheduler worker|beat|flower``."""

from __future__ import annotations

import os

from celery import Celery

from kat_scheduler.config import celery_config
from kat_scheduler.settings import Settings

TASK_MODULES: list[str] = ["kat_scheduler.tasks.scheduler", "kat_scheduler.tasks.workers"]


def create_app(settings: Settings | None = None, *, main: str = "kat_scheduler", tasks: bool = True) -> Celery:
    """A Celery app configured from ``settings``, or from the ``celeryconfig`` module if none given.

    ``tasks=False`` leaves our task modules out (for test apps that bring stand-in tasks).
    """
    celery = Celery(main, include=TASK_MODULES if tasks else [])
    if settings is not None:
        celery.config_from_object(celery_config(settings))
    else:
        celery.config_from_object(os.environ.get("CELERY_CONFIG_MODULE", "celeryconfig"))
    return celery


app = create_app()
