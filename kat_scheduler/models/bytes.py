"""Bytes' records: boefje runs (BoefjeMeta), raw files, normalizer runs."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from kat_scheduler.models.limits import Identifier, ObjectKey


class BoefjeRef(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: Identifier
    version: str | None = None


class BoefjeMeta(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: uuid.UUID
    started_at: AwareDatetime | None = None
    ended_at: AwareDatetime | None = None
    boefje: BoefjeRef
    input_ooi: ObjectKey | None = None
    arguments: dict[str, Any] = Field(default_factory=dict)
    organization: Identifier
    runnable_hash: str | None = None
    environment: dict[str, str] | None = Field(default_factory=dict)


class MimeType(BaseModel):
    value: str


class RawData(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: uuid.UUID
    boefje_meta: BoefjeMeta
    mime_types: list[MimeType] = Field(default_factory=list)
    secure_hash: str | None = None
    hash_retrieval_link: str | None = None

    @property
    def mime_type_values(self) -> list[str]:
        return [m.value for m in self.mime_types]

    @property
    def is_error(self) -> bool:
        """A raw file tagged ``error/…`` gets no normalizer."""
        return any(m.value.startswith("error/") for m in self.mime_types)


class NormalizerRef(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    version: str | None = None


class NormalizerMeta(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: uuid.UUID
    raw_data: RawData
    normalizer: NormalizerRef
    started_at: datetime
    ended_at: datetime
