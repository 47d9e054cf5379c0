"""The KAT the API's boefje pushes are checked against (Katalogus: the boefje; Octopoes: the object
and its clearance), as Rocky's "scan now" is: organisation ``aa`` with every catalogue boefje
enabled, the objects the API tests push at level 2, and one below every boefje's clearance."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import AnyHttpUrl

from kat_scheduler.settings import Settings
from kat_scheduler.sim import SimulatedKAT, WorldConfig
from kat_scheduler.sim.generator import GeneratedOrg, make_boefjes, make_normalizers
from kat_scheduler.sim.records import OrganisationRecord
from kat_scheduler.sim.world import World

ORG = "aa"
#: Hostnames the API tests push boefjes on, cleared for level 2.
CLEARED = ("Hostname|internet|mispo.es", "Hostname|internet|a.nl")
#: A hostname at level 0: below ``dns-records``' clearance (1).
BELOW_CLEARANCE = "Hostname|internet|level0.example"


def push_world() -> World:
    boefjes = make_boefjes(12, seed=11)
    org = GeneratedOrg(OrganisationRecord(ORG, "Push"), [], {b.id: True for b in boefjes}, {})
    world = World(
        WorldConfig(organisations=0, now=datetime(2026, 6, 1, 12, 0, tzinfo=UTC)),
        boefjes,
        make_normalizers(boefjes),
        [org],
    )
    for pk in CLEARED:
        world.add_ooi(ORG, "Hostname", pk, level=2)
    world.add_ooi(ORG, "Hostname", BELOW_CLEARANCE, level=0)
    return world


def with_kat(settings: Settings, kat: SimulatedKAT) -> Settings:
    """``settings`` with ``kat``'s Katalogus and Octopoes (the API checks pushes against them)."""
    urls = {"katalogus_api": AnyHttpUrl(kat.katalogus_url), "octopoes_api": AnyHttpUrl(kat.octopoes_url)}
    return settings.model_copy(update=urls)
