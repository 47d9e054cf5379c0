"""``GET /explain?organisation=&input_ooi=``: why an object is or is not scanned (our own route, beside
the mula-compatible ones).

The same answer as ``kat-scheduler explain --format json`` (:mod:`kat_scheduler.explain`), as a
list: every boefje consuming the object's type, with the rule that decides now. 400 for what
cannot be an organisation or an object key, 404 when the object or the organisation does not
exist, 502 when a KAT service cannot answer.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, status
from pydantic import BaseModel, Field

from kat_scheduler.api.context import ApiContext, context
from kat_scheduler.api.models import Problem
from kat_scheduler.clients import OrganisationNotFound, ServiceError
from kat_scheduler.explain import BadRequest, Decision, ObjectNotFound, Policy, Sources, explain_object
from kat_scheduler.storage.tables import utcnow

router = APIRouter(tags=["explain"])


class BoefjeExplanation(BaseModel):
    """One boefje on the object: the rule that decides now."""

    boefje_id: str
    decision: Decision = Field(description="What decides now.")
    until: str | None = Field(None, description="ISO 8601: when the decision ends (grace, cron, a run in Bytes).")
    band: int | None = Field(None, description="The band it would queue at (queue, stalled), or its live task's.")
    last_run: str | None = Field(None, description="ISO 8601: when the newest known run ended.")
    detail: str


@router.get(
    "/explain",
    response_model=list[BoefjeExplanation],
    summary="Why an object is or is not scanned: every boefje consuming its type, with the rule that decides now",
    responses={
        400: {"model": Problem, "description": "No organisation or object can be called so"},
        404: {"model": Problem, "description": "No such object, or no such organisation"},
        502: {"model": Problem, "description": "A KAT service did not answer"},
    },
)
def explain(
    ctx: Annotated[ApiContext, Depends(context)],
    organisation: Annotated[str, Query(min_length=1, description="Organisation id.")],
    input_ooi: Annotated[str, Query(min_length=1, description="The object's primary key.")],
) -> list[dict[str, Any]]:
    sources = Sources.on(ctx.engine, ctx.clients)
    try:
        answer = explain_object(sources, Policy.of(ctx.settings), organisation, input_ooi, now=utcnow())
    except BadRequest as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
    except ObjectNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    except OrganisationNotFound:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"organisation {organisation!r} is not known to Katalogus"
        ) from None
    except ServiceError as exc:
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, f"not explained: {exc}") from None
    return [e.as_json() for e in answer.explanations]
