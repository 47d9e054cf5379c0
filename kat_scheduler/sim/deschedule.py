"""The simulated world's boefje that deschedules: it will not look at some of its objects again.

KAT's boefjes answer ``[({"openkat/deschedule"}, "why")]`` when their input is nothing for them
(Shodan's InternetDB boefje for a private address, testssl for a service without TLS). This
boefje, ``internetdb``, consumes IP addresses and deschedules a quarter of them, chosen by a hash
of the object's primary key, so every run, world and test agrees on which
(:func:`deschedules`). Its raw file for those is tagged ``openkat/deschedule`` (and, as every raw
file, ``boefje/internetdb``, so its normalizer runs and finds nothing).

A world has it only when asked (``WorldConfig(deschedule_boefje=True)``): it comes after the
other boefjes, enabled with its normalizer in every organisation, with no history and no draws
of the generators' random numbers, so every other boefje's objects, states, runs and counts
are those of the same world without it.
"""

from __future__ import annotations

import hashlib

from kat_scheduler.sim.catalogue import IP_TYPES, normalizer_for
from kat_scheduler.sim.records import BoefjeDef, NormalizerDef

#: The mime type by which KAT's boefjes ask not to be run on their input again.
DESCHEDULE_MIME_TYPE = "openkat/deschedule"

DESCHEDULE_BOEFJE = BoefjeDef(
    id="internetdb",
    name="Shodan InternetDB",
    scan_level=1,
    consumes=IP_TYPES,
    oci_arguments=("kat_shodan_internetdb.main",),
    description="Look an address up in Shodan's InternetDB; deschedules addresses it will not forward.",
)
DESCHEDULE_NORMALIZER: NormalizerDef = normalizer_for(DESCHEDULE_BOEFJE)


def deschedules(boefje_id: str, primary_key: str | None) -> bool:
    """Whether a run of ``boefje_id`` on ``primary_key`` deschedules the pair (a quarter of the objects)."""
    if boefje_id != DESCHEDULE_BOEFJE.id or not primary_key:
        return False
    return hashlib.sha256(f"deschedule:{primary_key}".encode()).digest()[0] % 4 == 0


def reason(primary_key: str) -> str:
    """What the boefje's deschedule raw file says."""
    return f"{primary_key} is not forwarded to InternetDB: descheduled"
