"""The Celery application: ``celery -A kat_scheduler worker|beat|flower``."""

from __future__ import annotations

import os

from celery import Celery

from kat_scheduler.config import celery_config
from kat_scheduler.settings import Settings

TASK_MODULES: list[str] = ["kat_scheduler.tasks.scheduler"]


def create_app(settings: Settings | None = None, *, main: str = "kat_scheduler") -> Celery:
    """A Celery app configured from ``settings``, or from the ``celeryconfig`` module if none given."""
    celery = Celery(main, include=TASK_MODULES)
    if settings is not None:
        celery.config_from_object(celery_config(settings))
    else:
        celery.config_from_object(os.environ.get("CELERY_CONFIG_MODULE", "celeryconfig"))
    return celery


app = create_app()
