"""The simulated Katalogus API (plugin registry), per KAT-API.md.

- ``GET /health``
- ``GET /v1/organisations`` → ``{id: {"id", "name"}}``; ``GET /v1/organisations/{org}``
- ``GET /v1/organisations/{org}/plugins?plugin_type=&consumes=&produces=&ids=&state=&q=&offset=&limit=``
  (``consumes``/``produces``/``ids`` repeatable; ``consumes`` keeps plugins consuming any of them)
- ``GET /v1/organisations/{org}/plugins/{plugin_id}`` → plugin or 404
- ``PATCH /v1/organisations/{org}/plugins/{plugin_id}`` body ``{"enabled": bool}`` → 204
- ``GET /v1/organisations/{org}/{plugin_id}/settings`` → ``{"KEY": "value"}``
"""

from __future__ import annotations

from typing import Any

from kat_scheduler.sim.http import (
    HTTPError,
    Request,
    Response,
    Router,
    health_body,
    json_response,
    unprocessable,
)
from kat_scheduler.sim.records import PluginDef
from kat_scheduler.sim.world import NotFound, World

PLUGIN_TYPES = ("boefje", "normalizer", "bit")


def _require_org(world: World, org: str) -> None:
    if world.organisation(org) is None:
        raise HTTPError(404, f"Unknown organisation: {org}")


def _matches_text(plugin: PluginDef, text: str) -> bool:
    return text in plugin.id or text in plugin.name or text in plugin.description


def build_router(world: World) -> Router:
    router = Router()

    @router.route("GET", "/health")
    def health(request: Request) -> Response:
        return json_response(health_body("katalogus"))

    @router.route("GET", "/v1/organisations")
    def organisations(request: Request) -> Response:
        return json_response({org.id: world.organisation_json(org.id) for org in world.organisations})

    @router.route("GET", "/v1/organisations/{org}")
    def organisation(request: Request) -> Response:
        record = world.organisation(request.params["org"])
        if record is None:
            raise HTTPError(404, f"Unknown organisation: {request.params['org']}")
        return json_response(world.organisation_json(record.id))

    @router.route("GET", "/v1/organisations/{org}/plugins")
    def plugins(request: Request) -> Response:
        org = request.params["org"]
        query = request.query
        plugin_type = query.get("plugin_type")
        if plugin_type is not None and plugin_type not in PLUGIN_TYPES:
            raise unprocessable(
                ["query", "plugin_type"], "Input should be 'boefje', 'normalizer' or 'bit'", plugin_type, "enum"
            )
        consumes = set(query.get_list("consumes") or ())
        produces = set(query.get_list("produces") or ())
        ids = query.get_list("ids")
        state = query.get_optional_bool("state")
        text = query.get("q")
        offset = query.get_int("offset", 0, ge=0)
        limit = query.get_int("limit", 2**31, ge=0)
        _require_org(world, org)
        enabled = world.enabled_plugins(org)
        wanted_ids = set(ids) if ids is not None else None
        selected: list[dict[str, Any]] = []
        for plugin in world.plugins:
            is_enabled = enabled.get(plugin.id, False)
            if (
                (plugin_type is not None and plugin.type != plugin_type)
                or (wanted_ids is not None and plugin.id not in wanted_ids)
                or (consumes and consumes.isdisjoint(plugin.consumes))
                or (produces and produces.isdisjoint(plugin.produces))
                or (state is not None and is_enabled is not state)
                or (text is not None and not _matches_text(plugin, text))
            ):
                continue
            selected.append(world.plugin_json(org, plugin, is_enabled))
        return json_response(selected[offset : offset + limit])

    @router.route("GET", "/v1/organisations/{org}/plugins/{plugin_id}")
    def plugin(request: Request) -> Response:
        org, plugin_id = request.params["org"], request.params["plugin_id"]
        _require_org(world, org)
        found = world.plugin(plugin_id)
        if found is None:
            raise HTTPError(404, f"Unknown plugin: {plugin_id}")
        return json_response(world.plugin_json(org, found, world.is_enabled(org, plugin_id)))

    @router.route("PATCH", "/v1/organisations/{org}/plugins/{plugin_id}")
    def update_plugin(request: Request) -> Response:
        org, plugin_id = request.params["org"], request.params["plugin_id"]
        body = request.json()
        if not isinstance(body, dict) or not isinstance(body.get("enabled"), bool):
            value = body.get("enabled") if isinstance(body, dict) else body
            raise unprocessable(["body", "enabled"], "Input should be a valid boolean", value, "bool_type")
        _require_org(world, org)
        try:
            world.set_plugin_enabled(org, plugin_id, body["enabled"])
        except NotFound:
            raise HTTPError(404, f"Unknown plugin: {plugin_id}") from None
        return Response(204, b"", None)

    @router.route("GET", "/v1/organisations/{org}/{plugin_id}/settings")
    def settings(request: Request) -> Response:
        org, plugin_id = request.params["org"], request.params["plugin_id"]
        _require_org(world, org)
        if world.plugin(plugin_id) is None:
            raise HTTPError(404, f"Unknown plugin: {plugin_id}")
        return json_response(world.boefje_settings(org, plugin_id))

    return router
