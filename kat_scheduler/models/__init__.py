"""Pydantic models of everything that crosses the wire (KAT services, events, task payloads)."""

from kat_scheduler.models.bytes import BoefjeMeta, BoefjeRef, MimeType, NormalizerMeta, RawData
from kat_scheduler.models.events import RawFileReceived, ScanProfileMutation
from kat_scheduler.models.ooi import OOI, ListedObject, ListedProfile, ScanProfile, ScanProfileType
from kat_scheduler.models.plugins import Boefje, Normalizer, Organisation, Plugin, PluginType
from kat_scheduler.models.tasks import (
    LIVE_STATUSES,
    BoefjeTask,
    NormalizerTask,
    PluginRef,
    SchedulerId,
    TaskStatus,
)

__all__ = [
    "LIVE_STATUSES",
    "OOI",
    "Boefje",
    "BoefjeMeta",
    "BoefjeRef",
    "BoefjeTask",
    "ListedObject",
    "ListedProfile",
    "MimeType",
    "Normalizer",
    "NormalizerMeta",
    "NormalizerTask",
    "Organisation",
    "Plugin",
    "PluginRef",
    "PluginType",
    "RawData",
    "RawFileReceived",
    "ScanProfile",
    "ScanProfileMutation",
    "ScanProfileType",
    "SchedulerId",
    "TaskStatus",
]
