"""Katalogus, the plugin registry: organisations, plugins and boefje settings (all under ``/v1``)."""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import TypeAdapter

from kat_scheduler.clients.base import HTTPService, segment
from kat_scheduler.clients.errors import NotFound, OrganisationNotFound
from kat_scheduler.models.plugins import (
    PLUGIN,
    PLUGIN_LIST,
    Bit,
    Boefje,
    Normalizer,
    Organisation,
    PluginType,
)

ORGANISATIONS: TypeAdapter[dict[str, Organisation]] = TypeAdapter(dict[str, Organisation])
SETTINGS: TypeAdapter[dict[str, str]] = TypeAdapter(dict[str, str])

AnyPlugin = Boefje | Normalizer | Bit


class KatalogusClient(HTTPService):
    """Katalogus' API. ``base_url`` is the service root; ``/v1`` is added here."""

    name = "katalogus"

    def organisations(self) -> dict[str, Organisation]:
        """All organisations, keyed by id."""
        return self._get("/v1/organisations", ORGANISATIONS)

    def plugins(
        self,
        org: str,
        *,
        plugin_type: PluginType | str | None = None,
        consumes: Iterable[str] | None = None,
        ids: Iterable[str] | None = None,
    ) -> list[AnyPlugin]:
        """``org``'s plugins with their enabled state for that org, in one request (no limit sent).

        ``None`` filters nothing; an empty ``consumes`` or ``ids`` matches nothing and sends no
        request. Raises :class:`OrganisationNotFound` when Katalogus does not know ``org``.
        """
        wanted_consumes = None if consumes is None else sorted(set(consumes))
        wanted_ids = None if ids is None else sorted(set(ids))
        if wanted_consumes == [] or wanted_ids == []:
            return []
        params = {
            "plugin_type": None if plugin_type is None else PluginType(plugin_type).value,
            "consumes": wanted_consumes,
            "ids": wanted_ids,
        }
        path = f"/v1/organisations/{segment(org)}/plugins"
        try:
            return self._get(path, PLUGIN_LIST, params=params)
        except NotFound as exc:
            raise OrganisationNotFound(
                self.name, exc.endpoint, f"organisation {org!r} not found", status_code=404
            ) from None

    def boefjes(self, org: str) -> list[Boefje]:
        """``org``'s boefjes (enabled or not: see ``Boefje.enabled``)."""
        return [p for p in self.plugins(org, plugin_type=PluginType.BOEFJE) if isinstance(p, Boefje)]

    def normalizers(self, org: str) -> list[Normalizer]:
        """``org``'s normalizers (enabled or not: see ``Normalizer.enabled``)."""
        return [p for p in self.plugins(org, plugin_type=PluginType.NORMALIZER) if isinstance(p, Normalizer)]

    def plugin(self, org: str, plugin_id: str) -> AnyPlugin | None:
        """One plugin as ``org`` sees it, or ``None`` when absent."""
        return self._lookup(f"/v1/organisations/{segment(org)}/plugins/{segment(plugin_id)}", PLUGIN)

    def boefje_settings(self, org: str, boefje_id: str) -> dict[str, str]:
        """``org``'s settings for ``boefje_id`` (environment for the run); ``{}`` when there are none."""
        path = f"/v1/organisations/{segment(org)}/{segment(boefje_id)}/settings"
        return self._lookup(path, SETTINGS) or {}
