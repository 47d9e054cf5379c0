"""``/schedules``: list, search, create, read, change and delete schedules (Rocky's report schedules,
and the boefje schedules the planner writes).

A schedule's ``data`` is a task of its scheduler (BoefjeTask, NormalizerTask, ReportTask); its hash
is that task's hash, so one schedule exists per task. ``schedule`` is a cron expression (null: a
one-off schedule, due once at ``deadline_at``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from croniter import CroniterBadDateError
from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request, Response, status
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError

from kat_scheduler.api.context import ApiContext, context
from kat_scheduler.api.models import Problem, ReportTask, Schedule, ScheduleCreate, SchedulePage, SchedulePatch
from kat_scheduler.api.tasks import MAX_OFFSET, failed_read
from kat_scheduler.models.tasks import BoefjeTask, NormalizerTask, SchedulerId
from kat_scheduler.rules.timing import is_valid_cron, next_cron
from kat_scheduler.storage.filters import FilterError, FilterRequest, check_json_paths, conditions, unstorable
from kat_scheduler.storage.schedules import HashTaken, ScheduleQuery, ScheduleRecord, ScheduleStore
from kat_scheduler.storage.tables import ScheduleRow, table_of, utcnow

router = APIRouter(tags=["schedules"])

#: The most schedules one page may hold.
MAX_LIMIT = 500
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Problem, "description": "No schedule has this id"}}
_SCHEDULES = table_of(ScheduleRow)


def _utc(moment: datetime | None, name: str) -> datetime | None:
    """A date or datetime from a request, in UTC (without a zone it is UTC); 400 naming ``name``
    for one that is no UTC time (``0001-01-01T00:00:00+01:00`` is in the year 0 there)."""
    if moment is None:
        return None
    try:
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except OverflowError:
        raise _bad(f"{name} {moment.isoformat()} is out of range in UTC (years 1 to 9999)") from None


def _bad(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_400_BAD_REQUEST, detail)


def _errors(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'data'}: {e['msg']}" for e in exc.errors())


@dataclass(frozen=True, slots=True)
class Identity:
    """What a schedule's data makes it: the plugin (or report recipe), the object, the task hash."""

    plugin_id: str
    input_ooi: str | None
    hash: str


def identity(scheduler_id: SchedulerId, organisation: str, data: dict[str, Any]) -> Identity:
    """The task ``data`` describes for ``scheduler_id``; 400 when it is not one, or of another
    organisation, or holds what no database stores (text with a NUL character, an integer beyond 64 bits)."""
    problem = unstorable(organisation, "organisation") or unstorable(data, "data")
    if problem is not None:
        raise _bad(problem)
    try:
        if scheduler_id is SchedulerId.BOEFJE:
            boefje = BoefjeTask.model_validate(data)
            owner, found = boefje.organization, Identity(boefje.boefje.id, boefje.input_ooi, boefje.hash)
        elif scheduler_id is SchedulerId.NORMALIZER:
            normalizer = NormalizerTask.model_validate(data)
            input_ooi = normalizer.raw_data.boefje_meta.input_ooi
            owner, found = normalizer.organization, Identity(normalizer.normalizer.id, input_ooi, normalizer.hash)
        else:
            report = ReportTask.model_validate(data)
            owner, found = report.organisation_id, Identity(report.report_recipe_id, None, report.hash)
    except ValidationError as exc:
        raise _bad(f"data is not a {scheduler_id.value} task: {_errors(exc)}") from None
    if owner != organisation:
        raise _bad(f"organisation {organisation!r} differs from the data's organisation {owner!r}")
    return found


def valid_cron(expression: str) -> str:
    if not is_valid_cron(expression):
        raise _bad(f"schedule {expression!r} is not a valid cron expression")
    return expression


def next_time(expression: str, now: datetime) -> datetime:
    """The cron's next time after ``now``; 400 when it has none (a year field whose years are past)."""
    try:
        return next_cron(expression, now)
    except CroniterBadDateError:
        raise _bad(f"schedule {expression!r} has no time after {now.isoformat()}") from None


def _scheduler(scheduler_id: str) -> SchedulerId:
    try:
        return SchedulerId(scheduler_id)
    except ValueError:
        known = ", ".join(s.value for s in SchedulerId)
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"scheduler not found: {scheduler_id!r} (schedulers: {known})"
        ) from None


def _page_url(request: Request, offset: int, limit: int) -> str:
    return str(request.url.include_query_params(offset=offset, limit=limit))


