"""Celery's configuration carries the design's invariants."""

from __future__ import annotations

import subprocess
import sys

from kat_scheduler.queues import Queue
from kat_scheduler.runtime.celery_config import celery_config
from kat_scheduler.settings import load_settings


def test_only_json_is_ever_accepted() -> None:
    conf = celery_config(load_settings())
    assert conf["task_serializer"] == conf["result_serializer"] == "json"
    assert conf["accept_content"] == conf["result_accept_content"] == ["json"]


def test_nothing_is_lost_when_a_worker_dies() -> None:
    conf = celery_config(load_settings())
    assert conf["task_acks_late"] is True
    assert conf["task_reject_on_worker_lost"] is True
    assert conf["worker_prefetch_multiplier"] == 1


def test_redis_gets_ten_priority_steps_and_outlives_the_hard_limit() -> None:
    settings = load_settings(broker_url="redis://127.0.0.1:6379/0", hard_time_limit=900, soft_time_limit=800)
    options = celery_config(settings)["broker_transport_options"]
    assert options["priority_steps"] == list(range(10))
    assert options["visibility_timeout"] > 900


def test_rabbitmq_queues_are_declared_with_a_max_priority() -> None:
    conf = celery_config(load_settings(broker_url="amqp://guest:guest@127.0.0.1:5672//"))
    queues = {q.name: q for q in conf["task_queues"]}
    assert set(queues) == {q.value for q in Queue}
    assert all(q.queue_arguments == {"x-max-priority": 9} for q in queues.values())
    assert conf["broker_transport_options"] == {}


def test_tasks_are_routed_by_family() -> None:
    routes = celery_config(load_settings())["task_routes"]
    assert routes["kat.boefje.*"] == {"queue": "boefjes"}
    assert routes["kat.normalizer.*"] == {"queue": "normalizers"}
    assert routes["kat.scheduler.*"] == {"queue": "scheduler"}


def test_beat_ticks_the_planner_on_the_configured_interval() -> None:
    conf = celery_config(load_settings(plan_interval=15))
    assert conf["beat_schedule"]["plan-boefjes"]["schedule"].total_seconds() == 15
    assert conf["beat_scheduler"] == "kat_scheduler.runtime.beat:LeasedScheduler"


def test_beat_ticks_report_schedules_and_boefje_schedules_as_two_producers() -> None:
    schedule = celery_config(load_settings(schedules_interval=20))["beat_schedule"]
    assert schedule["queue-report-schedules"]["task"] == "kat.scheduler.queue_report_schedules"
    assert schedule["queue-due-schedules"]["task"] == "kat.scheduler.queue_due_schedules"
    for name in ("queue-report-schedules", "queue-due-schedules"):
        assert schedule[name]["schedule"].total_seconds() == 20
        assert schedule[name]["options"]["queue"] == "scheduler"


def test_celerys_own_views_of_the_configuration_show_no_password() -> None:
    # What `celery report` (humanize), `inspect conf` and Flower's Config tab (table, as JSON) print.
    from celery.utils.saferepr import saferepr
    from celery.utils.serialization import jsonify

    from kat_scheduler.runtime.celery_app import create_app

    settings = load_settings(
        db_uri="postgresql://sched:dbpw@db:5432/scheduler",
        broker_url="amqp://kat:brokerpw@rabbitmq:5672/kat",
        result_backend="db+postgresql://sched:backendpw@db/results",
        queue_uri="amqp://kat:eventspw@rabbitmq:5672/kat",
        octopoes_api="http://kat:octopoespw@octopoes:8001",
        bytes_password="bytespw",
        flower_basic_auth="ops:flowerpw",
    )
    conf = create_app(settings, main="censored", tasks=False).conf
    for with_defaults in (False, True):
        shown = conf.humanize(with_defaults=with_defaults) + repr(
            jsonify(conf.table(with_defaults=with_defaults), unknown_type_filter=saferepr)
        )
        for secret in ("dbpw", "brokerpw", "backendpw", "eventspw", "octopoespw", "bytespw", "flowerpw"):
            assert secret not in shown
        assert "rabbitmq:5672" in shown


def test_beat_gets_the_database_url_in_full() -> None:
    from kat_scheduler.runtime.beat import database_uri

    uri = "postgresql://sched:dbpw@db:5432/scheduler"
    assert database_uri(celery_config(load_settings(db_uri=uri))["kat_db_uri"]) == uri
    assert database_uri(uri) == uri  # as an own CELERY_CONFIG_MODULE may set it


def test_celery_finds_the_app_with_dash_a_kat_scheduler() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "kat_scheduler", "report"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "accept_content: ['json']" in result.stdout
    assert "kat_scheduler" in result.stdout


def test_importing_the_package_does_not_import_celery() -> None:
    code = "import sys, kat_scheduler, kat_scheduler.models, kat_scheduler.queues; print('celery' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "False", out.stderr
