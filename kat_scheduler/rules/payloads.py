"""What a task carries: the BoefjeTask and NormalizerTask JSON KAT expects (KAT-API.md) and the
keyword arguments of the Celery message that runs it. Pure functions of their inputs.

Message kwargs are what Flower shows: identifiers only, never a secret or a whole payload. Task
data is what the API shows: a boefje's settings (``environment``: API keys, passwords), which a
BoefjeMeta may carry, are never kept in it (:func:`without_settings`).
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
    """The NormalizerTask JSON KAT expects (the raw file's BoefjeMeta without the boefje's settings)."""
    return without_settings(
        {
            "id": str(task_id),
            "normalizer": {"id": normalizer.id, "name": normalizer.name, "version": normalizer.version},
            "raw_data": raw_data,
        }
    )


def without_settings(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (a task's JSON) without the boefje settings a BoefjeMeta in it may carry: its own
    ``environment`` (a BoefjeTask a runner hydrated and pushes back) and that of
    ``raw_data.boefje_meta`` (a NormalizerTask: Bytes' raw file, as its event brought it). The
    workers read a boefje's settings from Katalogus when it runs; a task's JSON is served by the
    API, so a secret kept in it would be shown. ``data`` itself is left as it was."""
    out = dict(data)
    out.pop("environment", None)
    raw = out.get("raw_data")
    if isinstance(raw, dict) and isinstance(raw.get("boefje_meta"), dict) and "environment" in raw["boefje_meta"]:
        meta = {k: v for k, v in raw["boefje_meta"].items() if k != "environment"}
        out["raw_data"] = {**raw, "boefje_meta": meta}
    return out


def boefje_message_kwargs(organisation: str, boefje_id: str, input_ooi: str | None) -> dict[str, Any]:
    """What a boefje task message carries (and Flower shows)."""
    return {"organisation": organisation, "boefje_id": boefje_id, "input_ooi": input_ooi}


def normalizer_message_kwargs(organisation: str, normalizer_id: str, raw_data_id: str) -> dict[str, Any]:
    """What a normalizer task message carries (and Flower shows)."""
    return {"organisation": organisation, "normalizer_id": normalizer_id, "raw_data_id": raw_data_id}
