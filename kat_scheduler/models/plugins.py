"""Katalogus plugins (boefjes, normalizers) and organisations."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

from kat_scheduler.models.limits import Identifier


class PluginType(StrEnum):
    BOEFJE = "boefje"
    NORMALIZER = "normalizer"
    BIT = "bit"


class RunOn(StrEnum):
    CREATE = "create"
    UPDATE = "update"


class Organisation(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: Identifier
    name: str


class _PluginBase(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: Identifier
    name: str | None = None
    version: str | None = None
    enabled: bool = False
    consumes: list[str] = Field(default_factory=list)
    produces: list[str] = Field(default_factory=list)
    description: str | None = None


class Boefje(_PluginBase):
    type: Literal["boefje"] = "boefje"
    scan_level: int = Field(1, ge=0, le=4)
    cron: str | None = None
    interval: int | None = Field(None, ge=0, description="Minutes between runs; overrides the grace period.")
    run_on: list[RunOn] | None = None
    oci_image: str | None = None
    oci_arguments: list[str] = Field(default_factory=list)
    deduplicate: bool = False
    #: Katalogus's rate limit (``1/second``, ``10/hour;100/day``): kept as given, parsed where it is
    #: enforced (:mod:`kat_scheduler.rules.rate_limits`), so a bad one never hides the plugin.
    rate_limit: str | None = None
    #: The group template the limit counts in (``shodan.io``, ``host:{input_ooi}``); default: the id.
    rate_limit_group: str | None = None

    @field_validator("rate_limit", "rate_limit_group", mode="before")
    @classmethod
    def _tolerant_text(cls, value: object) -> str | None:
        """Anything but a non-empty string (null, a number, a list) is no limit."""
        return value if isinstance(value, str) and value.strip() else None

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        # Imported here: the rules import these models (the rule is the rules' own, one home).
        from kat_scheduler.rules.timing import is_valid_cron

        if not is_valid_cron(value):
            raise ValueError(f"invalid cron expression {value!r} (it does not parse, or never comes)")
        return value


class Normalizer(_PluginBase):
    type: Literal["normalizer"] = "normalizer"


class Bit(_PluginBase):
    type: Literal["bit"] = "bit"


Plugin = Annotated[Boefje | Normalizer | Bit, Field(discriminator="type")]

PLUGIN_LIST: TypeAdapter[list[Boefje | Normalizer | Bit]] = TypeAdapter(list[Plugin])
PLUGIN: TypeAdapter[Boefje | Normalizer | Bit] = TypeAdapter(Plugin)
