"""The simulated Katalogus can give some boefjes rate limits; a world without them is the world of before."""

from __future__ import annotations

from datetime import UTC, datetime

import requests

from kat_scheduler.models.plugins import PLUGIN_LIST, Boefje
from kat_scheduler.sim import SimulatedKAT, WorldConfig, generate_world
from kat_scheduler.sim.catalogue import RATE_LIMITS

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def test_a_world_with_rate_limits_serves_them_and_is_otherwise_the_same() -> None:
    config = WorldConfig(seed=5, organisations=2, oois_per_org=30, boefjes=17, now=NOW)
    plain = generate_world(config)
    limited = generate_world(WorldConfig(**{**config.__dict__, "rate_limits": True}))

    with SimulatedKAT(limited).start() as kat, requests.Session() as http:
        served = PLUGIN_LIST.validate_python(http.get(f"{kat.katalogus_url}/v1/organisations/org01/plugins").json())
    boefjes = {p.id: p for p in served if isinstance(p, Boefje)}
    for boefje_id, (text, group) in RATE_LIMITS.items():
        assert (boefjes[boefje_id].rate_limit, boefjes[boefje_id].rate_limit_group) == (text, group)
    assert all(b.rate_limit is None for b in boefjes.values() if b.id not in RATE_LIMITS)

    # nothing else moved: the same objects, plugin states and history, and the same JSON for the others
    for org in plain.organisation_ids:
        assert plain.oois(org).keys() == limited.oois(org).keys()
        assert all(plain.is_enabled(org, b.id) == limited.is_enabled(org, b.id) for b in plain.boefjes)
    unlimited_json = [b.to_json(True) for b in plain.boefjes]
    assert [b.to_json(True) for b in limited.boefjes if b.id not in RATE_LIMITS] == [
        j for j in unlimited_json if j["id"] not in RATE_LIMITS
    ]
    assert all("rate_limit" not in j for j in unlimited_json)
