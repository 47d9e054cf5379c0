"""When the listener hands a batch over (full, quiet, or at its maximum age), how its tasks are
claimed, and what a batch of mutations writes per pair (the steps of its events, folded)."""

import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from kat_scheduler.events.consumer import MAX_BATCH_AGE, Batch
from kat_scheduler.models import Boefje, ScanProfileMutation
from kat_scheduler.planning.candidates import BoefjeIndex, Pair
from kat_scheduler.planning.reactions import Folded, Known, Step, claim_spans, fold_pair, mutation_steps
from kat_scheduler.rules import SkipReason, Trigger
from kat_scheduler.rules.identity import boefje_task_hash
from kat_scheduler.settings import Settings, load_settings
from kat_scheduler.storage.schedules import ScheduleState
from tests.factories import BoefjeFactory, OOIFactory


def test_a_lone_event_goes_after_one_quiet_window() -> None:
    batch = Batch(started=100.0, last=100.0)
    assert batch.due_at(window=0.01) == pytest.approx(100.01)


def test_a_steady_stream_keeps_the_batch_open_until_its_maximum_age() -> None:
    batch = Batch(started=100.0, last=100.2)
    assert batch.due_at(window=0.01) == pytest.approx(100.21)
    busy = Batch(started=100.0, last=100.0 + MAX_BATCH_AGE)
    assert busy.due_at(window=0.01) == pytest.approx(100.0 + MAX_BATCH_AGE)


# --- how a handler splits a batch's tasks into claims ------------------------------------------


@pytest.mark.parametrize(
    ("count", "spans"),
    [
        (0, []),
        (1, [(0, 1)]),
        (1000, [(0, 1000)]),
        (1025, [(0, 1025)]),  # a tail of 25 rides along: one claim, one commit, one publish
        (1499, [(0, 1499)]),
        (1500, [(0, 1000), (1000, 1500)]),
        (2600, [(0, 1000), (1000, 2000), (2000, 2600)]),
    ],
)
def test_a_short_tail_of_tasks_joins_the_last_claim_and_every_task_is_covered_once(count, spans) -> None:
    assert claim_spans(count, 1000) == spans
    assert [i for start, end in spans for i in range(start, end)] == list(range(count))


# --- a batch of mutations, per pair ----------------------------------------------------------

NOW = datetime(2026, 6, 1, 12, 5, tzinfo=UTC)
ORG = "org"
PK = "Hostname|internet|fold.example.nl"
SETTINGS: Settings = load_settings(schedule_jitter=0)


def event(operation: str, level: int = 0) -> ScanProfileMutation:
    value = None if operation == "delete" else OOIFactory.build(primary_key=PK, level=level)
    return ScanProfileMutation(operation=operation, primary_key=PK, client_id=ORG, value=value)


def steps_of(boefje: Boefje, *events: ScanProfileMutation) -> list[Step]:
    index = BoefjeIndex([boefje])
    skipped: Counter[SkipReason] = Counter()
    return [step for e in events for _, step in mutation_steps(ORG, index, e, skipped)]


def fold(boefje: Boefje, known: Known, *events: ScanProfileMutation) -> tuple[Folded, Counter[SkipReason]]:
    skipped: Counter[SkipReason] = Counter()
    return fold_pair(ORG, steps_of(boefje, *events), known, now=NOW, settings=SETTINGS, skipped=skipped), skipped


def test_a_mutation_weighs_the_boefjes_its_level_clears_and_withdraws_the_others() -> None:
    boefje = BoefjeFactory.build(scan_level=2)
    assert steps_of(boefje, event("create", 1)) == [None]
    (step,) = steps_of(boefje, event("update", 2))
    assert isinstance(step, Pair) and step.hash == boefje_task_hash(boefje.id, ORG, PK)
    assert steps_of(boefje, event("delete")) == [None]
    run_on_create = BoefjeFactory.build(scan_level=0, run_on=["create"])
    assert steps_of(run_on_create, event("update", 4)) == []  # left alone


def test_a_task_queued_and_withdrawn_in_one_batch_is_never_written() -> None:
    out, _ = fold(BoefjeFactory.build(scan_level=2), Known(), event("create", 4), event("update", 1))
    assert out.queue is None and out.schedule is None and not out.disable


def test_the_last_of_several_raises_queues_once_and_the_rest_find_it_live() -> None:
    out, skipped = fold(
        BoefjeFactory.build(scan_level=1), Known(), event("create", 1), event("update", 2), event("update", 4)
    )
    assert out.queue is not None and out.queue.trigger == Trigger.NEW_OBJECT
    assert out.queue.pair.ooi.scan_level == 1  # the step that queued it: one-by-one's task
    assert skipped[SkipReason.LIVE] == 2


def test_a_running_task_stays_live_through_a_withdrawal() -> None:
    out, skipped = fold(
        BoefjeFactory.build(scan_level=1), Known(live=True, running=True), event("update", 0), event("update", 2)
    )
    assert out.queue is None and skipped[SkipReason.LIVE] == 1


def test_a_queued_task_withdrawn_and_weighed_again_is_queued_again_with_a_deadline_from_now() -> None:
    due = ScheduleState(uuid.uuid4(), enabled=True, deadline_at=NOW - timedelta(hours=1))
    boefje = BoefjeFactory.build(scan_level=1)
    out, _ = fold(boefje, Known(live=True, schedule=due), event("update", 0), event("update", 2))
    # the withdrawal disabled the schedule: the task is queued as for a new object ...
    assert out.queue is not None and out.queue.trigger == Trigger.NEW_OBJECT
    # ... and once it is sent, its schedule is enabled again with a deadline from now
    assert out.schedule is not None and out.schedule_if_queued and not out.disable
    assert out.schedule.deadline_at == NOW + timedelta(seconds=SETTINGS.grace_period)


def test_a_delete_after_a_create_disables_the_schedule_the_create_moved() -> None:
    due = ScheduleState(uuid.uuid4(), enabled=True, deadline_at=NOW - timedelta(hours=1))
    out, _ = fold(BoefjeFactory.build(scan_level=0), Known(schedule=due), event("create", 0), event("delete"))
    assert out.queue is None
    assert out.schedule is not None and not out.schedule_if_queued  # the create's task was sent
    assert out.disable  # ... and the delete has the last word


def test_a_pair_inside_its_grace_period_gets_its_schedule_and_is_then_within_it() -> None:
    ran = NOW - timedelta(hours=1)
    out, skipped = fold(
        BoefjeFactory.build(scan_level=1), Known(last_ended=ran), event("update", 1), event("update", 2)
    )
    assert out.queue is None
    assert out.schedule is not None and out.schedule.deadline_at == ran + timedelta(seconds=SETTINGS.grace_period)
    assert skipped == {SkipReason.GRACE: 2}
