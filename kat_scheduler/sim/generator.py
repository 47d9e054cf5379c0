"""Deterministic generation of a world's content from a seed.

Every organisation draws from its own ``random.Random`` seeded with a string derived from the
world seed (string seeds are hashed with SHA-512, so the result does not depend on
``PYTHONHASHSEED``). Objects, plugin state and history use separate generators, so changing
``history_fraction`` leaves the objects alone and adding organisations leaves the first ones
alone.
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from croniter import croniter

from kat_scheduler.sim import catalogue
from kat_scheduler.sim.records import (
    DECLARED,
    EMPTY,
    INHERITED,
    BoefjeDef,
    BoefjeRun,
    NormalizerDef,
    OOIRecord,
    OrganisationRecord,
)

NETWORK = "internet"
NETWORK_PK = f"Network|{NETWORK}"
#: A domain every other organisation holds too, so ``/object-clients`` has something to find.
SHARED_DOMAIN = "gedeeld-platform.nl"
#: The chance that an organisation holds each domain of the shared pool (``WorldConfig.shared_domains``).
SHARED_POOL_SHARE = 0.6

_LEVEL_WEIGHTS = (10, 25, 35, 20, 10)
_MIN_AGE_S = 5 * 60.0
_MAX_AGE_S = 30 * 86400.0
#: Shares of the pairs with history whose newest run has a start and no end: recent (the boefje is
#: still running under some runner) and stale (the run died; started a quarter of an hour to three hours ago).
RUNNING_SHARE = 0.03
STALLED_SHARE = 0.04
#: Share of the pairs of a cron boefje with history whose newest run ended inside the default grace
#: period (a day) but before the last cron time: due by cron, not by grace.
CRON_CASE_SHARE = 0.5
#: Seconds before ``now`` a recent unfinished run started: well inside any stall age.
_RUNNING_AGE_S = (10.0, 60.0)
_STALLED_AGE_S = (900.0, 3 * 3600.0)


@dataclass
class GeneratedOrg:
    """Everything generated for one organisation."""

    organisation: OrganisationRecord
    oois: list[OOIRecord]
    enabled: dict[str, bool]
    settings: dict[str, dict[str, str]]
    runs: list[BoefjeRun] = field(default_factory=list)


def make_uuid(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def make_boefjes(count: int, seed: int) -> list[BoefjeDef]:
    """The first ``count`` catalogue boefjes, then synthesised ones."""
    boefjes = list(catalogue.BOEFJES[:count])
    rng = random.Random(f"{seed}:synthetic-boefjes")
    for index in range(len(boefjes) + 1, count + 1):
        boefjes.append(catalogue.synthetic_boefje(index, rng))
    return boefjes


def with_rate_limits(boefjes: Sequence[BoefjeDef]) -> list[BoefjeDef]:
    """The boefjes, those of ``catalogue.RATE_LIMITS`` with their Katalogus rate limits."""
    limited = []
    for boefje in boefjes:
        if boefje.id in catalogue.RATE_LIMITS:
            text, group = catalogue.RATE_LIMITS[boefje.id]
            boefje = replace(boefje, rate_limit=text, rate_limit_group=group)
        limited.append(boefje)
    return limited


def make_normalizers(boefjes: Sequence[BoefjeDef]) -> list[NormalizerDef]:
    return [catalogue.normalizer_for(boefje) for boefje in boefjes]


def make_organisation(index: int) -> OrganisationRecord:
    """Organisation number ``index`` (from 0): ids ``org01``, ``org02``, ..."""
    names = catalogue.ORGANISATION_NAMES
    name = names[index % len(names)]
    if index >= len(names):
        name = f"{name} {index // len(names) + 1}"
    return OrganisationRecord(id=f"org{index + 1:02d}", name=name)


class _Graph:
    """Collects one organisation's objects, unique by primary key, up to a limit."""

    def __init__(self, rng: random.Random, limit: int) -> None:
        self.rng = rng
        self.limit = limit
        self.oois: dict[str, OOIRecord] = {}
        self.ipv4_used: set[int] = set()
        self.ipv4_ports: dict[str, list[tuple[str, int]]] = {}
        self.domains: set[str] = set()

    @property
    def full(self) -> bool:
        return len(self.oois) >= self.limit

    def add(self, object_type: str, primary_key: str, profile: tuple[str, int]) -> OOIRecord | None:
        if self.full or primary_key in self.oois:
            return None
        profile_type, level = profile
        record = OOIRecord(object_type, primary_key, profile_type, level if profile_type != EMPTY else 0)
        self.oois[primary_key] = record
        return record

    # -- scan profiles ---------------------------------------------------------------------

    def root_level(self) -> int:
        return self.rng.choices(range(5), weights=_LEVEL_WEIGHTS)[0]

    def child_profile(self, parent_level: int) -> tuple[str, int]:
        """Mostly inherited from the parent; sometimes empty, sometimes declared on its own."""
        draw = self.rng.random()
        if draw < 0.12:
            return EMPTY, 0
        if draw < 0.20:
            return DECLARED, self.root_level()
        if parent_level == 0:
            return EMPTY, 0
        return INHERITED, parent_level

    # -- names and addresses ---------------------------------------------------------------

    def new_domain(self) -> str:
        rng = self.rng
        while True:
            word = rng.choice(catalogue.DOMAIN_WORDS)
            suffix = rng.choice(catalogue.DOMAIN_SUFFIXES)
            number = rng.randint(2, 99) if rng.random() < 0.5 else ""
            domain = f"{word}{suffix}{number}.{rng.choice(catalogue.TLDS)}"
            if domain not in self.domains:
                self.domains.add(domain)
                return domain

    def new_ipv4(self) -> str:
        """An unused address in 198.18.0.0/15 (reserved for benchmarks) or the documentation nets."""
        rng = self.rng
        while True:
            if rng.random() < 0.9:
                value = (198 << 24) | (18 << 16) | rng.getrandbits(17)
            else:
                prefix = rng.choice(((192, 0, 2), (198, 51, 100), (203, 0, 113)))
                value = (prefix[0] << 24) | (prefix[1] << 16) | (prefix[2] << 8) | rng.randint(1, 254)
            if value & 0xFF in (0, 255) or value in self.ipv4_used:
                continue
            self.ipv4_used.add(value)
            return ".".join(str((value >> shift) & 0xFF) for shift in (24, 16, 8, 0))

    def new_ipv6(self) -> str:
        rng = self.rng
        return f"2001:db8:{rng.getrandbits(16):x}:{rng.getrandbits(16):x}::{rng.getrandbits(16) or 1:x}"

    def open_ports(self) -> list[tuple[str, int]]:
        count = self.rng.choice((1, 1, 2, 2, 3))
        ports: list[tuple[str, int]] = []
        for pair in self.rng.choices(catalogue.PORTS, weights=catalogue.PORT_WEIGHTS, k=count):
            if pair not in ports:
                ports.append(pair)
        return ports

    # -- building the graph ----------------------------------------------------------------

    def add_domain(self, domain: str) -> None:
        rng = self.rng
        level = self.root_level()
        root: tuple[str, int] = (DECLARED, level) if rng.random() < 0.85 or level == 0 else (INHERITED, level)
        self.add("DNSZone", f"DNSZone|{NETWORK}|{domain}", root)
        hostnames = [(domain, root[1] if root[0] != EMPTY else 0)]
        self.add("Hostname", f"Hostname|{NETWORK}|{domain}", root)
        for sub in rng.sample(catalogue.SUBDOMAINS, rng.randint(0, 4)):
            profile = self.child_profile(level)
            if self.add("Hostname", f"Hostname|{NETWORK}|{sub}.{domain}", profile):
                hostnames.append((f"{sub}.{domain}", profile[1]))
        for host, host_level in hostnames:
            if self.full:
                return
            if rng.random() < 0.85:
                self.add_addresses(host, host_level)

    def add_addresses(self, host: str, host_level: int) -> None:
        rng = self.rng
        if self.ipv4_ports and rng.random() < 0.25:
            address = rng.choice(list(self.ipv4_ports))  # shared hosting: a known address
            self.add_websites(host, host_level, address, self.ipv4_ports[address])
        else:
            self.add_address(host, host_level, self.new_ipv4(), "IPAddressV4")
        if rng.random() < 0.35:
            self.add_address(host, host_level, self.new_ipv6(), "IPAddressV6")

    def add_address(self, host: str, host_level: int, address: str, object_type: str) -> None:
        profile = self.child_profile(host_level)
        if not self.add(object_type, f"{object_type}|{NETWORK}|{address}", profile):
            return
        ports = self.open_ports()
        if object_type == "IPAddressV4":
            self.ipv4_ports[address] = ports
        for protocol, port in ports:
            self.add("IPPort", f"IPPort|{NETWORK}|{address}|{protocol}|{port}", self.child_profile(profile[1]))
        self.add_websites(host, host_level, address, ports)

    def add_websites(self, host: str, host_level: int, address: str, ports: list[tuple[str, int]]) -> None:
        for protocol, port in ports:
            if protocol != "tcp" or port not in (443, 80, 8080):
                continue
            scheme = "https" if port == 443 else "http"
            profile = self.child_profile(host_level)
            website = f"Website|{NETWORK}|{address}|tcp|{port}|{scheme}|{NETWORK}|{host}"
            if not self.add("Website", website, profile):
                continue
            netloc = host if port in (80, 443) else f"{host}:{port}"
            self.add("URL", f"URL|{NETWORK}|{scheme}://{netloc}/", self.child_profile(profile[1]))


