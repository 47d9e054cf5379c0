"""The one message factory: a task's message is the same whether a producer sends it or the reaper
republishes it from the stored row."""

from __future__ import annotations

import uuid

from kat_scheduler.dispatch.messages import dispatchable, message_for, message_of, messages_of
from kat_scheduler.dispatch.publishing import OutgoingMessage
from kat_scheduler.models.tasks import SchedulerId
from tests.factories import NewTaskFactory


def test_a_boefje_task_runs_as_kat_boefje_run_on_the_boefjes_queue_with_its_identifiers():
    task = NewTaskFactory.build(organisation="aa", plugin_id="dns-records", input_ooi="Hostname|internet|a.nl", band=3)

    message = message_of(dispatchable(task))

    assert message == OutgoingMessage(
        task.id,
        "kat.boefje.run",
        "boefjes",
        3,
        {"organisation": "aa", "boefje_id": "dns-records", "input_ooi": "Hostname|internet|a.nl"},
    )


def test_a_normalizer_task_runs_on_its_raw_file():
    raw_id = str(uuid.uuid4())
    task = NewTaskFactory.build(
        scheduler_id=SchedulerId.NORMALIZER,
        type="normalizer",
        plugin_id="kat_dns_normalize",
        band=1,
        data={"raw_data": {"id": raw_id}},
    )

    message = message_of(dispatchable(task, raw_id=raw_id))

    assert (message.task_name, message.queue, message.band) == ("kat.normalizer.run", "normalizers", 1)
    assert message.kwargs == {"organisation": "aa", "normalizer_id": "kat_dns_normalize", "raw_data_id": raw_id}


def test_a_republished_row_carries_the_message_its_producer_sent():
    raw_id = str(uuid.uuid4())
    boefje = NewTaskFactory.build()
    normalizer = NewTaskFactory.build(
        scheduler_id=SchedulerId.NORMALIZER,
        type="normalizer",
        plugin_id="kat_dns_normalize",
        data={"raw_data": {"id": raw_id}},
    )

    assert message_for(boefje) == message_of(dispatchable(boefje))
    assert message_for(normalizer) == message_of(dispatchable(normalizer, raw_id=raw_id))
    assert message_for(normalizer) == message_of(dispatchable(normalizer))


def test_a_batch_gets_the_messages_of_its_items_in_order():
    items = [dispatchable(task) for task in NewTaskFactory.build_batch(3)]

    assert messages_of(items) == [message_of(item) for item in items]
