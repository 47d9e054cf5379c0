"""Pure rules for events: which boefjes a scan-profile mutation may trigger, which queued work it
makes wrong, and which normalizers a raw file gets. No I/O, no clock, no Celery."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from kat_scheduler.models.bytes import RawData
from kat_scheduler.models.events import MutationOperation
from kat_scheduler.models.ooi import OOI
from kat_scheduler.models.plugins import Normalizer
from kat_scheduler.planning.candidates import BoefjeIndex, Pair
from kat_scheduler.rules import SkipReason, clearance_skip, static_skip
from kat_scheduler.rules.identity import boefje_task_hash


def object_type_of(primary_key: str) -> str:
    """``Hostname|internet|mispo.es`` → ``Hostname`` (a delete event carries no object)."""
    return primary_key.split("|", 1)[0]


def mutation_pairs(
    organisation: str,
    index: BoefjeIndex,
    ooi: OOI,
    operation: MutationOperation,
    skipped: Counter[SkipReason],
) -> list[Pair]:
    """The boefjes a create/update of ``ooi`` may run now (clearance checked against its new level).

    A boefje with ``run_on`` runs only when the operation is one of them; others run on any
    create or update (grace still applies, checked by the caller).
    """
    pairs: list[Pair] = []
    for boefje in index.consumers(ooi.object_type):
        reason = static_skip(boefje, ooi, periodic=False)
        if reason is None and boefje.run_on and operation.value not in {r.value for r in boefje.run_on}:
            reason = SkipReason.RUN_ON_OPERATION
        if reason is not None:
            skipped[reason] += 1
            continue
        pairs.append(Pair(boefje, ooi, boefje_task_hash(boefje.id, organisation, ooi.primary_key)))
    return pairs


def hashes_without_clearance(organisation: str, index: BoefjeIndex, ooi: OOI) -> list[str]:
    """Task hashes of boefjes on ``ooi`` that its (new) level no longer clears."""
    return [
        boefje_task_hash(b.id, organisation, ooi.primary_key)
        for b in index.consumers(ooi.object_type)
        if clearance_skip(b, ooi) is not None
    ]


def hashes_of_object(organisation: str, index: BoefjeIndex, primary_key: str) -> list[str]:
    """Task hashes of every boefje that consumes the object's type (for a delete)."""
    return [boefje_task_hash(b.id, organisation, primary_key) for b in index.consumers(object_type_of(primary_key))]


def normalizers_for_raw(normalizers: Iterable[Normalizer], raw: RawData) -> list[Normalizer]:
    """Enabled normalizers consuming any of the file's mime types, each once; none for ``error/…`` files."""
    if raw.is_error:
        return []
    mime_types = set(raw.mime_type_values)
    chosen: dict[str, Normalizer] = {}
    for normalizer in normalizers:
        if normalizer.enabled and mime_types.intersection(normalizer.consumes):
            chosen.setdefault(normalizer.id, normalizer)
    return list(chosen.values())
