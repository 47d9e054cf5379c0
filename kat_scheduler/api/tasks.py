"""``/tasks``: listing with bounded counts, one task, its status over HTTP, hourly stats."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request, Response, status
from sqlalchemy import Row
from sqlalchemy.exc import DBAPIError

from kat_scheduler.api.context import ApiContext, context
from kat_scheduler.api.models import Problem, StatusCounts, Task, TaskPage, TaskPatch
from kat_scheduler.models.tasks import SchedulerId, TaskStatus
from kat_scheduler.storage.filters import (
    FilterError,
    FilterRequest,
    check_json_paths,
    conditions,
    described,
    failed_on_data,
)
from kat_scheduler.storage.tables import TaskRow
from kat_scheduler.storage.task_views import TaskNotFound, TaskQuery, TransitionRefused

logger = logging.getLogger(__name__)
router = APIRouter(tags=["tasks"])

#: The most tasks one page may hold.
MAX_LIMIT = 500
#: The largest offset of a page (past every task a scheduler will hold; both databases count it).
MAX_OFFSET = 2**31 - 1
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Problem, "description": "No task has this id"}}


def _utc(moment: datetime | None, name: str) -> datetime | None:
    """A date or datetime from the query, in UTC (without a zone it is UTC); 400 naming ``name``
    for one that is no UTC time (``0001-01-01T00:00:00+01:00`` is in the year 0 there)."""
    if moment is None:
        return None
    try:
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except OverflowError:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, f"{name} {moment.isoformat()} is out of range in UTC (years 1 to 9999)"
        ) from None


def failed_read(exc: DBAPIError, filters: FilterRequest | None, where: str) -> HTTPException:
    """The 400 of a read whose filters failed on the values they met in the rows (PostgreSQL's
    reason, logged with the filters but not their values); any other failure is raised again."""
    failed = failed_on_data(exc) if filters is not None else None
    if failed is None or filters is None:
        raise exc
    code, reason = failed
    logger.warning("%s: the filters [%s] failed on the stored rows (SQLSTATE %s)", where, described(filters), code)
    return HTTPException(status.HTTP_400_BAD_REQUEST, f"the filters cannot be applied to the stored rows: {reason}")


def _page_url(request: Request, offset: int, limit: int) -> str:
    return str(request.url.include_query_params(offset=offset, limit=limit))


@dataclass(frozen=True)
class Listing:
    """The query parameters of ``GET /tasks`` and ``POST /tasks``."""

    query: TaskQuery
    offset: int
    limit: int
    max_pages: int
    allow_partial_count: bool


def listing(
    scheduler_id: SchedulerId | None = None,
    organisation: Annotated[list[str] | None, Query(description="One organisation code, or repeated.")] = None,
    task_type: Annotated[str | None, Query(description="The task's type: boefje, normalizer or report.")] = None,
    type_: Annotated[str | None, Query(alias="type", description="Older name of task_type.")] = None,
    status_: Annotated[TaskStatus | None, Query(alias="status")] = None,
    input_ooi: Annotated[str | None, Query(description="Only tasks on this object (Rocky's search).")] = None,
    plugin_id: Annotated[str | None, Query(description="Only tasks of this boefje or normalizer.")] = None,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    limit: Annotated[int, Query(ge=0, le=MAX_LIMIT)] = 10,
    min_created_at: Annotated[datetime | None, Query(description="ISO datetime or date (YYYY-MM-DD), UTC.")] = None,
    max_created_at: Annotated[datetime | None, Query(description="ISO datetime or date (YYYY-MM-DD), UTC.")] = None,
    max_pages: Annotated[int, Query(ge=1, le=20, description="Pages a bounded count covers.")] = 6,
    allow_partial_count: Annotated[
        bool, Query(description="Count at most offset + max_pages * limit + 1 tasks (is_partial_count says so).")
    ] = False,
) -> Listing:
    low, high = _utc(min_created_at, "min_created_at"), _utc(max_created_at, "max_created_at")
    if low is not None and high is not None and low > high:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "min_created_at must be less than max_created_at")
    if task_type is not None and type_ is not None and task_type != type_:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "task_type and type contradict each other")
    query = TaskQuery(
        scheduler_id=scheduler_id,
        organisations=tuple(organisation or ()),
        task_type=task_type or type_,
        status=status_,
        input_ooi=input_ooi,
        plugin_id=plugin_id,
        min_created_at=low,
        max_created_at=high,
    )
    return Listing(query, offset, limit, max_pages, allow_partial_count)


def _respond(request: Request, ctx: ApiContext, params: Listing) -> Response:
    offset, limit = params.offset, params.limit
    cap = offset + params.max_pages * limit + 1 if params.allow_partial_count else None
    found = ctx.tasks.page(params.query, offset=offset, limit=limit, count_cap=cap)
    page = TaskPage(
        count=found.count,
        next=_page_url(request, offset + limit, limit) if limit and offset + limit < found.count else None,
        previous=_page_url(request, max(offset - limit, 0), limit) if limit and offset > 0 else None,
        results=[Task.of(row) for row in found.rows],
        is_partial_count=found.partial if params.allow_partial_count else None,
    )
    body = page.model_dump_json(exclude=set() if params.allow_partial_count else {"is_partial_count"})
    return Response(body, media_type="application/json")


LISTING_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "Contradicting query parameters, or a filter that cannot be applied"}
}


@router.get(
    "/tasks",
    response_model=TaskPage,
    summary="Tasks, newest first, paginated (limit=0: only the count)",
    responses=LISTING_ERRORS,
)
def list_tasks(
    request: Request, ctx: Annotated[ApiContext, Depends(context)], params: Annotated[Listing, Depends(listing)]
) -> Response:
    return _respond(request, ctx, params)


@router.post(
    "/tasks",
    response_model=TaskPage,
    summary="Tasks matching the filter language, newest first, paginated (the query parameters of GET apply too)",
    responses=LISTING_ERRORS,
)
def search_tasks(
    request: Request,
    ctx: Annotated[ApiContext, Depends(context)],
    params: Annotated[Listing, Depends(listing)],
    filters: Annotated[FilterRequest | None, Body(description='{"filters": [...]} or null')] = None,
) -> Response:
    try:
        where = conditions(filters, ctx.engine.dialect.name)
        check_json_paths(filters, ctx.engine)
    except FilterError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
    try:
        return _respond(request, ctx, replace(params, query=replace(params.query, where=tuple(where))))
    except DBAPIError as exc:
        raise failed_read(exc, filters, "POST /tasks") from None


@router.get(
    "/tasks/stats",
    response_model=dict[str, StatusCounts],
    summary="Tasks per hour of the last 24 h (by modified_at) and status, with a total",
)
def task_stats(
    ctx: Annotated[ApiContext, Depends(context)],
    scheduler_id: SchedulerId | None = None,
    organisation_id: Annotated[list[str] | None, Query(description="An organisation, or repeated.")] = None,
    organisation_ids: Annotated[list[str] | None, Query(description="Organisations (repeated).")] = None,
) -> dict[str, StatusCounts]:
    organisations = tuple(dict.fromkeys([*(organisation_id or ()), *(organisation_ids or ())]))
    buckets = ctx.tasks.hourly_status_counts(scheduler_id=scheduler_id, organisations=organisations)
    stats: dict[str, StatusCounts] = {}
    for hour, counts in buckets.items():
        bucket = {s.value: counts.get(s, 0) for s in TaskStatus}
        bucket["total"] = sum(counts.values())
        stats[hour.isoformat()] = bucket
    return stats


def _differs(given: Any, current: Any) -> bool:
    """Whether a field of a PATCH differs from the task's; a datetime with a zone that puts it
    outside the years 1 to 9999 in UTC is no time any task has."""
    try:
        return bool(given != current)
    except OverflowError:
        return True


def _task_json(row: TaskRow | Row[Any]) -> Response:
    """A task, serialised once (FastAPI would validate the Task again against ``response_model``)."""
    return Response(Task.of(row).model_dump_json(), media_type="application/json")


@router.get("/tasks/{task_id}", response_model=Task, summary="One task", responses=NOT_FOUND)
def get_task(task_id: uuid.UUID, ctx: Annotated[ApiContext, Depends(context)]) -> Response:
    row = ctx.tasks.get(task_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"task not found: {task_id}")
    return _task_json(row)


@router.patch(
    "/tasks/{task_id}",
    response_model=Task,
    summary="Move a task through its lifecycle (status), as the workers do",
    responses={
        **NOT_FOUND,
        400: {"model": Problem, "description": "Empty body, a field other than status, or a refused transition"},
    },
)
def patch_task(task_id: uuid.UUID, item: TaskPatch, ctx: Annotated[ApiContext, Depends(context)]) -> Response:
    patch = item.model_dump(exclude_unset=True)
    if not patch:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "no data to patch")
    wanted = patch.get("status")
    if set(patch) != {"status"} or wanted is None:
        # Fields besides the status (a whole Task sent back) must match the task as it is.
        row = ctx.tasks.get(task_id)
        if row is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"task not found: {task_id}")
        current = Task.of(row).model_dump()
        changed = sorted(name for name, value in patch.items() if name != "status" and _differs(value, current[name]))
        if changed:
            raise HTTPException(
                status.HTTP_400_BAD_REQUEST, f"only status can be patched; these fields differ from the task: {changed}"
            )
        if wanted is None:
            if "status" in patch:
                raise HTTPException(status.HTTP_400_BAD_REQUEST, "status cannot be null")
            return _task_json(row)
    # The workers' PATCH (the status alone) is one conditional UPDATE: no read before it.
    try:
        moved = ctx.tasks.move(task_id, TaskStatus(wanted))
    except TaskNotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"task not found: {task_id}") from None
    except TransitionRefused as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
    return _task_json(moved)
