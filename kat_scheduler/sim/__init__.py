"""A simulated KAT: Octopoes, Katalogus and Bytes over real HTTP, serving a generated world.

>>> from kat_scheduler.sim import WorldConfig, generate_world, SimulatedKAT
>>> world = generate_world(WorldConfig(seed=1, organisations=3, oois_per_org=100))
>>> with SimulatedKAT(world).start() as kat:
...     print(kat.octopoes_url, kat.katalogus_url, kat.bytes_url)

Modules: :mod:`~kat_scheduler.sim.world` (the world, what it exposes and how it changes),
:mod:`~kat_scheduler.sim.generator` and :mod:`~kat_scheduler.sim.catalogue` (its content),
:mod:`~kat_scheduler.sim.server` (the services), :mod:`~kat_scheduler.sim.octopoes`,
:mod:`~kat_scheduler.sim.katalogus`, :mod:`~kat_scheduler.sim.bytes` (their endpoints),
:mod:`~kat_scheduler.sim.http` (the HTTP plumbing), :mod:`~kat_scheduler.sim.events` (event
bodies and :class:`EventRecorder`), :mod:`~kat_scheduler.sim.cli` (``kat-scheduler sim serve``).
"""

from kat_scheduler.queues import RAW_FILE_RECEIVED, SCAN_PROFILE_MUTATIONS
from kat_scheduler.sim.events import EventRecorder, EventSink
from kat_scheduler.sim.records import (
    BoefjeDef,
    BoefjeRun,
    NormalizerDef,
    OOIRecord,
    OrganisationRecord,
    RawFile,
)
from kat_scheduler.sim.server import SimulatedKAT
from kat_scheduler.sim.world import ANY, Conflict, NotFound, UnknownOrganisation, World, WorldConfig, generate_world

__all__ = [
    "ANY",
    "RAW_FILE_RECEIVED",
    "SCAN_PROFILE_MUTATIONS",
    "BoefjeDef",
    "BoefjeRun",
    "Conflict",
    "EventRecorder",
    "EventSink",
    "NormalizerDef",
    "NotFound",
    "OOIRecord",
    "OrganisationRecord",
    "RawFile",
    "SimulatedKAT",
    "UnknownOrganisation",
    "World",
    "WorldConfig",
    "generate_world",
]
