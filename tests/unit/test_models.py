"""The wire models accept KAT's exact shapes (KAT-API.md) and reject what is not."""

from typing import Any

import pytest
from pydantic import ValidationError

from kat_scheduler.models import OOI, BoefjeMeta, RawFileReceived, ScanProfileMutation
from kat_scheduler.models.plugins import PLUGIN_LIST, Boefje, Normalizer

HOSTNAME: dict[str, Any] = {
    "object_type": "Hostname",
    "primary_key": "Hostname|internet|mispo.es",
    "scan_profile": {
        "scan_profile_type": "declared",
        "reference": "Hostname|internet|mispo.es",
        "level": 2,
        "user_id": 1,
    },
    "network": "Network|internet",
    "name": "mispo.es",
    "user_id": None,
}
BOEFJE = {
    "id": "dns-records",
    "name": "DNS records",
    "version": None,
    "type": "boefje",
    "enabled": True,
    "scan_level": 1,
    "consumes": ["Hostname"],
    "produces": [],
    "cron": None,
    "interval": None,
    "run_on": None,
    "oci_image": "ghcr.io/minvws/openkat/generic:latest",
    "oci_arguments": ["kat_dns.main"],
    "deduplicate": True,
    "description": "Fetch the DNS record(s) of a hostname.",
}
BOEFJE_META = {
    "id": "0e191e18-bc77-405f-8887-80f510304021",
    "started_at": "2025-05-27T09:00:15.5+00:00",
    "ended_at": "2025-05-27T09:00:16.4+00:00",
    "boefje": {"id": "dns-records", "version": None},
    "input_ooi": "Hostname|internet|mispo.es",
    "arguments": {"input": HOSTNAME},
    "organization": "aa",
    "runnable_hash": None,
    "environment": {},
}


def test_an_ooi_keeps_its_type_specific_keys_and_scan_level() -> None:
    ooi = OOI.model_validate(HOSTNAME)
    assert ooi.scan_level == 2
    assert ooi.model_dump()["name"] == "mispo.es"


@pytest.mark.parametrize(
    "profile",
    [None, {"scan_profile_type": "empty", "reference": "Hostname|internet|x", "level": 3}],
)
def test_an_ooi_without_or_with_an_empty_profile_has_level_zero(profile) -> None:
    assert OOI.model_validate({**HOSTNAME, "scan_profile": profile}).scan_level == 0


def test_a_scan_level_above_four_is_rejected() -> None:
    with pytest.raises(ValidationError):
        OOI.model_validate({**HOSTNAME, "scan_profile": {**HOSTNAME["scan_profile"], "level": 5}})


def test_plugins_are_told_apart_by_type() -> None:
    normalizer = {
        "id": "kat_dns_normalize",
        "type": "normalizer",
        "enabled": True,
        "consumes": ["boefje/dns-records"],
    }
    plugins = PLUGIN_LIST.validate_python([BOEFJE, normalizer])
    assert isinstance(plugins[0], Boefje) and plugins[0].scan_level == 1
    assert isinstance(plugins[1], Normalizer)


def test_a_boefje_with_an_invalid_cron_is_rejected() -> None:
    with pytest.raises(ValidationError, match="cron"):
        Boefje.model_validate({**BOEFJE, "cron": "every tuesday"})
    assert Boefje.model_validate({**BOEFJE, "cron": "0 3 * * *"}).cron == "0 3 * * *"


def test_boefje_meta_needs_timezone_aware_datetimes() -> None:
    assert BoefjeMeta.model_validate(BOEFJE_META).ended_at is not None
    with pytest.raises(ValidationError):
        BoefjeMeta.model_validate({**BOEFJE_META, "ended_at": "2025-05-27T09:00:16"})


def test_a_delete_mutation_has_no_value_and_other_operations_need_one() -> None:
    deleted = ScanProfileMutation.model_validate(
        {"operation": "delete", "primary_key": "Hostname|internet|mispo.es", "client_id": "aa", "value": None}
    )
    assert deleted.value is None
    with pytest.raises(ValidationError, match="needs a value"):
        ScanProfileMutation.model_validate(
            {
                "operation": "create",
                "primary_key": "Hostname|internet|mispo.es",
                "client_id": "aa",
                "value": None,
            }
        )


def test_a_raw_file_event_knows_whether_it_is_an_error_file() -> None:
    event = {
        "event_id": "raw_file_received",
        "created_at": "2025-05-27T09:00:16.601+00:00",
        "organization": "aa",
        "raw_data": {
            "id": "7c1f0000-0000-4000-8000-000000000000",
            "boefje_meta": BOEFJE_META,
            "mime_types": [{"value": "boefje/dns-records"}],
            "secure_hash": None,
            "hash_retrieval_link": None,
        },
    }
    ok = RawFileReceived.model_validate(event)
    assert ok.raw_data.mime_type_values == ["boefje/dns-records"] and not ok.raw_data.is_error
    event["raw_data"]["mime_types"].append({"value": "error/boefje"})  # type: ignore[index]
    assert RawFileReceived.model_validate(event).raw_data.is_error


def test_the_wire_models_limits_are_the_columns_lengths() -> None:
    from sqlalchemy import String

    from kat_scheduler.models.limits import ID_LENGTH, OBJECT_KEY_LENGTH
    from kat_scheduler.storage.tables import Base

    lengths = {
        (table.name, column.name): column.type.length
        for table in Base.metadata.tables.values()
        for column in table.columns
        if isinstance(column.type, String) and column.name in ("input_ooi", "organisation", "plugin_id")
    }
    assert lengths
    for (table, column), length in lengths.items():
        expected = OBJECT_KEY_LENGTH if column == "input_ooi" else ID_LENGTH
        assert length == expected, f"{table}.{column}"


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("Hostname|internet|" + "x" * 1100, "at most 1024 characters"),
        ("Hostname|internet|a\x00b", "contains a NUL character"),
    ],
    ids=["too-long", "nul"],
)
def test_a_mutation_whose_key_the_database_cannot_store_is_refused_with_the_reason(key: str, reason: str) -> None:
    from pydantic import ValidationError

    from kat_scheduler.models import ScanProfileMutation

    body = {"operation": "delete", "primary_key": key, "client_id": "org01"}
    with pytest.raises(ValidationError, match=reason):
        ScanProfileMutation.model_validate(body)
