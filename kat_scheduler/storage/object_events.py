"""Per object, which listener process handled its scan-profile mutations last (``object_events``).

KAT's ``scan_profile_mutations`` carry no time and no sequence number, and several listener
processes consuming the one queue may handle two events of an object in either order. A batch
therefore :meth:`ObjectEventStore.enter`\\ s its objects first: one upsert that writes this
listener's name on each object's row and keeps the rows locked until the batch's claims and
cancellations are written (:meth:`Fence.release`), so the batches of one object are written one
after another, never interleaved. An object whose row another listener wrote within the reorder
window is *contested*: this batch's events may be older than what that listener handled, so the
handler takes the object's state from Octopoes instead (see :mod:`kat_scheduler.events.handlers`).
So is an object whose event the broker delivered again (it went back on the queue: a failed batch,
a killed listener) that anyone handled within the window, and, for a window after this process
failed a batch, any object this process handled within it.

A listener that stops cleanly :meth:`ObjectEventStore.retire`\\ s its name once its last batch is
written and acked: it has no batch in flight, so its rows contest nothing any more as "another
listener's" (a listener started after it, a deploy or a restart, handles its objects without a
look-up). They keep their time and last event for the redelivery rule: what it had received but
not acked comes back marked redelivered. A killed listener cannot retire: its rows contest for the
reorder window.

The time in the rows and the window are the database's clock, so listeners on different hosts
agree. On SQLite (one process) there is nothing to order: :meth:`enter` locks nothing and
contests nothing.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import Connection, Engine, bindparam, delete, func, literal, select, text, tuple_, update

from kat_scheduler.storage.sqlutil import json_text
from kat_scheduler.storage.tables import ObjectEventRow, table_of

_EVENTS = table_of(ObjectEventRow)

#: An object: (organisation, primary key).
ObjectKey = tuple[str, str]

#: How long after a listener handled an object another listener's batch of it is contested: longer
#: than an event waits in a listener between the broker's delivery and its handling (the two
#: batches of its prefetch, however slow).
REORDER_WINDOW = timedelta(minutes=1)
#: How long after anyone handled an object an event of it the broker delivers again is contested:
#: longer than an event can be away before it comes back (a failed batch's backoff, at most 30
#: seconds; a dead listener's connection, noticed by RabbitMQ's heartbeat within a minute or two).
REDELIVERY_WINDOW = timedelta(minutes=5)
#: The listener of the rows of a listener that stopped cleanly (:meth:`ObjectEventStore.retire`);
#: no listener's name (those are ``host:pid:part``).
RETIRED = "(retired)"


#: Registers a batch's objects (see :meth:`ObjectEventStore.enter`).
_ENTER = text(
    """
    INSERT INTO object_events AS o (organisation, primary_key, listener, handled_at, contested, last_event)
    SELECT row_->>0, row_->>1, :listener, now(), false, row_->>2
    FROM jsonb_array_elements(CAST(:rows AS jsonb)) WITH ORDINALITY AS rows_(row_, n_)
    ORDER BY n_
    ON CONFLICT (organisation, primary_key) DO UPDATE SET
        listener = excluded.listener,
        handled_at = now(),
        contested = (
            (o.listener <> excluded.listener AND o.listener <> :retired AND o.handled_at > now() - :window)
            OR (
                o.handled_at > now() - :redelivery_window
                AND (
                    :distrust
                    OR (excluded.organisation, excluded.primary_key) IN (
                        SELECT key_->>0, key_->>1 FROM jsonb_array_elements(CAST(:suspect AS jsonb)) AS keys_(key_)
                    )
                )
            )
        ) AND o.last_event IS DISTINCT FROM excluded.last_event,
        last_event = excluded.last_event
    RETURNING organisation, primary_key, contested
    """
)


@dataclass
class Fence:
    """A batch's hold on its objects' rows: released once its claims and cancellations are written."""

    #: The objects another listener handled within the window.
    contested: set[ObjectKey] = field(default_factory=set)
    connection: Connection | None = None

    def applied(self, events: Mapping[ObjectKey, str]) -> None:
        """Record what the batch applied to some objects instead of its own last events (see :func:`event_key`)."""
        if self.connection is None or not events:
            return
        statement = (
            update(_EVENTS)
            .where(_EVENTS.c.organisation == bindparam("org"), _EVENTS.c.primary_key == bindparam("pk"))
            .values(last_event=bindparam("event"))
        )
        self.connection.execute(
            statement, [{"org": org, "pk": pk, "event": event} for (org, pk), event in sorted(events.items())]
        )

    def release(self, *, written: bool = True) -> None:
        """Let the next batch of these objects in; ``written=False`` forgets this batch's registration."""
        connection, self.connection = self.connection, None
        if connection is None:
            return
        try:
            if written:
                connection.commit()
            else:
                connection.rollback()
        finally:
            connection.close()


