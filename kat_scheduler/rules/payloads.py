"""What a task carries: the BoefjeTask and NormalizerTask JSON KAT expects (KAT-API.md) and the
keyword arguments of the Celery message that runs it. Pure functions of their inputs.

Message kwargs are what Flower shows: identifiers only, never a secret or a whole payload.
"""

from __future__ import annotations

import uuid
from typing import Any

from kat_scheduler.models.plugins import Boefje, Normalizer


def boefje_payload(task_id: uuid.UUID, boefje: Boefje, organisation: str, input_ooi: str | None) -> dict[str, Any]:
    """The BoefjeTask JSON KAT expects, built directly (this is a hot path)."""
    return {
        "id": str(task_id),
        "boefje": {
            "id": boefje.id,
            "name": boefje.name,
            "version": boefje.version,
            "oci_image": boefje.oci_image,
        },
        "input_ooi": input_ooi,
        "organization": organisation,
        "deduplication_key": None,
        "dispatches": [],
    }


def normalizer_payload(task_id: uuid.UUID, normalizer: Normalizer, raw_data: dict[str, Any]) -> dict[str, Any]:
    """The NormalizerTask JSON KAT expects."""
    return {
        "id": str(task_id),
        "normalizer": {"id": normalizer.id, "name": normalizer.name, "version": normalizer.version},
        "raw_data": raw_data,
    }


def boefje_message_kwargs(organisation: str, boefje_id: str, input_ooi: str | None) -> dict[str, Any]:
    """What a boefje task message carries (and Flower shows)."""
    return {"organisation": organisation, "boefje_id": boefje_id, "input_ooi": input_ooi}


def normalizer_message_kwargs(organisation: str, normalizer_id: str, raw_data_id: str) -> dict[str, Any]:
    """What a normalizer task message carries (and Flower shows)."""
    return {"organisation": organisation, "normalizer_id": normalizer_id, "raw_data_id": raw_data_id}
