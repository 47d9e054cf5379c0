"""Octopoes objects (OOIs) and their scan profiles."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from kat_scheduler.models.limits import ObjectKey


class ScanProfileType(StrEnum):
    DECLARED = "declared"
    INHERITED = "inherited"
    EMPTY = "empty"


class ScanProfile(BaseModel):
    model_config = ConfigDict(extra="allow")

    scan_profile_type: ScanProfileType = ScanProfileType.EMPTY
    reference: ObjectKey
    level: int = Field(0, ge=0, le=4)
    user_id: int | None = None


class OOI(BaseModel):
    """An object in the graph. Type-specific keys vary and are kept as extras."""

    model_config = ConfigDict(extra="allow")

    object_type: str
    primary_key: ObjectKey
    scan_profile: ScanProfile | None = None

    @property
    def scan_level(self) -> int:
        """The clearance level; an object with no or an empty profile has level 0."""
        profile = self.scan_profile
        if profile is None or profile.scan_profile_type == ScanProfileType.EMPTY:
            return 0
        return profile.level
