"""``GET /schedulers`` and ``GET /schedulers/{id}``: one scheduler per kind of task."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, status

from kat_scheduler.api.context import ApiContext, context
from kat_scheduler.api.models import ITEM_TYPES, Problem, Scheduler
from kat_scheduler.models.tasks import SchedulerId

router = APIRouter(tags=["schedulers"])


def known_scheduler(scheduler_id: str) -> SchedulerId:
    """The scheduler named in the path; 404 for one that does not exist."""
    try:
        return SchedulerId(scheduler_id)
    except ValueError:
        known = ", ".join(s.value for s in SchedulerId)
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"scheduler not found: {scheduler_id!r} (schedulers: {known})"
        ) from None


def describe(ctx: ApiContext, scheduler_id: SchedulerId) -> Scheduler:
    return Scheduler(
        id=scheduler_id,
        type=scheduler_id.value,
        item_type=ITEM_TYPES[scheduler_id],
        qsize=ctx.tasks.queued_count(scheduler_id),
        last_activity=ctx.tasks.last_activity(scheduler_id),
    )


@router.get("/schedulers", response_model=list[Scheduler], summary="Every scheduler with its queue size")
def list_schedulers(ctx: Annotated[ApiContext, Depends(context)]) -> list[Scheduler]:
    return [describe(ctx, scheduler_id) for scheduler_id in SchedulerId]


@router.get(
    "/schedulers/{scheduler_id}",
    response_model=Scheduler,
    summary="One scheduler with its queue size",
    responses={404: {"model": Problem, "description": "No such scheduler"}},
)
def get_scheduler(scheduler_id: str, ctx: Annotated[ApiContext, Depends(context)]) -> Scheduler:
    return describe(ctx, known_scheduler(scheduler_id))
