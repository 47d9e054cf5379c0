"""The event listener and rate limits: a storm of mutations on objects of a rate-limited boefje
publishes only what the group may start now; every other task of the group is claimed and waits
for its window as a worker's put-back leaves it (no message, listed as waiting with its limit,
group and time), and the worker nodes' release sends them as room opens. Real PostgreSQL, Redis
and (for the drain) a real worker node on the simulated KAT."""

from __future__ import annotations

import contextlib
import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from kat_scheduler.clients import KATClients
from kat_scheduler.clients.plugin_cache import PluginCache
from kat_scheduler.dispatch.publishing import make_publisher
from kat_scheduler.events.handlers import MutationHandler
from kat_scheduler.limiting.capacity import ListenerBudget
from kat_scheduler.models import Boefje, ScanProfileMutation, TaskStatus
from kat_scheduler.planning.candidates import Candidate
from kat_scheduler.queues import SCAN_PROFILE_MUTATIONS, Queue
from kat_scheduler.rules import Trigger
from kat_scheduler.rules.identity import boefje_task_hash
from kat_scheduler.rules.ranking import Rank
from kat_scheduler.settings import Settings, get_settings, load_settings
from kat_scheduler.sim.events import scan_profile_mutation
from kat_scheduler.sim.oracle import allowed_boefje_tasks
from kat_scheduler.sim.world import World
from kat_scheduler.storage import ScheduleStore, TaskRow, TaskStore
from kat_scheduler.storage.tables import utcnow
from kat_scheduler.storage.waiting import RATE_LIMIT_KEY, WaitingStore
from tests.factories import BoefjeFactory, NewTaskFactory
from tests.tasks import broker_messages
from tests.workers import celery_worker, kat_env, wait_for


def test_claimed_tasks_held_back_wait_as_a_put_back_leaves_them_and_only_those_still_unsent(
    pg_engine: Engine,
) -> None:
    store = TaskStore(pg_engine)
    held, sent = NewTaskFactory(), NewTaskFactory()
    store.claim([held, sent])
    store.mark_published([sent.id])  # its message is on the broker: it no longer waits for one
    until = utcnow() + timedelta(seconds=30)
    waiting = WaitingStore(pg_engine)

    assert waiting.hold({held.id: ("2/second", "g", until), sent.id: ("2/second", "g", until)}) == 1

    assert waiting.waiting_until([held.id, sent.id]) == {held.id: until}
    assert waiting.summary() == (1, until)
    with pg_engine.connect() as conn:
        row = conn.execute(select(TaskRow).where(TaskRow.id == held.id)).one()
    assert row.status == TaskStatus.QUEUED
    assert row.data[RATE_LIMIT_KEY] == {"limit": "2/second", "group": "g", "until": until.isoformat()}
    assert {k: v for k, v in row.data.items() if k != RATE_LIMIT_KEY} == held.data
    assert [(w.group, w.limit, w.count) for w in waiting.by_group()] == [("g", "2/second", 1)]
    assert waiting.hold({uuid.uuid4(): ("2/second", "g", until)}) == 0


def limited_storm(world: World) -> tuple[str, list[ScanProfileMutation]]:
    """A boefje the world lets run on objects of two organisations, and a storm of ``create``
    mutations of ten of those objects (five per organisation, interleaved)."""
    refs: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))  # boefje -> org -> objects
    for org, boefje_id, ooi in sorted(allowed_boefje_tasks(world, datetime.now(UTC))):
        refs[boefje_id][org].append(ooi)
    boefje, of_org = next((b, r) for b, r in sorted(refs.items()) if sum(len(x) >= 5 for x in r.values()) >= 2)
    orgs = sorted(org for org, x in of_org.items() if len(x) >= 5)[:2]
    chosen = [(org, of_org[org][i]) for i in range(5) for org in orgs]
    storm = [
        ScanProfileMutation.model_validate(scan_profile_mutation("create", org, ref, world.oois(org)[ref]))
        for org, ref in chosen
    ]
    return boefje, storm


ENDED = {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED}


def rows_of(engine: Engine, **where: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(TaskRow).filter_by(**where)).all())


def most_in_any(starts: Sequence[datetime], window: timedelta) -> int:
    """The most starts in any window of length ``window`` (half-open)."""
    ordered = sorted(starts)
    return max((sum(1 for t in ordered[i:] if t < s + window) for i, s in enumerate(ordered)), default=0)


