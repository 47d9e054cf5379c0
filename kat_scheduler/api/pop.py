"""``POST /schedulers/{id}/pop``: OpenKAT's own runners take work (pull delivery).

The schedulers named in ``SCHEDULER_PULL_SCHEDULERS`` (default ``report``) are not published to
Celery: their tasks wait ``queued`` until a runner pops them. A pop takes the most urgent queued
tasks that match the filters and marks them ``dispatched`` in one statement
(:meth:`~kat_scheduler.storage.task_views.TaskViews.pop`), so two runners never get the same
task. A task popped but never started is queued again by the reaper.

Pops with the same scheduler and filters that arrive while one of them runs wait and then run as
one statement (:class:`~kat_scheduler.api.batching.Batcher`): it takes the sum of their limits,
and the tasks, most urgent first, go to the requests in the order they arrived. Each runner gets
what it would have got popping alone in that order; the database does one round trip for the
lot. Tasks taken for a request whose client went away meanwhile are queued again at once.

A pop request the route accepted is remembered byte for byte; the same request again is run by
:class:`~kat_scheduler.api.known_pops.KnownPops` without FastAPI's routing and validation.

A scheduler delivered through Celery (not in the setting) answers every pop with no tasks: its
tasks belong to the Celery workers, and a Celery worker starts a ``dispatched`` task too, so a
pop would make it run twice. The API logs once per scheduler that a runner is popping there.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request, Response, status
from sqlalchemy import Row
from sqlalchemy.exc import DBAPIError
from starlette.concurrency import run_in_threadpool

from kat_scheduler.api.asgi import content_type
from kat_scheduler.api.context import MAX_POP, ApiContext, context
from kat_scheduler.api.known_pops import KnownPop
from kat_scheduler.api.models import PoppedTasks, Problem, Task
from kat_scheduler.api.schedulers import known_scheduler
from kat_scheduler.api.tasks import failed_read
from kat_scheduler.storage.filters import FilterError, FilterRequest, check_json_paths, json_paths

logger = logging.getLogger(__name__)
router = APIRouter(tags=["schedulers"])

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
async def pop(
    scheduler_id: str,
    request: Request,
    ctx: Annotated[ApiContext, Depends(context)],
    limit: Annotated[int, Query(ge=1, le=MAX_POP, description="The most tasks to take.")] = 1,
    filters: Annotated[FilterRequest | None, Body(description='{"filters": [...]} or null')] = None,
) -> Response:
    scheduler = known_scheduler(scheduler_id)
    try:
        if json_paths(filters):  # PostgreSQL reads them first (a round trip: not on the event loop)
            await run_in_threadpool(check_json_paths, filters, ctx.engine)
        popper = ctx.popper(scheduler, filters)
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
    # A runner sends this very request again and again: from now on it is run without the route.
    scope = request.scope
    form = (scope["path"], scope["query_string"], content_type(scope), await request.body())
    try:
        rows = await popper.submit(limit)
    except DBAPIError as exc:  # filters that fail on the rows they meet: 400 (never remembered)
        raise failed_read(exc, filters, f"POST /schedulers/{scheduler.value}/pop") from None
    ctx.pop_forms.remember(form, KnownPop(popper, limit, render))
    return Response(render(rows), media_type="application/json")


def render(rows: list[Row[Any]]) -> bytes:
    """The answer to a pop that took ``rows``, serialised once (FastAPI would validate the model
    again against ``response_model``)."""
    return PoppedTasks(results=[Task.of(row) for row in rows]).model_dump_json().encode()
