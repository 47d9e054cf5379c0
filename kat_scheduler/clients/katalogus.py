"""Katalogus, the plugin registry: organisations, plugins and boefje settings (all under ``/v1``)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import TypeAdapter, ValidationError

from kat_scheduler.clients.base import HTTPService, segment, validation_reason
from kat_scheduler.clients.errors import NotFound, OrganisationNotFound
from kat_scheduler.models.plugins import (
    PLUGIN,
    Bit,
    Boefje,
    Normalizer,
    Organisation,
    PluginType,
)

logger = logging.getLogger(__name__)

ORGANISATIONS: TypeAdapter[dict[str, Organisation]] = TypeAdapter(dict[str, Organisation])
SETTINGS: TypeAdapter[dict[str, str]] = TypeAdapter(dict[str, str])
#: A plugin list as JSON objects; each is validated on its own, so one bad plugin is skipped alone.
RAW_PLUGIN_LIST: TypeAdapter[list[dict[str, Any]]] = TypeAdapter(list[dict[str, Any]])

AnyPlugin = Boefje | Normalizer | Bit
P = TypeVar("P", bound=AnyPlugin)


@dataclass(frozen=True)
class InvalidPlugin:
    """A plugin in Katalogus' answer that does not validate: skipped, with the reason."""

    plugin_id: str
    reason: str


class PluginList(list[P]):
    """The plugins of an answer that validated; :attr:`invalid` names those that did not."""

    def __init__(self, plugins: Iterable[P] = (), invalid: Iterable[InvalidPlugin] = ()) -> None:
        super().__init__(plugins)
        self.invalid = list(invalid)


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
    ) -> PluginList[AnyPlugin]:
        """``org``'s plugins with their enabled state for that org, in one request (no limit sent).

        ``None`` filters nothing; an empty ``consumes`` or ``ids`` matches nothing and sends no
        request. Raises :class:`OrganisationNotFound` when Katalogus does not know ``org``. A
        plugin whose JSON does not validate (an invalid ``cron``, say) is left out and logged,
        and listed in the result's ``invalid``: the organisation's other plugins still count.
        """
        wanted_consumes = None if consumes is None else sorted(set(consumes))
        wanted_ids = None if ids is None else sorted(set(ids))
        if wanted_consumes == [] or wanted_ids == []:
            return PluginList()
        params = {
            "plugin_type": None if plugin_type is None else PluginType(plugin_type).value,
            "consumes": wanted_consumes,
            "ids": wanted_ids,
        }
        path = f"/v1/organisations/{segment(org)}/plugins"
        try:
            raw = self._get(path, RAW_PLUGIN_LIST, params=params)
        except NotFound as exc:
            raise OrganisationNotFound(
                self.name, exc.endpoint, f"organisation {org!r} not found", status_code=404
            ) from None
        plugins: PluginList[AnyPlugin] = PluginList()
        for item in raw:
            try:
                plugins.append(PLUGIN.validate_python(item))
            except ValidationError as exc:
                invalid = InvalidPlugin(str(item.get("id", "?")), validation_reason(exc))
                plugins.invalid.append(invalid)
                logger.warning(
                    "katalogus: organisation %s: plugin %r skipped, it does not validate: %s",
                    org,
                    invalid.plugin_id,
                    invalid.reason,
                )
        return plugins

    def boefjes(self, org: str) -> PluginList[Boefje]:
        """``org``'s boefjes (enabled or not: see ``Boefje.enabled``); ``invalid`` as in :meth:`plugins`."""
        found = self.plugins(org, plugin_type=PluginType.BOEFJE)
        return PluginList((p for p in found if isinstance(p, Boefje)), found.invalid)

    def normalizers(self, org: str) -> PluginList[Normalizer]:
        """``org``'s normalizers (enabled or not: see ``Normalizer.enabled``); ``invalid`` as in :meth:`plugins`."""
        found = self.plugins(org, plugin_type=PluginType.NORMALIZER)
        return PluginList((p for p in found if isinstance(p, Normalizer)), found.invalid)

    def plugin(self, org: str, plugin_id: str) -> AnyPlugin | None:
        """One plugin as ``org`` sees it, or ``None`` when absent."""
        return self._lookup(f"/v1/organisations/{segment(org)}/plugins/{segment(plugin_id)}", PLUGIN)

    def boefje_settings(self, org: str, boefje_id: str) -> dict[str, str]:
        """``org``'s settings for ``boefje_id`` (environment for the run); ``{}`` when there are none."""
        path = f"/v1/organisations/{segment(org)}/{segment(boefje_id)}/settings"
        return self._lookup(path, SETTINGS) or {}
