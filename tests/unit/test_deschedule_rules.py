"""Which raw files deschedule, and a batch of mutations on a descheduled pair queues nothing (pure)."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

from kat_scheduler.events.deschedule import DESCHEDULE_MIME_TYPE, deschedule_requests
from kat_scheduler.models import RawFileReceived, ScanProfileMutation
from kat_scheduler.planning.candidates import BoefjeIndex
from kat_scheduler.planning.reactions import Known, fold_pair, mutation_steps
from kat_scheduler.rules import SkipReason
from kat_scheduler.settings import load_settings
from kat_scheduler.storage.schedules import ScheduleState
from tests.factories import BoefjeFactory, OOIFactory

NOW = datetime(2026, 6, 1, 12, 5, tzinfo=UTC)
ORG = "org"
PK = "Hostname|internet|deschedule.example.nl"


def raw_file(mime_types: list[str], input_ooi: str | None = PK) -> RawFileReceived:
    return RawFileReceived.model_validate(
        {
            "created_at": NOW.isoformat(),
            "organization": ORG,
            "raw_data": {
                "id": str(uuid.uuid4()),
                "boefje_meta": {
                    "id": str(uuid.uuid4()),
                    "boefje": {"id": "dns-records"},
                    "input_ooi": input_ooi,
                    "organization": ORG,
                },
                "mime_types": [{"value": m} for m in mime_types],
            },
        }
    )


def test_only_files_tagged_openkat_deschedule_are_requests_in_their_order() -> None:
    events = [
        raw_file(["boefje/dns-records"]),
        raw_file(["boefje/dns-records", DESCHEDULE_MIME_TYPE]),
        raw_file([DESCHEDULE_MIME_TYPE], input_ooi=None),
        raw_file(["boefje/dns-records", "openkat/deschedule-not"]),
        raw_file([DESCHEDULE_MIME_TYPE]),
    ]
    found = deschedule_requests(events, skip={4})
    assert [(r.boefje_id, r.input_ooi, r.raw_id) for r in found] == [
        ("dns-records", PK, events[1].raw_data.id),
        ("dns-records", None, events[2].raw_data.id),
    ]
    assert found[0].reason == (
        f"descheduled by boefje dns-records: raw file {events[1].raw_data.id} is tagged openkat/deschedule"
    )


def test_a_descheduled_pair_is_never_queued_by_a_mutation_and_its_schedule_is_left_as_it_is() -> None:
    boefje = BoefjeFactory.build(id="dns-records", scan_level=1, consumes=["Hostname"])
    ooi = OOIFactory.build(primary_key=PK, level=2)
    skipped: Counter[SkipReason] = Counter()
    steps = [
        step
        for operation in ("create", "update")
        for _, step in mutation_steps(
            ORG,
            BoefjeIndex([boefje]),
            ScanProfileMutation(operation=operation, primary_key=PK, client_id=ORG, value=ooi),
            skipped,
        )
    ]
    state = ScheduleState(uuid.uuid4(), False, NOW - timedelta(days=3), descheduled=True)
    out = fold_pair(
        ORG, steps, Known(schedule=state), now=NOW, settings=load_settings(schedule_jitter=0), skipped=skipped
    )
    assert out.queue is None and out.schedule is None and not out.disable
    assert skipped[SkipReason.DESCHEDULED] == 2
