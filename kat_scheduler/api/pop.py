"""``POST /schedulers/{id}/pop``: OpenKAT's own runners take work (pull delivery).

The schedulers named in ``SCHEDULER_PULL_SCHEDULERS`` (default ``report``) are not published to
Celery: their tasks wait ``queued`` until a runner pops them. A pop takes the most urgent queued
tasks that match the filters and marks them ``dispatched`` in one statement
(:meth:`~kat_scheduler.storage.task_views.TaskViews.pop`), so two runners never get the same
task. A task popped but never started is queued again by the reaper.

A scheduler delivered through Celery (not in the setting) answers every pop with no tasks: its
tasks belong to the Celery workers, and a Celery worker starts a ``dispatched`` task too, so a
pop would make it run twice. The API logs once per scheduler that a runner is popping there.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Response, status

from kat_scheduler.api.context import ApiContext, context
from kat_scheduler.api.models import PoppedTasks, Problem, Task
from kat_scheduler.api.schedulers import known_scheduler
from kat_scheduler.storage.filters import FilterError, FilterRequest

logger = logging.getLogger(__name__)
router = APIRouter(tags=["schedulers"])

#: The most tasks one pop may take.
MAX_POP = 500
NO_TASKS = PoppedTasks(results=[]).model_dump_json()


@router.post(
    "/schedulers/{scheduler_id}/pop",
    response_model=PoppedTasks,
    summary=(
        "Take the most urgent queued tasks matching the filters; each is now dispatched "
        "(pull schedulers only: the others answer no tasks)"
    ),
    responses={
        400: {"model": Problem, "description": "A filter that cannot be applied"},
        404: {"model": Problem, "description": "No such scheduler"},
    },
)
def pop(
    scheduler_id: str,
    ctx: Annotated[ApiContext, Depends(context)],
    limit: Annotated[int, Query(ge=1, le=MAX_POP, description="The most tasks to take.")] = 1,
    filters: Annotated[FilterRequest | None, Body(description='{"filters": [...]} or null')] = None,
) -> Response:
    scheduler = known_scheduler(scheduler_id)
    try:
        statement = ctx.pop_statement(scheduler, limit, filters)
    except FilterError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
    if scheduler not in ctx.pull_schedulers:
        if scheduler not in ctx.warned_pops:
            ctx.warned_pops.add(scheduler)
            logger.warning(
                "a runner pops %s tasks, but they are delivered through Celery (not in SCHEDULER_PULL_SCHEDULERS): "
                "it gets none",
                scheduler.value,
            )
        return Response(NO_TASKS, media_type="application/json")
    rows = ctx.tasks.pop_with(statement)
    # Serialised here, once: FastAPI would validate the model again against response_model.
    body = PoppedTasks(results=[Task.of(row) for row in rows]).model_dump_json()
    return Response(body, media_type="application/json")
