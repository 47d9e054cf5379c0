"""factory-boy factories for test data."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import factory
import mmh3

from kat_scheduler.models import OOI, Boefje, BoefjeMeta, Normalizer, ScanProfile, SchedulerId
from kat_scheduler.rules.identity import boefje_task_hash
from kat_scheduler.storage.schedules import NewSchedule
from kat_scheduler.storage.tasks import NewTask


class ScanProfileFactory(factory.Factory):
    class Meta:
        model = ScanProfile

    scan_profile_type = "declared"
    reference = factory.Sequence(lambda n: f"Hostname|internet|host-{n}.example.nl")
    level = 2


class OOIFactory(factory.Factory):
    class Meta:
        model = OOI

    class Params:
        level = 2

    object_type = "Hostname"
    primary_key = factory.Sequence(lambda n: f"Hostname|internet|host-{n}.example.nl")
    scan_profile = factory.LazyAttribute(
        lambda o: ScanProfile(scan_profile_type="declared", reference=o.primary_key, level=o.level)
    )


class BoefjeFactory(factory.Factory):
    class Meta:
        model = Boefje

    id = factory.Sequence(lambda n: f"boefje-{n}")
    name = factory.LazyAttribute(lambda o: o.id.replace("-", " ").title())
    enabled = True
    scan_level = 1
    consumes = factory.LazyFunction(lambda: ["Hostname"])


class NormalizerFactory(factory.Factory):
    class Meta:
        model = Normalizer

    id = factory.Sequence(lambda n: f"kat_boefje_{n}_normalize")
    enabled = True
    consumes = factory.LazyFunction(lambda: ["boefje/dns-records"])


class BoefjeMetaFactory(factory.Factory):
    class Meta:
        model = BoefjeMeta

    id = factory.LazyFunction(uuid.uuid4)
    started_at = factory.LazyFunction(lambda: datetime(2025, 5, 27, 9, 0, 15, tzinfo=UTC))
    ended_at = factory.LazyFunction(lambda: datetime(2025, 5, 27, 9, 0, 16, tzinfo=UTC))
    boefje = factory.LazyFunction(lambda: {"id": "dns-records", "version": None})
    input_ooi = "Hostname|internet|mispo.es"
    organization = "aa"


class NewTaskFactory(factory.Factory):
    """A boefje task as a producer hands it to the store; hash derived from boefje, OOI, org."""

    class Meta:
        model = NewTask

    id = factory.LazyFunction(uuid.uuid4)
    scheduler_id = SchedulerId.BOEFJE
    type = "boefje"
    organisation = "aa"
    plugin_id = "dns-records"
    input_ooi = factory.Sequence(lambda n: f"Hostname|internet|host-{n}.example.nl")
    hash = factory.LazyAttribute(lambda o: boefje_task_hash(o.plugin_id, o.organisation, o.input_ooi))
    band = 5
    priority = 0
    data = factory.LazyAttribute(
        lambda o: {
            "id": str(o.id),
            "boefje": {"id": o.plugin_id, "name": None, "version": None},
            "input_ooi": o.input_ooi,
            "organization": o.organisation,
        }
    )
    reason = "new"


class NewScheduleFactory(factory.Factory):
    class Meta:
        model = NewSchedule

    scheduler_id = SchedulerId.BOEFJE
    organisation = "aa"
    plugin_id = "dns-records"
    input_ooi = factory.Sequence(lambda n: f"Hostname|internet|host-{n}.example.nl")
    hash = factory.LazyAttribute(lambda o: boefje_task_hash(o.plugin_id, o.organisation, o.input_ooi))
    data = factory.LazyAttribute(lambda o: {"boefje": {"id": o.plugin_id}, "input_ooi": o.input_ooi})
    deadline_at = factory.LazyFunction(lambda: datetime.now(UTC))


# --- rows of mula's database (OpenKAT's scheduler), for the import from mula -------------------
#
# Hashes here follow mula's own code (mmh3.hash_bytes of the same strings), written out again
# rather than taken from kat_scheduler.rules.identity, so the tests check that both agree.

MULA_EPOCH = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def mula_boefje_hash(boefje_id: str, org: str, input_ooi: str | None) -> str:
    key = f"{input_ooi}-{boefje_id}-{org}" if input_ooi else f"{boefje_id}-{org}"
    return mmh3.hash_bytes(key.encode()).hex()


def mula_normalizer_hash(normalizer_id: str, boefje_meta_id: uuid.UUID, org: str) -> str:
    return mmh3.hash_bytes(f"{normalizer_id}-{boefje_meta_id}-{org}".encode()).hex()


def mula_boefje_data(task_id: uuid.UUID, boefje_id: str, org: str, input_ooi: str | None) -> dict[str, object]:
    """A BoefjeTask as mula dumps it into ``tasks.data`` and ``schedules.data``."""
    return {
        "id": str(task_id),
        "boefje": {
            "id": boefje_id,
            "name": boefje_id.replace("-", " ").title(),
            "version": None,
            "scan_level": 1,
            "consumes": ["Hostname"],
            "produces": [],
            "enabled": True,
        },
        "input_ooi": input_ooi,
        "organization": org,
        "dispatches": [],
        "deduplication_key": None,
    }


class MulaBoefjeTaskRowFactory(factory.DictFactory):
    """A row of mula's ``tasks`` table (current schema): a boefje task, completed by default."""

    class Params:
        boefje_id = "dns-records"
        org = "aa"
        input_ooi = factory.Sequence(lambda n: f"Hostname|internet|mula-{n}.example.nl")
        ended = factory.LazyFunction(lambda: MULA_EPOCH)

    id = factory.LazyFunction(uuid.uuid4)
    scheduler_id = "boefje"
    schedule_id = None
    organisation = factory.SelfAttribute("org")
    type = "boefje"
    hash = factory.LazyAttribute(lambda o: mula_boefje_hash(o.boefje_id, o.org, o.input_ooi))
    priority = 7
    data = factory.LazyAttribute(lambda o: mula_boefje_data(o.id, o.boefje_id, o.org, o.input_ooi))
    status = "COMPLETED"
    created_at = factory.LazyAttribute(lambda o: o.ended - timedelta(minutes=5))
    modified_at = factory.SelfAttribute("ended")


