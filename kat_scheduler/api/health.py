"""``GET /health`` and ``GET /metrics``."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from kat_scheduler.api.context import ApiContext, context
from kat_scheduler.api.models import Health
from kat_scheduler.clients.base import HTTPService
from kat_scheduler.models.tasks import SchedulerId, TaskStatus
from kat_scheduler.storage.task_views import TaskViews
from kat_scheduler.version import __version__

router = APIRouter(tags=["health"])


def _healthy(client: HTTPService) -> bool:
    try:
        return client.health().healthy
    except Exception:  # down, refusing, answering nonsense: not healthy
        return False


@router.get("/health", response_model=Health, summary="The scheduler's health, and with externals=true KAT's")
def health(
    ctx: Annotated[ApiContext, Depends(context)],
    externals: Annotated[bool, Query(description="Also ask Octopoes, Katalogus and Bytes for their health.")] = False,
) -> Health:
    report = Health(version=__version__)
    if externals:
        clients = ctx.clients
        services = {"octopoes": clients.octopoes, "katalogus": clients.katalogus, "bytes": clients.bytes}
        with ThreadPoolExecutor(len(services)) as pool:
            answers = dict(zip(services, pool.map(_healthy, services.values()), strict=True))
        report.externals = answers
    return report


class TaskCollector(Collector):
    """Queue size per scheduler and task count per scheduler and status, read when scraped."""

    def __init__(self, tasks: TaskViews) -> None:
        self.tasks = tasks

    def collect(self) -> Iterator[GaugeMetricFamily]:
        counts = self.tasks.counts()
        qsize = GaugeMetricFamily("scheduler_qsize", "Tasks queued, per scheduler", labels=["scheduler_id"])
        tasks = GaugeMetricFamily(
            "scheduler_task_status_counts", "Tasks per scheduler and status", labels=["scheduler_id", "status"]
        )
        for scheduler in SchedulerId:
            qsize.add_metric([scheduler.value], counts[(scheduler, TaskStatus.QUEUED)])
            for status in TaskStatus:
                tasks.add_metric([scheduler.value, status.value], counts[(scheduler, status)])
        yield qsize
        yield tasks


def metrics_registry(tasks: TaskViews) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TaskCollector(tasks))
    return registry


@router.get(
    "/metrics",
    response_class=Response,
    summary="Prometheus metrics: queue size per scheduler, task counts per scheduler and status",
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
def metrics(ctx: Annotated[ApiContext, Depends(context)]) -> Response:
    return Response(generate_latest(metrics_registry(ctx.tasks)), media_type=CONTENT_TYPE_LATEST)
