"""What the listener makes of a message body: an event, or the reason it is dead-lettered."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from kat_scheduler.events.consumer import Poison, decode_event
from kat_scheduler.models.events import ScanProfileMutation
from kat_scheduler.queues import RAW_FILE_RECEIVED, SCAN_PROFILE_MUTATIONS

REF = "Hostname|internet|example.nl"
CREATE = {
    "operation": "create",
    "primary_key": REF,
    "client_id": "org01",
    "value": {
        "primary_key": REF,
        "object_type": "Hostname",
        "scan_profile": {"scan_profile_type": "declared", "reference": REF, "level": 2},
        "network": "Network|internet",
    },
}


@dataclass
class Body:
    body: Any


@pytest.mark.parametrize("as_bytes", [True, False])
def test_a_valid_mutation_is_parsed_with_its_extra_keys(as_bytes: bool) -> None:
    text = json.dumps(CREATE)
    event = decode_event(SCAN_PROFILE_MUTATIONS, Body(text.encode() if as_bytes else text))  # type: ignore[arg-type]
    assert isinstance(event, ScanProfileMutation)
    assert event.primary_key == REF and event.value is not None and event.value.scan_level == 2


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "not JSON: "),
        (b"\xff\xfe\x00", "not JSON: "),
        (None, "not JSON: a body of type NoneType"),
        (b"[1, 2]", "not a valid scan_profile_mutations event: body: "),
        (json.dumps({**CREATE, "operation": "upsert"}).encode(), "not a valid scan_profile_mutations event: operation"),
        (json.dumps(CREATE).encode(), None),
    ],
)
def test_a_body_that_is_no_event_says_why(body: Any, reason: str | None) -> None:
    if reason is None:
        with pytest.raises(Poison):  # a mutation is no raw file event
            decode_event(RAW_FILE_RECEIVED, Body(body))  # type: ignore[arg-type]
        return
    with pytest.raises(Poison) as caught:
        decode_event(SCAN_PROFILE_MUTATIONS, Body(body))  # type: ignore[arg-type]
    assert str(caught.value).startswith(reason), str(caught.value)
