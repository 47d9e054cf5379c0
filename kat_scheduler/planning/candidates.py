"""The pure part of boefje planning: which (boefje, object) pairs are candidates, and in what order.

No I/O, no clock, no Celery: everything here is a function of its arguments.
"""

from __future__ import annotations

import heapq
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from kat_scheduler.dispatch.messages import BOEFJE_QUEUE as BOEFJE_QUEUE  # backpressure reads the queue here
from kat_scheduler.dispatch.messages import Dispatchable, dispatchable
from kat_scheduler.models.ooi import ListedObject
from kat_scheduler.models.plugins import Boefje
from kat_scheduler.models.tasks import SchedulerId
from kat_scheduler.rules import SkipReason, Trigger, grace_period, static_skip
from kat_scheduler.rules.identity import boefje_task_hash
from kat_scheduler.rules.payloads import boefje_payload
from kat_scheduler.rules.ranking import BoefjeCandidate, Rank, rank_boefje
from kat_scheduler.rules.timing import next_deadline
from kat_scheduler.settings import Settings
from kat_scheduler.storage.schedules import NewSchedule
from kat_scheduler.storage.tasks import NewTask


class BoefjeIndex:
    """An organisation's boefjes by the object type they consume."""

    def __init__(self, boefjes: Iterable[Boefje], invalid: Mapping[str, str] | None = None) -> None:
        self.boefjes = {b.id: b for b in boefjes}
        #: Plugins Katalogus lists that do not validate (id → reason): skipped, never taken for gone.
        self.invalid = dict(invalid or {})
        self._by_type: dict[str, list[Boefje]] = defaultdict(list)
        for boefje in self.boefjes.values():
            for object_type in boefje.consumes:
                self._by_type[object_type].append(boefje)

    def consumers(self, object_type: str) -> list[Boefje]:
        return self._by_type.get(object_type, [])

    @property
    def types(self) -> list[str]:
        """Types consumed by any boefje (enabled or not: disabled ones are counted as skips)."""
        return sorted(self._by_type)

    @property
    def min_scan_level(self) -> int:
        levels = [b.scan_level for b in self.boefjes.values() if b.consumes]
        return min(levels, default=0)

    @property
    def any_enabled(self) -> bool:
        return any(b.enabled and b.consumes and not b.run_on for b in self.boefjes.values())


@dataclass(frozen=True, slots=True)
class Pair:
    """A boefje that may run on an object, by the rules that need no history."""

    boefje: Boefje
    ooi: ListedObject
    hash: str


def pairs_for_page(
    organisation: str, index: BoefjeIndex, oois: Sequence[ListedObject], skipped: Counter[SkipReason], *, periodic: bool
) -> list[Pair]:
    """The (boefje, object) pairs of one page that pass the static rules; skips are counted."""
    pairs: list[Pair] = []
    for ooi in oois:
        for boefje in index.consumers(ooi.object_type):
            reason = static_skip(boefje, ooi, periodic=periodic)
            if reason is not None:
                skipped[reason] += 1
                continue
            pairs.append(Pair(boefje, ooi, boefje_task_hash(boefje.id, organisation, ooi.primary_key)))
    return pairs


@dataclass(frozen=True, slots=True)
class Candidate:
    """A pair that should run now, ranked."""

    organisation: str
    boefje: Boefje
    input_ooi: str | None
    hash: str
    rank: Rank
    trigger: Trigger
    schedule_id: uuid.UUID | None = None

    @property
    def sort_key(self) -> tuple[int, int, str]:
        return (self.rank.band, self.rank.score, self.hash)


def rank_pair(pair: Pair, trigger: Trigger, last_run: datetime | None, now: datetime, default_grace: int) -> Rank:
    return rank_boefje(
        BoefjeCandidate(
            trigger=trigger,
            scan_level=pair.boefje.scan_level,
            interval=grace_period(pair.boefje, default_grace),
            last_run_ended=last_run,
        ),
        now,
    )


@dataclass
class TopK:
    """Keeps the ``k`` most urgent candidates of a stream (bounded memory for huge organisations)."""

    k: int
    dropped: int = 0
    _heap: list[tuple[tuple[int, int, str], int, Candidate]] = field(default_factory=list)
    _counter: int = 0

    def push(self, candidate: Candidate) -> None:
        # Max-heap on sort_key via negation: the root is the least urgent kept.
        band, score, hash_ = candidate.sort_key
        key = (-band, -score, _invert(hash_))
        self._counter += 1
        if len(self._heap) < self.k:
            heapq.heappush(self._heap, (key, self._counter, candidate))
        elif key > self._heap[0][0]:
            heapq.heapreplace(self._heap, (key, self._counter, candidate))
            self.dropped += 1
        else:
            self.dropped += 1

    def sorted(self) -> list[Candidate]:
        return sorted((c for _, _, c in self._heap), key=lambda c: c.sort_key)

    def __len__(self) -> int:
        return len(self._heap)


def _invert(hash_: str) -> str:
    return hash_.translate(_INVERT)


_INVERT = str.maketrans("0123456789abcdef", "fedcba9876543210")


def interleave(per_org: Sequence[Sequence[Candidate]]) -> Iterator[Candidate]:
    """Most urgent band first; within a band, organisations take turns (each in its own order).

    So a huge organisation does not starve a small one in the same band.
    """
    by_band: dict[int, list[list[Candidate]]] = defaultdict(list)
    for candidates in per_org:
        groups: dict[int, list[Candidate]] = defaultdict(list)
        for c in candidates:
            groups[c.rank.band].append(c)
        for band, group in groups.items():
            by_band[band].append(group)
    for band in sorted(by_band):
        lanes = by_band[band]
        for position in range(max(len(lane) for lane in lanes)):
            for lane in lanes:
                if position < len(lane):
                    yield lane[position]


def new_boefje_task(candidate: Candidate) -> NewTask:
    task_id = uuid.uuid4()
    return NewTask(
        id=task_id,
        scheduler_id=SchedulerId.BOEFJE,
        type="boefje",
        organisation=candidate.organisation,
        plugin_id=candidate.boefje.id,
        input_ooi=candidate.input_ooi,
        hash=candidate.hash,
        band=candidate.rank.band,
        priority=candidate.rank.score,
        data=boefje_payload(task_id, candidate.boefje, candidate.organisation, candidate.input_ooi),
        reason=candidate.rank.reason[:64],
        schedule_id=candidate.schedule_id,
    )


def boefje_dispatchable(candidate: Candidate) -> Dispatchable:
    """The task row to claim for ``candidate`` and the message that runs it (the message factory's)."""
    return dispatchable(new_boefje_task(candidate))


def new_boefje_schedule(
    org: str, boefje: Boefje, input_ooi: str | None, hash_: str, after: datetime, settings: Settings
) -> NewSchedule:
    """The schedule of a (boefje, object, organisation), due at its next run after ``after``."""
    return NewSchedule(
        scheduler_id=SchedulerId.BOEFJE,
        organisation=org,
        plugin_id=boefje.id,
        input_ooi=input_ooi,
        hash=hash_,
        data={
            "boefje": {"id": boefje.id, "name": boefje.name, "version": boefje.version},
            "input_ooi": input_ooi,
            "organization": org,
        },
        deadline_at=next_deadline(
            boefje, after, hash_=hash_, default_seconds=settings.grace_period, jitter=settings.schedule_jitter
        ),
        schedule=boefje.cron,
        interval=boefje.interval,
    )
