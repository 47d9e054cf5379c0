"""Celery configuration of kat_scheduler, built from ``kat_scheduler.settings.Settings``.

``celery -A kat_scheduler …`` loads this module. Every value comes from environment variables
(see ``.env-dist`` and docs/configuration.md); the logic, and why each setting is what it is,
lives in ``kat_scheduler/runtime/celery_config.py``. To override a Celery setting without forking, point
``CELERY_CONFIG_MODULE`` at a module of your own that imports this one and changes what you need.
"""

from kat_scheduler.runtime.celery_config import celery_config
from kat_scheduler.settings import get_settings

globals().update(celery_config(get_settings()))
