"""Objects several organisations hold (the shared pool), and Katalogus' per-organisation ``deduplicate``."""

from __future__ import annotations

from dataclasses import replace

import pytest
import requests

from kat_scheduler.models.plugins import PLUGIN, Boefje
from kat_scheduler.sim import SimulatedKAT, World, WorldConfig, generate_world

from .conftest import SMALL


def holders(world: World) -> dict[str, dict[str, int]]:
    """Per hostname key, the organisations holding it and the level each gives it."""
    found: dict[str, dict[str, int]] = {}
    for org in world.organisation_ids:
        for ooi in world.oois(org).values():
            if ooi.object_type == "Hostname":
                found.setdefault(ooi.primary_key, {})[org] = ooi.scan_level
    return found


def test_a_shared_pool_puts_the_same_keys_in_several_organisations_at_their_own_levels() -> None:
    config = replace(SMALL, organisations=5, shared_domains=6)
    world = generate_world(config)
    shared = {key: orgs for key, orgs in holders(world).items() if len(orgs) > 2}
    assert len(shared) >= 3
    assert any(len(set(levels.values())) > 1 for levels in shared.values())  # levels differ per organisation
    assert all(len(world.oois(org)) == config.oois_per_org for org in world.organisation_ids)
    again = generate_world(config)
    assert holders(again) == holders(world)  # deterministic


def test_without_a_pool_a_world_is_the_same_as_before() -> None:
    assert SMALL.shared_domains == 0
    plain, explicit = generate_world(SMALL), generate_world(replace(SMALL, shared_domains=0))
    for org in plain.organisation_ids:
        assert list(plain.oois(org)) == list(explicit.oois(org))


def test_katalogus_lists_the_organisations_own_deduplicate_flag(world: World, http: requests.Session) -> None:
    world.set_plugin_deduplicate("org02", "dns-records", False)
    with SimulatedKAT(world).start() as kat:
        base = f"{kat.katalogus_url}/v1/organisations"
        theirs = PLUGIN.validate_python(http.get(f"{base}/org02/plugins/dns-records").json())
        ours = PLUGIN.validate_python(http.get(f"{base}/org01/plugins/dns-records").json())
        listed = http.get(f"{base}/org02/plugins", params={"ids": ["dns-records"]}).json()
    assert isinstance(theirs, Boefje) and theirs.deduplicate is False
    assert isinstance(ours, Boefje) and ours.deduplicate is True
    assert listed[0]["deduplicate"] is False
    assert world.deduplicates("org02", "dns-records") is False and world.deduplicates("org01", "dns-records")


def test_world_config_refuses_a_negative_pool() -> None:
    with pytest.raises(ValueError, match="shared_domains"):
        WorldConfig(shared_domains=-1)


def test_sim_serve_takes_the_size_of_the_shared_pool() -> None:
    from click.testing import CliRunner

    from kat_scheduler.sim.cli import sim

    result = CliRunner().invoke(sim, ["serve", "--help"])
    assert result.exit_code == 0 and "--shared-domains" in result.output


def test_katalogus_lists_an_organisations_own_deduplicate_flag_when_set(world: World, http: requests.Session) -> None:
    world.set_organisation_deduplicate("org03", False)
    with SimulatedKAT(world).start() as kat:
        listed = http.get(f"{kat.katalogus_url}/v1/organisations").json()
        one = http.get(f"{kat.katalogus_url}/v1/organisations/org03").json()
    assert listed["org03"]["deduplicate"] is False and one == listed["org03"]
    assert "deduplicate" not in listed["org01"]  # as before: not set, not listed