def _respond(
    request: Request,
    ctx: ApiContext,
    query: ScheduleQuery,
    *,
    offset: int,
    limit: int,
    max_pages: int = 6,
    allow_partial_count: bool = False,
) -> JSONResponse:
    cap = offset + max_pages * limit + 1 if allow_partial_count else None
    found = ScheduleStore(ctx.engine).page(query, offset=offset, limit=limit, count_cap=cap)
    page = SchedulePage(
        count=found.count,
        next=_page_url(request, offset + limit, limit) if limit and offset + limit < found.count else None,
        previous=_page_url(request, max(offset - limit, 0), limit) if limit and offset > 0 else None,
        results=[Schedule.of(row) for row in found.rows],
        is_partial_count=found.partial if allow_partial_count else None,
    )
    return JSONResponse(page.model_dump(mode="json", exclude=set() if allow_partial_count else {"is_partial_count"}))


def _ordered(low: datetime | None, high: datetime | None, name: str) -> None:
    if low is not None and high is not None and low > high:
        raise _bad(f"min_{name} must be less than max_{name}")


DATE = "ISO datetime or date (YYYY-MM-DD), UTC."


@router.get(
    "/schedules",
    response_model=SchedulePage,
    summary="Schedules, newest first, paginated (limit=0: only the count)",
    responses={400: {"model": Problem, "description": "A min bound after its max"}},
)
def list_schedules(
    request: Request,
    ctx: Annotated[ApiContext, Depends(context)],
    scheduler_id: SchedulerId | None = None,
    organisation: str | None = None,
    schedule_hash: Annotated[str | None, Query(description="The schedule's (its task's) hash.")] = None,
    enabled: bool | None = None,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    limit: Annotated[int, Query(ge=0, le=MAX_LIMIT)] = 10,
    min_deadline_at: Annotated[datetime | None, Query(description=DATE)] = None,
    max_deadline_at: Annotated[datetime | None, Query(description=DATE)] = None,
    min_created_at: Annotated[datetime | None, Query(description=DATE)] = None,
    max_created_at: Annotated[datetime | None, Query(description=DATE)] = None,
    max_pages: Annotated[int, Query(ge=1, le=20, description="Pages a bounded count covers.")] = 6,
    allow_partial_count: Annotated[
        bool, Query(description="Count at most offset + max_pages * limit + 1 schedules (is_partial_count says so).")
    ] = False,
) -> JSONResponse:
    low_deadline, high_deadline = _utc(min_deadline_at, "min_deadline_at"), _utc(max_deadline_at, "max_deadline_at")
    low_created, high_created = _utc(min_created_at, "min_created_at"), _utc(max_created_at, "max_created_at")
    _ordered(low_deadline, high_deadline, "deadline_at")
    _ordered(low_created, high_created, "created_at")
    query = ScheduleQuery(
        scheduler_id=scheduler_id,
        organisation=organisation,
        hash=schedule_hash,
        enabled=enabled,
        min_deadline_at=low_deadline,
        max_deadline_at=high_deadline,
        min_created_at=low_created,
        max_created_at=high_created,
    )
    return _respond(
        request, ctx, query, offset=offset, limit=limit, max_pages=max_pages, allow_partial_count=allow_partial_count
    )


@router.post(
    "/schedules",
    status_code=status.HTTP_201_CREATED,
    response_model=Schedule,
    summary="Create a schedule (a cron expression, a first deadline, or both)",
    responses={
        400: {"model": Problem, "description": "Data that is not a task of the scheduler, or an invalid cron"},
        404: {"model": Problem, "description": "No such scheduler"},
        409: {"model": Problem, "description": "A schedule with this hash exists"},
    },
)
def create_schedule(body: ScheduleCreate, ctx: Annotated[ApiContext, Depends(context)]) -> Schedule:
    scheduler = _scheduler(body.scheduler_id)
    found = identity(scheduler, body.organisation, body.data)
    if body.schedule is None and body.deadline_at is None:
        raise _bad("a schedule needs a cron expression (schedule), a deadline_at, or both")
    now = utcnow()
    cron = valid_cron(body.schedule) if body.schedule is not None else None
    if body.deadline_at is not None:
        deadline = _utc(body.deadline_at, "deadline_at")
    else:
        assert cron is not None
        deadline = next_time(cron, now)
    record = ScheduleRecord(
        id=uuid.uuid4(),
        scheduler_id=scheduler,
        organisation=body.organisation,
        plugin_id=found.plugin_id,
        input_ooi=found.input_ooi,
        hash=found.hash,
        data=body.data,
        enabled=True,
        deadline_at=deadline,
        created_at=now,
        modified_at=now,
        schedule=cron,
    )
    store = ScheduleStore(ctx.engine)
    if not store.add_records([record]):
        raise HTTPException(status.HTTP_409_CONFLICT, f"a schedule with hash {found.hash} exists already")
    row = store.get(record.id)
    assert row is not None
    return Schedule.of(row)


