"""Celery configuration for :mod:`benchmarks.chaos` with ``--cancel-on-connection-loss``.

kat_scheduler's configuration (``celeryconfig``) plus ``worker_cancel_long_running_tasks_on_connection_loss``:
on losing the broker, a worker terminates its running late-ack tasks instead of keeping their
pool processes busy until the time limits fire. Selected with ``CELERY_CONFIG_MODULE``.
"""

from kat_scheduler.runtime.celery_config import celery_config
from kat_scheduler.settings import get_settings

globals().update(celery_config(get_settings()))
worker_cancel_long_running_tasks_on_connection_loss = True
