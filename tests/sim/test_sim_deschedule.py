"""The simulated boefje that deschedules (``internetdb``), and the oracle that knows what it descheduled."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from datetime import timedelta

from click.testing import CliRunner

from kat_scheduler.models.bytes import BoefjeMeta, BoefjeRef
from kat_scheduler.sim import WorldConfig, generate_world
from kat_scheduler.sim.cli import sim
from kat_scheduler.sim.deschedule import DESCHEDULE_BOEFJE, DESCHEDULE_MIME_TYPE, DESCHEDULE_NORMALIZER, deschedules
from kat_scheduler.sim.oracle import allowed_boefje_tasks, descheduled_pairs
from kat_scheduler.workers.simulated import SimulatedRunner

from .conftest import SMALL

IP = "IPAddressV4"


def test_the_deschedule_boefje_leaves_every_other_boefjes_world_as_it_was() -> None:
    config = replace(SMALL, organisations=3, oois_per_org=300)
    plain, with_it = generate_world(config), generate_world(replace(config, deschedule_boefje=True))
    assert [b.id for b in with_it.boefjes] == [*(b.id for b in plain.boefjes), DESCHEDULE_BOEFJE.id]
    for org in plain.organisation_ids:
        assert with_it.oois(org) == plain.oois(org)
        assert with_it.runs(org) == plain.runs(org)
        assert with_it.is_enabled(org, DESCHEDULE_BOEFJE.id) and with_it.is_enabled(org, DESCHEDULE_NORMALIZER.id)
        enabled = with_it.enabled_plugins(org)
        for plugin_id in (DESCHEDULE_BOEFJE.id, DESCHEDULE_NORMALIZER.id):
            enabled.pop(plugin_id)
        assert enabled == plain.enabled_plugins(org)
    now = config.now or plain.now
    allowed = allowed_boefje_tasks(with_it, now)
    assert {t for t in allowed if t[1] != DESCHEDULE_BOEFJE.id} == allowed_boefje_tasks(plain, now)
    assert any(t[1] == DESCHEDULE_BOEFJE.id for t in allowed)


def test_it_deschedules_a_quarter_of_its_addresses_by_their_key_and_no_other_boefje_ever_does() -> None:
    keys = [f"IPAddressV4|internet|198.18.{n // 256}.{n % 256}" for n in range(2000)]
    chosen = [k for k in keys if deschedules(DESCHEDULE_BOEFJE.id, k)]
    assert 0.2 < len(chosen) / len(keys) < 0.3
    assert chosen == [k for k in keys if deschedules(DESCHEDULE_BOEFJE.id, k)]
    assert not any(deschedules("shodan", k) for k in keys)


def test_its_run_is_a_raw_file_tagged_openkat_deschedule_the_normalizer_finds_nothing_in() -> None:
    runner = SimulatedRunner()
    keys = [f"IPAddressV4|internet|10.0.0.{n}" for n in range(40)]
    for key in keys:
        meta = {"arguments": {"input": {"object_type": IP, "primary_key": key}}}
        ((mime_types, content),) = runner.run_boefje(DESCHEDULE_BOEFJE.id, meta, {})
        assert (DESCHEDULE_MIME_TYPE in mime_types) == deschedules(DESCHEDULE_BOEFJE.id, key)
        if DESCHEDULE_MIME_TYPE in mime_types:
            assert json.loads(content)["deschedule"].startswith(key)
            assert runner.run_normalizer(DESCHEDULE_NORMALIZER.id, {}, content) == []


def test_the_oracle_never_allows_a_pair_whose_boefje_descheduled_it() -> None:
    world = generate_world(replace(SMALL, deschedule_boefje=True))
    org = world.organisation_ids[0]
    allowed = {t for t in allowed_boefje_tasks(world, world.now) if t[0] == org and t[1] == DESCHEDULE_BOEFJE.id}
    _, _, key = sorted(allowed)[0]
    meta_id = uuid.uuid4()
    started = world.now - timedelta(minutes=2)
    world.add_boefje_meta(
        BoefjeMeta(
            id=meta_id,
            boefje=BoefjeRef(id=DESCHEDULE_BOEFJE.id),
            input_ooi=key,
            organization=org,
            started_at=started,
            ended_at=started + timedelta(seconds=5),
        )
    )
    world.add_raw(meta_id, [("0", b"{}", [f"boefje/{DESCHEDULE_BOEFJE.id}", DESCHEDULE_MIME_TYPE])])
    assert descheduled_pairs(world) == {(org, DESCHEDULE_BOEFJE.id, key)}
    later = world.now + timedelta(days=30)
    assert (org, DESCHEDULE_BOEFJE.id, key) not in allowed_boefje_tasks(world, later)
    assert len(allowed_boefje_tasks(world, later) - allowed_boefje_tasks(world, world.now)) > 0


def test_worlds_without_it_are_those_of_before() -> None:
    assert WorldConfig().deschedule_boefje is False


def test_sim_serve_offers_it() -> None:
    result = CliRunner().invoke(sim, ["serve", "--help"])
    assert result.exit_code == 0 and "--deschedule-boefje" in result.output
