"""``kat-scheduler status``: the scheduler at a glance, as a plain table or JSON.

:func:`collect_status` gathers one :class:`StatusReport`, section by section:

* ``database``: can we connect, and is the schema at the newest revision;
* ``broker``: messages waiting per queue, and per band where the broker can tell (Redis keeps
  one list per priority step; RabbitMQ only gives a total per queue, from a passive declare);
  and whether backpressure holds bands back now (a deep ``boefjes`` queue, or one whose depth
  cannot be read);
* ``tasks``: rows by status and scheduler, and the queued rows per queue and band;
* ``schedules``: enabled, disabled, and due now (enabled with ``deadline_at <= now``);
* ``producers``: the last run of each producer (``producer_runs``) and how long ago it ended,
  and why its last run held bands back, when it did;
* ``stalled``: rows the reaper would repair, by the reaper's own criteria and settings.

Each section that cannot be collected carries an ``error`` and leaves its data ``null``; the
others are collected all the same. The command exits 1 when any section failed, else 0.
Nothing is changed, declared or created: the broker is only read, the database only queried.
"""

from kat_scheduler.status.collect import collect_broker, collect_status, error_text
from kat_scheduler.status.command import status_cmd
from kat_scheduler.status.render import render_table
from kat_scheduler.status.report import (
    BackpressureStatus,
    BrokerSection,
    DatabaseSection,
    ProducersSection,
    ProducerStatus,
    QueueDepth,
    SchedulesSection,
    Section,
    StalledGroup,
    StalledRow,
    StalledSection,
    StatusReport,
    TasksSection,
)

__all__ = [
    "BackpressureStatus",
    "BrokerSection",
    "DatabaseSection",
    "ProducerStatus",
    "ProducersSection",
    "QueueDepth",
    "SchedulesSection",
    "Section",
    "StalledGroup",
    "StalledRow",
    "StalledSection",
    "StatusReport",
    "TasksSection",
    "collect_broker",
    "collect_status",
    "error_text",
    "render_table",
    "status_cmd",
]
