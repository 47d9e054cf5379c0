"""``POST /schedulers/{id}/push``: a task queued by hand (Rocky's "scan now", a worker handing one back).

It takes the producers' path: the row is claimed (one live task per hash) at band 0, the most
urgent, then its message is published to the scheduler's Celery queue. A pull scheduler's task
(``SCHEDULER_PULL_SCHEDULERS``) is only claimed: its runners pop it (``pop.py``). Pushes to pull
schedulers that arrive together are claimed in one statement
(:class:`~kat_scheduler.api.batching.Batcher`); each gets the answer it would have got alone,
in the order they arrived (of two pushes of one hash, the first is queued, the second is a 409).

A boefje push is "scan now", checked as the CLI's push is
(:func:`~kat_scheduler.producers.push.check_push`): it bypasses grace, interval and cron, never
clearance (400, as data that cannot make a task) and never a run Bytes shows going, younger than
the stall age (409 with Retry-After, as a live task of the hash; the rules core's
:func:`kat_scheduler.rules.may_push` decides). Katalogus and Octopoes are asked once per push.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Depends, HTTPException, Response, status
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kat_scheduler.api.context import ApiContext, context
from kat_scheduler.api.models import Problem, ReportTask, Task
from kat_scheduler.api.schedulers import known_scheduler
from kat_scheduler.clients import ServiceError
from kat_scheduler.dispatch.messages import Dispatchable
from kat_scheduler.dispatch.messages import dispatchable as message_factory
from kat_scheduler.models.tasks import BoefjeTask, NormalizerTask, SchedulerId, TaskStatus
from kat_scheduler.producers.push import PushRefused, RunningInBytes, check_push
from kat_scheduler.queues import MANUAL_BAND
from kat_scheduler.rules.payloads import without_settings
from kat_scheduler.storage.bytes_runs import BytesRunStore
from kat_scheduler.storage.filters import unstorable
from kat_scheduler.storage.tables import utcnow
from kat_scheduler.storage.tasks import NewTask, TaskStore

router = APIRouter(tags=["schedulers"])

JSON = "application/json"
#: Seconds a client is told to wait before pushing a hash again that is queued or running.
RETRY_AFTER = 60


class TaskPush(BaseModel):
    """The body of a push. A worker re-pushing a whole Task sends more keys: they are ignored."""

    model_config = ConfigDict(extra="ignore")

    id: uuid.UUID | None = None
    scheduler_id: str | None = None
    organisation: str
    priority: int | None = Field(None, ge=-(2**63), le=2**63 - 1, description="A 64-bit integer.")
    data: dict[str, Any]


def _bad(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_400_BAD_REQUEST, detail)


def _errors(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'data'}: {e['msg']}" for e in exc.errors())


def dispatchable(scheduler_id: SchedulerId, push: TaskPush) -> Dispatchable:
    """The row and message of a push; 400 for data that does not make a task of this scheduler."""
    given = push.data.get("id")
    if push.id is not None and given is not None and str(given) != str(push.id):
        raise _bad(f"id {push.id} and data.id {given} differ")
    task_id = push.id or (uuid.UUID(str(given)) if given is not None else uuid.uuid4())
    data = {**push.data, "id": str(task_id)}
    try:
        if scheduler_id is SchedulerId.BOEFJE:
            boefje = BoefjeTask.model_validate(data)
            organisation, plugin_id, input_ooi, hash_ = (
                boefje.organization,
                boefje.boefje.id,
                boefje.input_ooi,
                boefje.hash,
            )
            raw_id = None
            data["boefje"] = {"oci_image": None, **data["boefje"]}
        else:
            normalizer = NormalizerTask.model_validate(data)
            organisation, plugin_id, hash_ = normalizer.organization, normalizer.normalizer.id, normalizer.hash
            input_ooi = normalizer.raw_data.boefje_meta.input_ooi
            raw_id = str(normalizer.raw_data.id)
    except ValidationError as exc:
        raise _bad(f"data is not a {scheduler_id.value} task: {_errors(exc)}") from None
    if organisation != push.organisation:
        raise _bad(f"organisation {push.organisation!r} differs from the data's organization {organisation!r}")
    task = NewTask(
        id=task_id,
        scheduler_id=scheduler_id,
        type=scheduler_id.value,
        organisation=organisation,
        plugin_id=plugin_id,
        input_ooi=input_ooi,
        hash=hash_,
        band=MANUAL_BAND,
        priority=push.priority if push.priority is not None else 0,
        data=without_settings(data),
        reason="manual",
    )
    return message_factory(task, raw_id=raw_id)


def report_task(push: TaskPush) -> NewTask:
    """The row of a pushed report task; 400 for data that is not a ReportTask of the organisation."""
    try:
        report = ReportTask.model_validate(push.data)
    except ValidationError as exc:
        raise _bad(f"data is not a report task: {_errors(exc)}") from None
    if report.organisation_id != push.organisation:
        raise _bad(
            f"organisation {push.organisation!r} differs from the data's organisation_id {report.organisation_id!r}"
        )
    return NewTask(
        id=push.id or uuid.uuid4(),
        scheduler_id=SchedulerId.REPORT,
        type=SchedulerId.REPORT.value,
        organisation=report.organisation_id,
        plugin_id=report.report_recipe_id,
        input_ooi=None,
        hash=report.hash,
        band=MANUAL_BAND,
        priority=push.priority if push.priority is not None else 0,
        data=push.data,
        reason="manual",
    )


@router.post(
    "/schedulers/{scheduler_id}/push",
    status_code=status.HTTP_201_CREATED,
    response_model=Task,
    summary="Queue a task now, at the most urgent band (pull schedulers: for the next pop, unpublished)",
    responses={
        400: {
            "model": Problem,
            "description": "Data that does not validate or contradicts the path; clearance not met",
        },
        404: {"model": Problem, "description": "No such scheduler"},
        409: {
            "model": Problem,
            "description": "The same hash is queued or running, here or in Bytes (see Retry-After)",
        },
        503: {
            "model": Problem,
            "description": "The broker did not take the message, or Katalogus or Octopoes did not answer",
        },
    },
)
async def push(scheduler_id: str, body: TaskPush, ctx: Annotated[ApiContext, Depends(context)]) -> Response:
    # Serialised here, once: FastAPI would validate the Task again against response_model.
    task = await _pushed(scheduler_id, body, ctx)
    return Response(task.model_dump_json(), status.HTTP_201_CREATED, media_type=JSON)


async def _pushed(scheduler_id: str, body: TaskPush, ctx: ApiContext) -> Task:
    scheduler = known_scheduler(scheduler_id)
    problem = unstorable(body.organisation, "organisation") or unstorable(body.data, "data")
    if problem is not None:
        raise _bad(problem)
    if body.scheduler_id is not None and body.scheduler_id != scheduler.value:
        raise _bad(f"scheduler_id {body.scheduler_id!r} contradicts the path's scheduler {scheduler.value!r}")
    pull = scheduler in ctx.pull_schedulers
    if scheduler is SchedulerId.REPORT and not pull:
        raise _bad("report tasks are delivered only by pop: the report scheduler is not in SCHEDULER_PULL_SCHEDULERS")
    item = None if scheduler is SchedulerId.REPORT else dispatchable(scheduler, body)
    task = report_task(body) if item is None else item.task
    taken = HTTPException(
        status.HTTP_409_CONFLICT,
        f"a task with hash {task.hash} is already queued or running",
        headers={"Retry-After": str(RETRY_AFTER)},
    )
    if scheduler is SchedulerId.BOEFJE:
        await to_thread.run_sync(_admissible, ctx, task)
    # Claim first: one statement on the common path. A claim that wins nothing had its id or its
    # hash taken; only then is the task with this id looked at.
    if pull or item is None:
        # A pull scheduler's runners pop it: claimed at the most urgent band, never published.
        # Pushes arriving together are claimed in one statement (ApiContext.holder).
        claimed, now = await ctx.holder.submit(task)
        if claimed:
            return _queued(task, now)
        return await to_thread.run_sync(_refused, ctx, task, taken)
    return await to_thread.run_sync(_dispatched, ctx, item, taken)


def _admissible(ctx: ApiContext, task: NewTask) -> None:
    """A new boefje push checked as the CLI's push is (:func:`check_push`): 400 for an unknown
    boefje or object, an object it does not consume or below its clearance; 409 (with Retry-After,
    as for a live hash) while Bytes shows the pair running; 503 when Katalogus or Octopoes cannot
    tell. A task already stored under this id (a runner handing one back) is the claim's to answer."""
    if ctx.tasks.get(task.id) is not None:
        return
    try:
        check_push(
            ctx.clients,
            TaskStore(ctx.engine),
            BytesRunStore(ctx.engine),
            ctx.settings,
            task.organisation,
            task.plugin_id,
            task.input_ooi,
            utcnow(),
        )
    except RunningInBytes as exc:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"not queued: {exc}", headers={"Retry-After": str(RETRY_AFTER)}
        ) from None
    except PushRefused as exc:
        raise _bad(f"not queued: {exc}") from None
    except (ServiceError, ValidationError) as exc:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, f"not queued: the push could not be checked: {exc}"
        ) from None