@router.post(
    "/schedules/search",
    response_model=SchedulePage,
    summary="Schedules matching the filter language, newest first, paginated",
    responses={400: {"model": Problem, "description": "No filters, or a filter that cannot be applied"}},
)
def search_schedules(
    request: Request,
    ctx: Annotated[ApiContext, Depends(context)],
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    limit: Annotated[int, Query(ge=0, le=MAX_LIMIT)] = 10,
    filters: Annotated[FilterRequest | None, Body(description='{"filters": [...]}')] = None,
) -> JSONResponse:
    if filters is None or not filters.filters:
        raise _bad("missing search filters")
    try:
        where = conditions(filters, ctx.engine.dialect.name, _SCHEDULES)
        check_json_paths(filters, ctx.engine)
    except FilterError as exc:
        raise _bad(str(exc)) from None
    try:
        return _respond(request, ctx, ScheduleQuery(where=tuple(where)), offset=offset, limit=limit)
    except DBAPIError as exc:
        raise failed_read(exc, filters, "POST /schedules/search") from None


def _existing(ctx: ApiContext, schedule_id: uuid.UUID) -> ScheduleRow:
    row = ScheduleStore(ctx.engine).get(schedule_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"schedule not found: {schedule_id}")
    return row


@router.get("/schedules/{schedule_id}", response_model=Schedule, summary="One schedule", responses=NOT_FOUND)
def get_schedule(schedule_id: uuid.UUID, ctx: Annotated[ApiContext, Depends(context)]) -> Schedule:
    return Schedule.of(_existing(ctx, schedule_id))


@router.patch(
    "/schedules/{schedule_id}",
    response_model=Schedule,
    summary="Enable or disable a schedule, change its cron (the next deadline follows), deadline or data",
    responses={
        **NOT_FOUND,
        400: {"model": Problem, "description": "An empty body, an invalid cron, or data that is not a task"},
        409: {"model": Problem, "description": "The new data's hash is another schedule's"},
    },
)
def patch_schedule(
    schedule_id: uuid.UUID, body: SchedulePatch, ctx: Annotated[ApiContext, Depends(context)]
) -> Schedule:
    patch = body.model_dump(exclude_unset=True)
    if not patch:
        raise _bad("no data to patch")
    for name in ("enabled", "data"):
        if name in patch and patch[name] is None:
            raise _bad(f"{name} cannot be null")
    row = _existing(ctx, schedule_id)
    now = utcnow()
    values: dict[str, Any] = {}
    cron = row.schedule
    if "schedule" in patch:
        cron = valid_cron(patch["schedule"]) if patch["schedule"] is not None else None
        values["schedule"] = cron
        if cron is not None and cron != row.schedule:
            values["deadline_at"] = next_time(cron, now)  # the next deadline follows the new cron
    if "enabled" in patch:
        values["enabled"] = patch["enabled"]
        if patch["enabled"]:
            values["disabled_reason"] = None
            values["descheduled_at"] = None  # an operator overrules the boefje that descheduled it
            if row.deadline_at is None and cron is not None and "deadline_at" not in values:
                values["deadline_at"] = next_time(cron, now)
    if "deadline_at" in patch:
        values["deadline_at"] = _utc(patch["deadline_at"], "deadline_at")
    if "data" in patch:
        found = identity(row.scheduler_id, row.organisation, patch["data"])
        values.update(data=patch["data"], plugin_id=found.plugin_id, input_ooi=found.input_ooi, hash=found.hash)
    try:
        changed = ScheduleStore(ctx.engine).change(schedule_id, values, now=now)
    except HashTaken:
        raise HTTPException(status.HTTP_409_CONFLICT, f"a schedule with hash {values['hash']} exists already") from None
    if changed is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"schedule not found: {schedule_id}")
    return Schedule.of(changed)


@router.delete(
    "/schedules/{schedule_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Delete a schedule (its tasks stay, without a schedule_id)",
    responses=NOT_FOUND,
)
def delete_schedule(schedule_id: uuid.UUID, ctx: Annotated[ApiContext, Depends(context)]) -> Response:
    if not ScheduleStore(ctx.engine).delete(schedule_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"schedule not found: {schedule_id}")
    return Response(status_code=status.HTTP_204_NO_CONTENT)