def shared_domains(seed: int, count: int) -> list[str]:
    """A pool of ``count`` domains that several organisations hold (none when ``count`` is 0)."""
    if count <= 0:
        return []
    pool = _Graph(random.Random(f"{seed}:shared-domains"), 0)
    pool.domains.add(SHARED_DOMAIN)
    return [pool.new_domain() for _ in range(count)]


def held_shared_domains(seed: int, org_index: int, pool: Sequence[str]) -> list[str]:
    """Which domains of the shared ``pool`` organisation ``org_index`` holds (each with chance
    :data:`SHARED_POOL_SHARE`, drawn from a generator of its own)."""
    rng = random.Random(f"{seed}:shares:{org_index}")
    return [domain for domain in pool if rng.random() < SHARED_POOL_SHARE]


def generate_oois(seed: int, org_index: int, count: int, shared: Sequence[str] = ()) -> list[OOIRecord]:
    """Exactly ``count`` objects (fewer only if ``count`` is 0) for one organisation.

    ``shared``: domains of the shared pool this organisation holds (:func:`held_shared_domains`),
    each with its zone and hostname under the same primary keys as in every other organisation
    that holds it, at this organisation's own (drawn) level. Without it the objects are those of
    worlds generated before the pool existed.
    """
    graph = _Graph(random.Random(f"{seed}:oois:{org_index}"), count)
    graph.add("Network", NETWORK_PK, (DECLARED, graph.root_level()))
    if org_index % 2 == 0:
        graph.domains.add(SHARED_DOMAIN)
        graph.add_domain(SHARED_DOMAIN)
    for domain in shared:
        if domain not in graph.domains:
            graph.domains.add(domain)
            graph.add_domain(domain)
    while not graph.full:
        graph.add_domain(graph.new_domain())
    return list(graph.oois.values())


