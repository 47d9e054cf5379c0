"""The simulated Octopoes API (object graph), per KAT-API.md.

- ``GET /health``, ``GET /{org}/health``
- ``GET /{org}/objects?types=&scan_level=&scan_profile_type=&offset=&limit=&valid_time=`` →
  ``{"count", "items"}``; items in a stable order (by type name, then insertion order).
- ``GET /{org}/object?reference=`` → OOI or 404
- ``GET /object-clients?reference=&clients=a&clients=b`` → ``{org: OOI}`` for the given orgs
- ``POST /{org}/observations`` → 200, empty body; new objects emit ``scan_profile_mutations``
"""

from __future__ import annotations

from typing import Any

import pydantic

from kat_scheduler.models import OOI
from kat_scheduler.sim.http import (
    HTTPError,
    Request,
    Response,
    Router,
    from_validation_error,
    health_body,
    json_response,
    unprocessable,
)
from kat_scheduler.sim.records import SCAN_PROFILE_TYPES
from kat_scheduler.sim.world import UnknownOrganisation, World

#: Octopoes' default page size.
DEFAULT_LIMIT = 20


class _Observation(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow")

    method: str
    source: str
    source_method: str | None = None
    task_id: str | None = None
    valid_time: pydantic.AwareDatetime | None = None
    result: list[OOI]


def _require_org(world: World, org: str) -> None:
    if world.organisation(org) is None:
        raise HTTPError(404, f"Organisation {org} not found")


def build_router(world: World) -> Router:
    router = Router()

    @router.route("GET", "/health")
    def health(request: Request) -> Response:
        return json_response(health_body("octopoes"))

    @router.route("GET", "/object-clients")
    def object_clients(request: Request) -> Response:
        reference = request.query.required("reference")
        request.query.get_datetime("valid_time")
        found: dict[str, Any] = {}
        with world.lock:
            for client in request.query.get_list("clients") or []:
                try:
                    ooi = world.get_ooi(client, reference)
                except UnknownOrganisation:
                    continue
                if ooi is not None:
                    found[client] = ooi.to_json()
        return json_response(found)

    @router.route("GET", "/{org}/health")
    def org_health(request: Request) -> Response:
        _require_org(world, request.params["org"])
        return json_response(health_body("octopoes"))

    @router.route("GET", "/{org}/objects")
    def objects(request: Request) -> Response:
        org = request.params["org"]
        query = request.query
        types = query.get_list("types")
        levels = query.get_int_list("scan_level", ge=0, le=4)
        profile_types = query.get_list("scan_profile_type")
        for index, value in enumerate(profile_types or []):
            if value not in SCAN_PROFILE_TYPES:
                raise unprocessable(
                    ["query", "scan_profile_type", index],
                    "Input should be 'declared', 'inherited' or 'empty'",
                    value,
                    "enum",
                )
        offset = query.get_int("offset", 0, ge=0)
        limit = query.get_int("limit", DEFAULT_LIMIT, ge=0)
        query.get_datetime("valid_time")
        _require_org(world, org)
        with world.lock:
            selected = world.select_oois(org, types, levels, profile_types)
            items = [ooi.to_json() for ooi in selected[offset : offset + limit]]
            count = len(selected)
        return json_response({"count": count, "items": items})

    @router.route("GET", "/{org}/object")
    def get_object(request: Request) -> Response:
        org = request.params["org"]
        reference = request.query.required("reference")
        request.query.get_datetime("valid_time")
        _require_org(world, org)
        ooi = world.get_ooi(org, reference)
        if ooi is None:
            raise HTTPError(404, f"Object not found: {reference}")
        return json_response(ooi.to_json())

    @router.route("POST", "/{org}/observations")
    def observations(request: Request) -> Response:
        org = request.params["org"]
        try:
            observation = _Observation.model_validate(request.json())
        except pydantic.ValidationError as error:
            raise from_validation_error(error) from None
        _require_org(world, org)
        world.observe(
            org,
            observation.method,
            observation.source,
            observation.result,
            source_method=observation.source_method,
            task_id=observation.task_id,
        )
        return Response(200, b"", None)

    return router
