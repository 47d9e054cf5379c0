"""Plain records the simulated world is made of, and how each renders as KAT's JSON.

Records are small slotted dataclasses so a world of 100,000 objects and as many boefje runs
stays compact; JSON is rendered on request. Type-specific OOI keys are derived from the
primary key (as Octopoes builds primary keys from natural keys), so generated objects store
no attribute dicts at all.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

#: The scan profile types of Octopoes.
DECLARED = "declared"
INHERITED = "inherited"
EMPTY = "empty"
SCAN_PROFILE_TYPES: tuple[str, ...] = (DECLARED, INHERITED, EMPTY)

#: The user id put on declared scan profiles of generated objects.
DECLARING_USER_ID = 1


@dataclass(frozen=True, slots=True)
class OrganisationRecord:
    """An organisation (Katalogus ``Organisation``)."""

    id: str
    name: str

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name}


@dataclass(slots=True)
class OOIRecord:
    """One object in an organisation's graph.

    ``level`` is the effective clearance: always 0 when ``scan_profile_type`` is ``empty``.
    ``attributes`` holds the type-specific keys of objects added from outside (observations,
    tests); ``None`` means "derive them from the primary key".
    """

    object_type: str
    primary_key: str
    scan_profile_type: str = EMPTY
    level: int = 0
    attributes: dict[str, Any] | None = None

    @property
    def scan_level(self) -> int:
        return 0 if self.scan_profile_type == EMPTY else self.level

    def scan_profile_json(self) -> dict[str, Any]:
        return {
            "scan_profile_type": self.scan_profile_type,
            "reference": self.primary_key,
            "level": self.scan_level,
            "user_id": DECLARING_USER_ID if self.scan_profile_type == DECLARED else None,
        }

    def to_json(self) -> dict[str, Any]:
        """The OOI exactly as Octopoes serves it."""
        body: dict[str, Any] = {
            "object_type": self.object_type,
            "primary_key": self.primary_key,
            "scan_profile": self.scan_profile_json(),
        }
        attributes = self.attributes if self.attributes is not None else derive_attributes(self)
        body.update(attributes)
        body["user_id"] = None
        return body

    def mutation_value(self) -> dict[str, Any]:
        """The ``value`` of a ``scan_profile_mutations`` event for this object."""
        return {
            "primary_key": self.primary_key,
            "object_type": self.object_type,
            "scan_profile": {
                "scan_profile_type": self.scan_profile_type,
                "reference": self.primary_key,
                "level": self.scan_level,
            },
        }


def _ip_type(address: str) -> str:
    return "IPAddressV6" if ":" in address else "IPAddressV4"


def derive_attributes(ooi: OOIRecord) -> dict[str, Any]:
    """The type-specific keys of a generated object, read back from its primary key."""
    parts = ooi.primary_key.split("|")
    kind = ooi.object_type
    try:
        if kind == "Network":
            return {"name": parts[1]}
        if kind == "Hostname":
            return {"network": f"Network|{parts[1]}", "name": parts[2], "registered_domain": None}
        if kind == "DNSZone":
            return {"hostname": f"Hostname|{parts[1]}|{parts[2]}", "parent": None}
        if kind in ("IPAddressV4", "IPAddressV6"):
            return {"network": f"Network|{parts[1]}", "address": parts[2], "netblock": None}
        if kind == "IPPort":
            network, address, protocol, port = parts[1], parts[2], parts[3], parts[4]
            return {
                "address": f"{_ip_type(address)}|{network}|{address}",
                "protocol": protocol,
                "port": int(port),
                "state": "open",
            }
        if kind == "Website":
            ip_service = "|".join(["IPService", *parts[1:6]])
            return {
                "ip_service": ip_service,
                "hostname": f"Hostname|{parts[6]}|{parts[7]}",
                "certificate": None,
            }
        if kind == "URL":
            return {"network": f"Network|{parts[1]}", "raw": "|".join(parts[2:]), "web_url": None}
    except (IndexError, ValueError):
        pass
    return {}


@dataclass(frozen=True, slots=True)
class BoefjeDef:
    """A boefje as the Katalogus describes it (the per-organisation ``enabled`` flag lives in the world)."""

    id: str
    name: str
    scan_level: int
    consumes: tuple[str, ...]
    description: str
    oci_image: str = "ghcr.io/minvws/openkat/generic:latest"
    oci_arguments: tuple[str, ...] = ()
    interval: int | None = None
    cron: str | None = None
    run_on: tuple[str, ...] | None = None
    produces: tuple[str, ...] = ()
    version: str | None = None
    deduplicate: bool = True
    #: Katalogus's ``rate_limit`` and ``rate_limit_group`` (only in the JSON when set).
    rate_limit: str | None = None
    rate_limit_group: str | None = None

    type: ClassVar[str] = "boefje"

    @property
    def mime_type(self) -> str:
        """The mime type every raw file of this boefje is tagged with."""
        return f"boefje/{self.id}"

    def to_json(self, enabled: bool) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "version": self.version,
            "type": "boefje",
            "enabled": enabled,
            "scan_level": self.scan_level,
            "consumes": list(self.consumes),
            "produces": list(self.produces),
            "cron": self.cron,
            "interval": self.interval,
            "run_on": list(self.run_on) if self.run_on is not None else None,
            "oci_image": self.oci_image,
            "oci_arguments": list(self.oci_arguments),
            "deduplicate": self.deduplicate,
            "description": self.description,
            **({} if self.rate_limit is None else {"rate_limit": self.rate_limit}),
            **({} if self.rate_limit_group is None else {"rate_limit_group": self.rate_limit_group}),
        }


@dataclass(frozen=True, slots=True)
class NormalizerDef:
    """A normalizer: ``consumes`` are mime types (``boefje/<id>``), ``produces`` OOI types."""

    id: str
    name: str
    consumes: tuple[str, ...]
    produces: tuple[str, ...]
    description: str
    version: str | None = None

    type: ClassVar[str] = "normalizer"

    def to_json(self, enabled: bool) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "version": self.version,
            "type": "normalizer",
            "enabled": enabled,
            "consumes": list(self.consumes),
            "produces": list(self.produces),
            "description": self.description,
        }


PluginDef = BoefjeDef | NormalizerDef


@dataclass(slots=True)
class BoefjeRun:
    """A boefje run as Bytes stores it (``BoefjeMeta``).

    Generated runs keep ``arguments`` as ``None``: their ``{"input": OOI}`` is rendered from the
    world when served. Runs posted by clients keep exactly what was posted.
    """

    id: uuid.UUID
    organization: str
    boefje_id: str
    input_ooi: str | None
    started_at: datetime | None
    ended_at: datetime | None
    boefje_version: str | None = None
    arguments: dict[str, Any] | None = None
    environment: dict[str, str] | None = field(default=None)
    runnable_hash: str | None = None
    extra: dict[str, Any] | None = None

    def to_json(self, arguments: dict[str, Any]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": str(self.id),
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "ended_at": self.ended_at.isoformat() if self.ended_at else None,
            "boefje": {"id": self.boefje_id, "version": self.boefje_version},
            "input_ooi": self.input_ooi,
            "arguments": arguments,
            "organization": self.organization,
            "runnable_hash": self.runnable_hash,
            "environment": self.environment if self.environment is not None else {},
        }
        if self.extra:
            for key, value in self.extra.items():
                body.setdefault(key, value)
        return body


@dataclass(frozen=True, slots=True)
class RawFile:
    """One raw file stored in Bytes."""

    id: uuid.UUID
    boefje_meta_id: uuid.UUID
    organization: str
    content: bytes
    mime_types: tuple[str, ...]
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Observation:
    """One ``POST /{org}/observations`` as received (the objects it added are in the graph)."""

    organization: str
    method: str
    source: str
    source_method: str | None
    task_id: str | None
    result: tuple[str, ...]
    created: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NormalizerRun:
    """A normalizer run as posted to Bytes (``NormalizerMeta``), kept as posted."""

    id: uuid.UUID
    normalizer_id: str
    raw_data_id: uuid.UUID | None
    body: dict[str, Any]