class ObjectEventStore:
    """``object_events`` for the listener process named ``listener``.

    An event the broker delivers again went back on the queue (a failed batch, a dead listener) and
    may come after later events of its object, handled by anyone, this process too: its object is
    contested when anyone handled it within ``redelivery_window``. On a transport that does not say
    so, a failed batch (:meth:`after_failure`) makes this process distrust its own rows for as long.
    """

    def __init__(
        self,
        engine: Engine,
        listener: str,
        window: timedelta = REORDER_WINDOW,
        redelivery_window: timedelta = REDELIVERY_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.listener = listener
        self.window = window
        self.redelivery_window = redelivery_window
        self.clock = clock
        self.ordered = engine.dialect.name == "postgresql"
        self._failed_at: float | None = None

    def after_failure(self) -> None:
        """A batch failed and goes back on the queue: distrust this process's own order for a window."""
        self._failed_at = self.clock()

    def _distrusting_own(self) -> bool:
        return self._failed_at is not None and self.clock() - self._failed_at < self.redelivery_window.total_seconds()

    def enter(self, objects: Mapping[ObjectKey, str], suspect: Collection[ObjectKey] = ()) -> Fence:
        """Register ``objects`` (each with its batch's last event, :func:`event_key`) as handled by
        this listener now; the fence holds their rows.

        Waits while another listener's batch holds any of them. Rows are written in key order, so
        two batches never wait for each other crosswise. An object is contested when another
        listener handled it within the window, or anyone within the redelivery window and it is
        ``suspect`` (its event was delivered before) or this process failed a batch within that
        window; unless the row's last event is this batch's: handling that event again changes
        nothing that handling it did. One statement, its rows one bound JSON document.
        """
        if not self.ordered or not objects:
            return Fence()
        parameters = {
            "rows": json_text([[org, pk, objects[(org, pk)]] for org, pk in sorted(objects)]),
            "listener": self.listener,
            "retired": RETIRED,
            "window": self.window,
            "redelivery_window": self.redelivery_window,
            "distrust": self._distrusting_own(),
            "suspect": json_text(sorted(suspect)),
        }
        connection = self.engine.connect()
        try:
            # The rows only say who handled what last; one lost in a crash costs at most a look-up,
            # and the batches a crash cuts off come back marked redelivered. No wait for the disk.
            connection.execute(text("SET LOCAL synchronous_commit TO off"))
            result = connection.execute(_ENTER, parameters)
            contested = {(org, pk) for org, pk, was in result if was}
        except BaseException:
            connection.rollback()
            connection.close()
            raise
        return Fence(contested, connection)

    @contextlib.contextmanager
    def held(self, objects: Collection[ObjectKey]) -> Iterator[set[ObjectKey]]:
        """Which of ``objects`` no other listener process has handled since this one; they stay so inside.

        A write after the batch (its schedules) is done inside, for those objects only: another
        listener's batch of them waits until it is written.
        """
        if not self.ordered or not objects:
            yield set(objects)
            return
        keys = sorted(objects)
        statement = (
            select(_EVENTS.c.organisation, _EVENTS.c.primary_key)
            .where(tuple_(_EVENTS.c.organisation, _EVENTS.c.primary_key).in_(keys))
            .where(_EVENTS.c.listener == self.listener)
            # In the order enter() takes them (Python's, by code point: the "C" collation), so the
            # two never wait for each other crosswise.
            .order_by(_EVENTS.c.organisation.collate("C"), _EVENTS.c.primary_key.collate("C"))
            .with_for_update(read=True)
        )
        with self.engine.begin() as connection:
            yield {(org, pk) for org, pk in connection.execute(statement)}

    def retire(self) -> int:
        """On a clean stop, once the last batch is written and acked (and its schedules): this
        listener's rows contest no other listener's batches any more; how many.

        It has no batch in flight, and what it received but did not ack comes back marked
        redelivered, so the rows keep their time and last event for the redelivery rule. A row
        another listener's batch holds is skipped, not waited for: that batch makes it its own (or,
        failing, leaves it ours, which only costs a look-up).
        """
        if not self.ordered:
            return 0
        keys = (_EVENTS.c.organisation, _EVENTS.c.primary_key)
        mine = select(*keys).where(_EVENTS.c.listener == self.listener).with_for_update(skip_locked=True)
        with self.engine.begin() as connection:
            result = connection.execute(update(_EVENTS).where(tuple_(*keys).in_(mine)).values(listener=RETIRED))
        return result.rowcount

    def prune(self) -> int:
        """Forget rows older than the longest window: they can contest nothing any more."""
        if not self.ordered:
            return 0
        horizon = max(self.window, self.redelivery_window)
        with self.engine.begin() as connection:
            result = connection.execute(delete(_EVENTS).where(_EVENTS.c.handled_at < func.now() - literal(horizon)))
        return result.rowcount


def event_key(operation: str, level: int | None) -> str:
    """What a mutation does to an object, for :attr:`ObjectEventRow.last_event`: ``delete``, or
    the operation and the object's scan level (``update:2``): all that decides which boefjes it
    weighs or withdraws."""
    return "delete" if level is None else f"{operation}:{level}"
