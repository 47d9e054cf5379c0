"""The two events KAT publishes on RabbitMQ."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kat_scheduler.models.bytes import RawData
from kat_scheduler.models.limits import Identifier, ObjectKey
from kat_scheduler.models.ooi import ListedObject


class MutationOperation(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"


class ScanProfileMutation(BaseModel):
    """``scan_profile_mutations``: a scan profile was created, updated or deleted."""

    model_config = ConfigDict(extra="allow")

    operation: MutationOperation
    primary_key: ObjectKey
    client_id: Identifier
    #: The object as the rules read it (type, key, clearance); its other attributes are not read.
    value: ListedObject | None = None
    #: Not KAT's: the listener sets it when the broker delivered the event before (it went back on
    #: the queue), so it may be handled after later events of its object. Never written out.
    redelivered: bool = Field(default=False, exclude=True)

    @model_validator(mode="after")
    def _value_unless_delete(self) -> ScanProfileMutation:
        if self.operation != MutationOperation.DELETE and self.value is None:
            raise ValueError(f"a {self.operation.value} mutation needs a value")
        return self


class RawFileReceived(BaseModel):
    """``raw_file_received``: Bytes stored a raw file."""

    model_config = ConfigDict(extra="allow")

    event_id: str = "raw_file_received"
    created_at: datetime
    organization: Identifier
    raw_data: RawData