def test_a_mutation_storm_publishes_a_limited_group_only_its_window_and_its_other_tasks_wait_then_run_once(
    kat: Any,
    world: World,
    clients: KATClients,
    planner_settings: Settings,
    pg_engine: Engine,
    postgres_uri: str,
    redis_url: str,
    tmp_path: Path,
) -> None:
    boefje, storm = limited_storm(world)
    settings = planner_settings.model_copy(update={"rate_limits": f"{boefje}=2/second"})
    tasks, waiting = TaskStore(pg_engine), WaitingStore(pg_engine)
    with contextlib.closing(make_publisher(settings)) as publisher:
        handler = MutationHandler(
            PluginCache(clients.katalogus, ttl=60), tasks, ScheduleStore(pg_engine), publisher, settings
        )
        for start in range(0, len(storm), 3):  # a storm: batch after batch
            assert handler(SCAN_PROFILE_MUTATIONS, storm[start : start + 3]) == []

    limited = rows_of(pg_engine, plugin_id=boefje)
    others = [r for r in rows_of(pg_engine) if r.plugin_id != boefje]
    assert len(limited) == len(storm) and others  # every task the storm called for is claimed
    on_broker = {uuid.UUID(m["headers"]["id"]) for m in broker_messages(redis_url)}
    sent = [r for r in limited if r.id in on_broker]
    assert len(sent) <= 2  # at most the window's worth of the limited group is published
    assert {r.id for r in others} <= on_broker  # the unlimited boefjes' tasks at once
    # The rest wait as a worker's put-back leaves them: queued, no message, listed as waiting.
    held = [r for r in limited if r.id not in on_broker]
    assert all(r.status == TaskStatus.QUEUED for r in held)
    assert {r.data[RATE_LIMIT_KEY]["limit"] for r in held} == {"2/second"}
    assert {r.data[RATE_LIMIT_KEY]["group"] for r in held} == {boefje}
    count, first = waiting.summary()  # what `kat-scheduler status` shows
    assert count == len(held) and first is not None
    assert set(waiting.waiting_until([r.id for r in held])) == {r.id for r in held}

    env = kat_env(
        kat,
        postgres_uri,
        redis_url,
        SCHEDULER_RUNNER="simulated",
        SCHEDULER_RATE_LIMIT_POLL="0.05",
        SCHEDULER_RATE_LIMITS=f"{boefje}=2/second",
    )
    log = tmp_path / "w.log"
    with celery_worker("kat_scheduler", [Queue.BOEFJES.value], env, log_file=log, concurrency=2):
        done = wait_for(lambda: all(r.status in ENDED for r in rows_of(pg_engine)), timeout=60)
    assert done, log.read_text()[-4000:]

    ran = rows_of(pg_engine, plugin_id=boefje)
    assert [r.status for r in ran] == [TaskStatus.COMPLETED] * len(storm)
    assert all(r.attempts == 1 for r in ran)
    for r in ran:  # each ran exactly once, in Bytes too
        assert [run.id for run in world.runs(r.organisation, boefje, r.input_ooi) if run.id == r.id] == [r.id]
    assert most_in_any([r.started_at for r in ran], timedelta(seconds=1)) <= 2
    assert waiting.summary() == (0, None)


def candidate(boefje: Boefje, n: int, band: int = 3, org: str = "org") -> Candidate:
    ref = f"Hostname|internet|host-{n}.example.nl"
    return Candidate(
        organisation=org,
        boefje=boefje,
        input_ooi=ref,
        hash=boefje_task_hash(boefje.id, org, ref),
        rank=Rank(band=band, score=n, reason="new object"),
        trigger=Trigger.NEW_OBJECT,
    )


def test_the_listener_sends_a_group_what_it_may_start_now_most_urgent_first_and_spreads_the_rest_over_windows(
    redis_url: str,
) -> None:
    limited = BoefjeFactory(id="limited", rate_limit="2/second")  # Katalogus's own limit
    free = BoefjeFactory(id="free")
    budget = ListenerBudget.of(load_settings(broker_url=redis_url))
    # Five of the limited boefje, the least urgent first; three of the unlimited one.
    offered = [(uuid.uuid4(), candidate(limited, n, band=5 - n)) for n in range(5)]
    offered += [(uuid.uuid4(), candidate(free, n)) for n in range(3)]
    before = datetime.now(UTC)

    held = budget.hold_back(offered)

    limited_ids = [task_id for task_id, _ in offered[:5]]
    assert set(held) == set(limited_ids[:3])  # the two most urgent (bands 1 and 2) go now
    assert {(h.limit, h.group) for h in held.values()} == {("2/second", "limited")}
    # The first window's worth when the group's next room opens, the next a window later.
    first, second, third = (held[task_id].until for task_id in limited_ids[2::-1])
    assert before < first <= before + timedelta(seconds=1.5)
    assert second == first and third == first + timedelta(seconds=1)
    # Another batch right after: what was sent counts, so the group's next tasks all wait.
    more = [(uuid.uuid4(), candidate(limited, n, org="other")) for n in range(2)]
    assert set(budget.hold_back(more)) == {task_id for task_id, _ in more}


def test_without_a_store_to_count_in_the_listener_holds_nothing_back() -> None:
    budget = ListenerBudget.of(load_settings(broker_url="amqp://guest:guest@127.0.0.1:5672//"))
    assert budget.limiter is None
    offered = [(uuid.uuid4(), candidate(BoefjeFactory(id="limited", rate_limit="1/hour"), n)) for n in range(3)]
    assert budget.hold_back(offered) == {}


def test_tasks_held_for_a_pop_are_never_held_back_for_a_window(
    world: World,
    clients: KATClients,
    planner_settings: Settings,
    pg_engine: Engine,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With boefjes delivered by pull, the listener sends no message at all: OpenKAT's runners pop
    them, uncounted (operations: "Not covered"), so none of them waits for a window."""
    monkeypatch.setenv("SCHEDULER_PULL_SCHEDULERS", "boefje")
    get_settings.cache_clear()
    try:
        boefje, storm = limited_storm(world)
        settings = planner_settings.model_copy(update={"rate_limits": f"{boefje}=2/second"})
        with contextlib.closing(make_publisher(settings)) as publisher:
            handler = MutationHandler(
                PluginCache(clients.katalogus, ttl=60),
                TaskStore(pg_engine),
                ScheduleStore(pg_engine),
                publisher,
                settings,
            )
            assert handler(SCAN_PROFILE_MUTATIONS, storm) == []
    finally:
        get_settings.cache_clear()

    limited = rows_of(pg_engine, plugin_id=boefje)
    assert len(limited) == len(storm) and all(RATE_LIMIT_KEY not in r.data for r in limited)
    assert WaitingStore(pg_engine).summary() == (0, None)
    assert broker_messages(redis_url) == []
