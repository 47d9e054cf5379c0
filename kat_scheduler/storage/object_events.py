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

The time in the rows and the window are the database's clock, so listeners on different hosts
agree. On SQLite (one process) there is nothing to order: :meth:`enter` locks nothing and
contests nothing.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import ColumnElement, Connection, Engine, delete, func, literal, select, true, tuple_
from sqlalchemy.dialects.postgresql import insert as pg_insert

from kat_scheduler.storage.tables import ObjectEventRow, table_of

_EVENTS = table_of(ObjectEventRow)

#: An object: (organisation, primary key).
ObjectKey = tuple[str, str]

#: How long after a listener handled an object another listener's batch of it is contested: longer
#: than an event can wait between the broker and its handling (a batch retried after the
#: listener's longest backoff, 30 seconds, and a few batches' handling besides).
REORDER_WINDOW = timedelta(minutes=2)


@dataclass
class Fence:
    """A batch's hold on its objects' rows: released once its claims and cancellations are written."""

    #: The objects another listener handled within the window.
    contested: set[ObjectKey] = field(default_factory=set)
    connection: Connection | None = None

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

    A failed batch goes back on the queue and may come back after later events of its objects were
    handled, by this process too: for a window after a failure (:meth:`after_failure`), an object
    this process handled within the window is contested as well.
    """

    def __init__(
        self,
        engine: Engine,
        listener: str,
        window: timedelta = REORDER_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.listener = listener
        self.window = window
        self.clock = clock
        self.ordered = engine.dialect.name == "postgresql"
        self._failed_at: float | None = None

    def after_failure(self) -> None:
        """A batch failed and goes back on the queue: distrust this process's own order for a window."""
        self._failed_at = self.clock()

    def _distrusting_own(self) -> bool:
        return self._failed_at is not None and self.clock() - self._failed_at < self.window.total_seconds()

    def enter(self, objects: Collection[ObjectKey], suspect: Collection[ObjectKey] = ()) -> Fence:
        """Register ``objects`` as handled by this listener now; the fence holds their rows.

        Waits while another listener's batch holds any of them. Rows are written in key order, so
        two batches never wait for each other crosswise. An object handled within the window is
        contested when another listener handled it, or whoever did when it is ``suspect`` (its
        event was delivered before: it may come after later ones) or this process failed a batch
        within the window.
        """
        if not self.ordered or not objects:
            return Fence()
        rows = [{"organisation": org, "primary_key": pk, "listener": self.listener} for org, pk in sorted(objects)]
        insert = pg_insert(_EVENTS).values([{**row, "handled_at": func.now(), "contested": False} for row in rows])
        distrusted: ColumnElement[bool] = _EVENTS.c.listener != insert.excluded.listener
        if self._distrusting_own():
            distrusted = true()
        elif suspect:
            keys = tuple_(insert.excluded.organisation, insert.excluded.primary_key)
            distrusted = distrusted | keys.in_(sorted(suspect))
        statement = insert.on_conflict_do_update(
            index_elements=[_EVENTS.c.organisation, _EVENTS.c.primary_key],
            set_={
                "listener": insert.excluded.listener,
                "handled_at": func.now(),
                "contested": distrusted & (_EVENTS.c.handled_at > func.now() - literal(self.window)),
            },
        ).returning(_EVENTS.c.organisation, _EVENTS.c.primary_key, _EVENTS.c.contested)
        connection = self.engine.connect()
        try:
            result = connection.execute(statement)
            contested = {(org, pk) for org, pk, flag in result if flag}
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
            .order_by(_EVENTS.c.organisation, _EVENTS.c.primary_key)
            .with_for_update(read=True)
        )
        with self.engine.begin() as connection:
            yield {(org, pk) for org, pk in connection.execute(statement)}

    def prune(self) -> int:
        """Forget rows older than twice the window: nothing handled since can be contested by them."""
        if not self.ordered:
            return 0
        with self.engine.begin() as connection:
            result = connection.execute(
                delete(_EVENTS).where(_EVENTS.c.handled_at < func.now() - literal(self.window * 2))
            )
        return result.rowcount