def generate_plugin_state(
    seed: int,
    org_index: int,
    boefjes: Sequence[BoefjeDef],
    normalizers: Sequence[NormalizerDef],
    boefje_enabled_fraction: float,
    normalizer_enabled_fraction: float,
) -> tuple[dict[str, bool], dict[str, dict[str, str]]]:
    """Which plugins an organisation enabled, and its boefje settings."""
    rng = random.Random(f"{seed}:plugins:{org_index}")
    enabled: dict[str, bool] = {}
    for boefje in boefjes:
        enabled[boefje.id] = rng.random() < boefje_enabled_fraction
    for normalizer in normalizers:
        enabled[normalizer.id] = rng.random() < normalizer_enabled_fraction
    settings = {boefje.id: catalogue.boefje_settings(boefje.id, rng) for boefje in boefjes}
    return enabled, settings


def generate_history(
    seed: int,
    org_index: int,
    organisation: str,
    oois: Sequence[OOIRecord],
    boefjes: Sequence[BoefjeDef],
    fraction: float,
    now: datetime,
) -> list[BoefjeRun]:
    """Past runs for about ``fraction`` of the (boefje, object) pairs the boefje consumes.

    Each chosen pair gets one to three runs, started between five minutes and thirty days
    before ``now`` (log-uniform, so recent runs are common). Besides, of the chosen pairs:

    * of a cron boefje, :data:`CRON_CASE_SHARE` get a newest run that ended within a day before
      ``now`` but before the last cron time (when that is within a day): due by cron, not grace;
    * :data:`RUNNING_SHARE` get a run that started seconds before ``now`` and has no end (running);
    * :data:`STALLED_SHARE` get one that started a quarter of an hour to three hours before
      ``now`` and never ended (it died; mostly the pair's newest run, sometimes not).

    These draw from generators of their own, so the other runs are those of worlds generated
    before these cases existed. A boefje with empty ``consumes`` gets a few runs without an input
    object. Returned sorted by ``started_at``.
    """
    if fraction <= 0:
        return []
    rng = random.Random(f"{seed}:history:{org_index}")
    unfinished = random.Random(f"{seed}:unfinished:{org_index}")
    cron_cases = random.Random(f"{seed}:cron:{org_index}")
    last_cron: dict[str, datetime] = {
        b.id: croniter(b.cron, now).get_prev(datetime) for b in boefjes if b.cron and b.consumes
    }
    consumers: dict[str, list[BoefjeDef]] = {}
    for boefje in boefjes:
        for object_type in boefje.consumes:
            consumers.setdefault(object_type, []).append(boefje)
    low, high = math.log(_MIN_AGE_S), math.log(_MAX_AGE_S)
    runs: list[BoefjeRun] = []

    def add_runs(boefje: BoefjeDef, input_ooi: str | None) -> None:
        count = rng.choices((1, 2, 3), weights=(60, 25, 15))[0]
        youngest = _MAX_AGE_S
        for _ in range(count):
            age = math.exp(rng.uniform(low, high))
            youngest = min(youngest, age)
            started = now - timedelta(seconds=age)
            ended = min(started + timedelta(seconds=rng.uniform(0.5, 90.0)), now)
            runs.append(BoefjeRun(make_uuid(rng), organisation, boefje.id, input_ooi, started, ended))
        if boefje.id in last_cron and cron_cases.random() < CRON_CASE_SHARE:
            # Ended within a day before now, and before the last cron time: the newest run.
            earliest = max(now - timedelta(days=1), last_cron[boefje.id] - timedelta(hours=1))
            ended = earliest + (last_cron[boefje.id] - earliest) * cron_cases.uniform(0.0, 0.99)
            started = ended - timedelta(seconds=30)
            if earliest < last_cron[boefje.id] and (now - started).total_seconds() < youngest:
                runs.append(BoefjeRun(make_uuid(cron_cases), organisation, boefje.id, input_ooi, started, ended))
                youngest = (now - started).total_seconds()
        draw = unfinished.random()
        if input_ooi is None or draw >= RUNNING_SHARE + STALLED_SHARE:
            return
        low_age, high_age = _RUNNING_AGE_S if draw < RUNNING_SHARE else _STALLED_AGE_S
        # Four in five dead runs are the pair's newest; the others may be older than an ended run.
        if draw >= RUNNING_SHARE and youngest > low_age and unfinished.random() < 0.8:
            high_age = min(high_age, youngest)
        started = now - timedelta(seconds=unfinished.uniform(low_age, high_age))
        runs.append(BoefjeRun(make_uuid(unfinished), organisation, boefje.id, input_ooi, started, None))

    for ooi in oois:
        for boefje in consumers.get(ooi.object_type, ()):
            if rng.random() < fraction:
                add_runs(boefje, ooi.primary_key)
    for boefje in boefjes:
        if not boefje.consumes:
            add_runs(boefje, None)
    runs.sort(key=lambda run: run.started_at or now)
    return runs