def _dispatched(ctx: ApiContext, item: Dispatchable, taken: HTTPException) -> Task:
    """Claim the row of a task delivered through Celery, then publish its message."""
    result = ctx.dispatch(item)
    if result.claimed == 0:
        return _refused(ctx, item.task, taken)
    if result.errors and not result.published:
        row = ctx.tasks.get(item.task.id)
        if row is None:  # certainly not sent: the claim was released
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"not queued: {result.errors[0]}")
    row = ctx.tasks.get(item.task.id)
    assert row is not None
    return Task.of(row)


def _queued(task: NewTask, now: datetime) -> Task:
    """The Task a claim at ``now`` made (the row as written, without reading it back)."""
    return Task(
        id=task.id,
        scheduler_id=task.scheduler_id,
        schedule_id=task.schedule_id,
        organisation=task.organisation,
        priority=task.priority,
        status=TaskStatus.QUEUED,
        type=task.type,
        hash=task.hash,
        data=task.data,
        created_at=now,
        modified_at=now,
    )


def _refused(ctx: ApiContext, task: NewTask, taken: HTTPException) -> Task:
    """A claim that won nothing: a runner handing back a task it popped but never started
    (boefjes' worker manager does so on shutdown) queues it again; any other task with this id
    is a 409 naming it, and otherwise the hash is live (409 with Retry-After)."""
    existing = ctx.tasks.get(task.id)
    if existing is None:
        raise taken
    if existing.status is TaskStatus.DISPATCHED and existing.hash == task.hash:
        return Task.of(ctx.tasks.move(existing.id, TaskStatus.QUEUED))
    raise HTTPException(status.HTTP_409_CONFLICT, f"a task with id {task.id} exists already ({existing.status.value})")