class MulaNormalizerTaskRowFactory(factory.DictFactory):
    """A row of mula's ``tasks`` table (current schema): a normalizer task, completed by default."""

    class Params:
        normalizer_id = "kat_dns_normalize"
        org = "aa"
        boefje_meta_id = factory.LazyFunction(uuid.uuid4)
        ended = factory.LazyFunction(lambda: MULA_EPOCH)

    id = factory.LazyFunction(uuid.uuid4)
    scheduler_id = "normalizer"
    schedule_id = None
    organisation = factory.SelfAttribute("org")
    type = "normalizer"
    hash = factory.LazyAttribute(lambda o: mula_normalizer_hash(o.normalizer_id, o.boefje_meta_id, o.org))
    priority = 3
    data = factory.LazyAttribute(
        lambda o: {
            "id": str(o.id),
            "normalizer": {"id": o.normalizer_id, "version": None},
            "raw_data": {
                "id": str(uuid.uuid4()),
                "boefje_meta": {
                    "id": str(o.boefje_meta_id),
                    "boefje": {"id": "dns-records", "version": None},
                    "input_ooi": "Hostname|internet|mispo.es",
                    "organization": o.org,
                    "started_at": "2026-05-01T11:00:00+00:00",
                    "ended_at": "2026-05-01T11:00:05+00:00",
                },
                "mime_types": [{"value": "boefje/dns-records"}],
            },
        }
    )
    status = "COMPLETED"
    created_at = factory.LazyAttribute(lambda o: o.ended - timedelta(minutes=1))
    modified_at = factory.SelfAttribute("ended")


class MulaScheduleRowFactory(factory.DictFactory):
    """A row of mula's ``schedules`` table: a boefje schedule, enabled, daily cron by default."""

    class Params:
        boefje_id = "dns-records"
        org = "aa"
        input_ooi = factory.Sequence(lambda n: f"Hostname|internet|scheduled-{n}.example.nl")

    id = factory.LazyFunction(uuid.uuid4)
    scheduler_id = "boefje"
    organisation = factory.SelfAttribute("org")
    hash = factory.LazyAttribute(lambda o: mula_boefje_hash(o.boefje_id, o.org, o.input_ooi))
    data = factory.LazyAttribute(lambda o: mula_boefje_data(uuid.uuid4(), o.boefje_id, o.org, o.input_ooi))
    enabled = True
    schedule = "0 3 * * *"
    deadline_at = factory.LazyFunction(lambda: MULA_EPOCH + timedelta(hours=15))
    created_at = factory.LazyFunction(lambda: MULA_EPOCH - timedelta(days=30))
    modified_at = factory.LazyFunction(lambda: MULA_EPOCH - timedelta(hours=9))
