"""Octopoes objects (OOIs) and their scan profiles.

:class:`ListedObject` is what the scheduler's rules decide on: an object's type, key and
clearance. A listing of many objects (the planning tick's pages, due schedules' look-ups) reads
only that and leaves the type-specific attributes unread. :class:`OOI` is the whole object, with
those attributes kept as extras, where an object is passed on (events, deduplication, a
normalizer's output).
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from kat_scheduler.models.limits import ObjectKey


class ScanProfileType(StrEnum):
    DECLARED = "declared"
    INHERITED = "inherited"
    EMPTY = "empty"


class ListedProfile(BaseModel):
    """The part of a scan profile the rules read: its type and level."""

    model_config = ConfigDict(extra="ignore")

    scan_profile_type: ScanProfileType = ScanProfileType.EMPTY
    level: int = Field(0, ge=0, le=4)


class ScanProfile(ListedProfile):
    model_config = ConfigDict(extra="allow")

    reference: ObjectKey
    user_id: int | None = None


class ListedObject(BaseModel):
    """An object as the rules see it: type, key and clearance; other attributes are not read."""

    model_config = ConfigDict(extra="ignore")

    object_type: str
    primary_key: ObjectKey
    scan_profile: ListedProfile | None = None

    @property
    def scan_level(self) -> int:
        """The clearance level; an object with no or an empty profile has level 0."""
        profile = self.scan_profile
        if profile is None or profile.scan_profile_type == ScanProfileType.EMPTY:
            return 0
        return profile.level


class OOI(ListedObject):
    """An object in the graph. Type-specific keys vary and are kept as extras."""

    model_config = ConfigDict(extra="allow")

    scan_profile: ScanProfile | None = None
