"""Celery's settings, built from our :class:`~kat_scheduler.settings.Settings`.

Each invariant of DESIGN.md that lives in Celery's configuration is set here, once:

* JSON only (pickle is never accepted);
* late ack + reject on worker lost + prefetch 1, so nothing is lost on a crash and priorities
  are honoured among messages still on the broker;
* Redis: ``priority_steps = list(range(10))`` and a visibility timeout longer than any hard
  time limit; RabbitMQ: queues declared with ``x-max-priority``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from kombu.entity import Exchange
from kombu.entity import Queue as KombuQueue
from pydantic import SecretStr

from kat_scheduler.queues import (
    AMQP_MAX_PRIORITY,
    REDIS_PRIORITY_STEPS,
    ROUTES,
    Queue,
    TaskName,
    broker_priority,
    transport_of,
)
from kat_scheduler.settings import Settings


def task_queues(broker_url: str) -> list[KombuQueue]:
    """Our three queues, declared with priority support for the broker in use."""
    arguments = {"x-max-priority": AMQP_MAX_PRIORITY} if transport_of(broker_url) == "amqp" else None
    return [
        KombuQueue(
            name.value,
            Exchange(name.value, type="direct"),
            routing_key=name.value,
            queue_arguments=arguments,
            durable=True,
        )
        for name in Queue
    ]


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    if transport_of(settings.broker_url) != "redis":
        return {}
    return {
        "priority_steps": REDIS_PRIORITY_STEPS,
        "sep": ":",
        "queue_order_strategy": "priority",
        "visibility_timeout": settings.effective_visibility_timeout,
    }


#: Band of beat's own ticks (every publish carries an explicit priority).
TICK_BAND = 2


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """The periodic planning and maintenance tasks beat ticks."""
    priority = broker_priority(TICK_BAND, transport_of(settings.broker_url))
    return {
        "plan-boefjes": {
            "task": TaskName.PLAN_BOEFJES.value,
            "schedule": timedelta(seconds=settings.plan_interval),
            "options": {"queue": Queue.SCHEDULER.value, "expires": settings.plan_interval, "priority": priority},
        },
        "reap": {
            "task": TaskName.REAP.value,
            "schedule": timedelta(seconds=settings.reap_interval),
            "options": {"queue": Queue.SCHEDULER.value, "expires": settings.reap_interval, "priority": priority},
        },
        "queue-due-schedules": {
            "task": TaskName.QUEUE_DUE_SCHEDULES.value,
            "schedule": timedelta(seconds=settings.schedules_interval),
            "options": {"queue": Queue.SCHEDULER.value, "expires": settings.schedules_interval, "priority": priority},
        },
        # Report schedules apart from boefje schedules: they need only the database, so a slow or
        # failing KAT service never holds them up, and status shows their runs on their own.
        "queue-report-schedules": {
            "task": TaskName.QUEUE_REPORT_SCHEDULES.value,
            "schedule": timedelta(seconds=settings.schedules_interval),
            "options": {"queue": Queue.SCHEDULER.value, "expires": settings.schedules_interval, "priority": priority},
        },
    }


def celery_config(settings: Settings) -> dict[str, Any]:
    """Every Celery setting we rely on, as a mapping for ``app.config_from_object``."""
    transport = transport_of(settings.broker_url)
    return {
        "broker_url": settings.broker_url,
        "result_backend": settings.result_backend,
        "task_ignore_result": settings.result_backend is None,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": broker_transport_options(settings),
        # JSON only: pickle is never accepted.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # Nothing lost on a crash, priorities honoured.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_acks_on_failure_or_timeout": True,
        # Queues and routing.
        "task_queues": task_queues(settings.broker_url),
        "task_default_queue": Queue.SCHEDULER.value,
        "task_default_exchange": Queue.SCHEDULER.value,
        "task_default_routing_key": Queue.SCHEDULER.value,
        "task_routes": {pattern: {"queue": queue.value} for pattern, queue in ROUTES.items()},
        "task_queue_max_priority": AMQP_MAX_PRIORITY if transport == "amqp" else None,
        "task_default_priority": None,
        "task_create_missing_queues": False,
        # Time limits (boefje/normalizer tasks may set their own, never above the hard limit).
        "task_soft_time_limit": settings.soft_time_limit,
        "task_time_limit": settings.hard_time_limit,
        # Events for Flower.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "worker_hijack_root_logger": False,
        # Beat.
        "beat_schedule": beat_schedule(settings),
        "beat_scheduler": "kat_scheduler.runtime.beat:LeasedScheduler",
        "beat_max_loop_interval": min(5.0, settings.beat_lease / 3),
        # Ours (Celery keeps unknown lowercase keys): what the leased beat scheduler needs. The
        # database URL may hold a password and Celery censors only keys it knows to be secret
        # (`celery report`, `inspect conf`, Flower's Config tab show the rest), so it is kept as a
        # SecretStr: every rendering of it, Celery's included, shows '**********'.
        "kat_db_uri": SecretStr(settings.db_uri),
        "kat_beat_lease": settings.beat_lease,
        "kat_heartbeat_file": settings.heartbeat_file,
        "timezone": "UTC",
        "enable_utc": True,
    }
