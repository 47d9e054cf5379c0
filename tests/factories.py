"""factory-boy factories for test data."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import factory

from kat_scheduler.hashing import boefje_task_hash
from kat_scheduler.models import OOI, Boefje, BoefjeMeta, Normalizer, ScanProfile, SchedulerId
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
