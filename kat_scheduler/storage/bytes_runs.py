"""Bytes' newest run per (boefje, object, organisation) pair, as the scheduler last saw it.

The tick lists a boefje's history in Bytes in bulk, once per organisation; :meth:`BytesRunStore.record`
keeps the newest run of every object in that listing (eligible then or not). Between listings, each
raw file Bytes announces carries its run's BoefjeMeta, which the listener keeps the same way
(:meth:`BytesRunStore.record_reported`), so a run another runner finished after the listing is known
too. The event handlers and due schedules read it by hash (:meth:`BytesRunStore.newest`) for the
pairs our own history does not cover. So an event that raises an object's level knows that Bytes
shows a run still going, or one that ended inside the grace period, without a request to Bytes.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, delete, or_, select
from sqlalchemy.dialects import postgresql, sqlite

from kat_scheduler.rules import BytesRun
from kat_scheduler.storage.sqlutil import in_values, pg_insert_rows
from kat_scheduler.storage.tables import BytesHistoryRow, BytesRunRow, table_of

_BYTES_RUNS = table_of(BytesRunRow)
_HISTORIES = table_of(BytesHistoryRow)
#: Rows per statement.
CHUNK = 1000

_PG_COLUMNS = {
    "hash": "text",
    "organisation": "text",
    "plugin_id": "text",
    "input_ooi": "text",
    "started_at": "timestamptz",
    "ended_at": "timestamptz",
    "seen_at": "timestamptz",
}
#: A row seen later wins; one seen earlier (a slower tick finishing last) changes nothing.
_PG_CONFLICT = (
    "(hash) DO UPDATE SET started_at = EXCLUDED.started_at, ended_at = EXCLUDED.ended_at, "
    "seen_at = EXCLUDED.seen_at WHERE bytes_runs.seen_at <= EXCLUDED.seen_at"
)
#: A run reported on its own (a raw file's BoefjeMeta) wins only when it is as new as the kept
#: one or newer: a late raw file of an older run never hides a newer run.
_PG_CONFLICT_NEWER = (
    "(hash) DO UPDATE SET started_at = EXCLUDED.started_at, ended_at = EXCLUDED.ended_at, "
    "seen_at = EXCLUDED.seen_at WHERE bytes_runs.started_at IS NULL OR bytes_runs.started_at <= EXCLUDED.started_at"
)


@dataclass(frozen=True, slots=True)
class SeenRun:
    """Bytes' newest run of the pair of ``hash``: its start and its end (``None``: not ended when seen)."""

    hash: str
    organisation: str
    plugin_id: str
    input_ooi: str
    started_at: datetime | None
    ended_at: datetime | None


class BytesRunStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def listing_state(self, organisation: str, *, now: datetime, stall_age: timedelta) -> tuple[set[str], set[str]]:
        """Of ``organisation``: the boefjes whose history in Bytes a tick has listed, and those of
        them with a run that was going when it was seen and has passed ``stall_age`` since (it has
        ended or died by now, which only listing that history again tells)."""
        cols = _BYTES_RUNS.c
        # The runs seen without an end (the partial index ix_bytes_runs_unended): few; compared here,
        # which works alike on both backends.
        unended = select(cols.plugin_id, cols.started_at, cols.seen_at).where(
            cols.organisation == organisation, cols.ended_at.is_(None)
        )
        with self.engine.connect() as conn:
            listed = set(
                conn.execute(select(_HISTORIES.c.plugin_id).where(_HISTORIES.c.organisation == organisation)).scalars()
            )
            overdue = {
                plugin_id
                for plugin_id, started, seen in conn.execute(unended)
                if started is not None and seen - started < stall_age <= now - started
            }
        return listed, overdue

    def record_listed(self, listings: Collection[tuple[str, str]], seen_at: datetime) -> None:
        """Note that the histories of these (organisation, boefje) were listed at ``seen_at``."""
        if not listings:
            return
        rows = [{"organisation": o, "plugin_id": p, "seen_at": seen_at} for o, p in sorted(set(listings))]
        with self.engine.begin() as conn:
            insert = postgresql.insert(_HISTORIES) if conn.dialect.name == "postgresql" else sqlite.insert(_HISTORIES)
            stmt = insert.on_conflict_do_update(
                index_elements=[_HISTORIES.c.organisation, _HISTORIES.c.plugin_id],
                set_={"seen_at": insert.excluded.seen_at},
                where=_HISTORIES.c.seen_at <= insert.excluded.seen_at,
            )
            for start in range(0, len(rows), CHUNK):
                conn.execute(stmt, rows[start : start + CHUNK])

    def record(self, runs: Sequence[SeenRun], seen_at: datetime) -> None:
        """Keep ``runs`` as Bytes' newest runs of their pairs at ``seen_at`` (one row per hash,
        upserted): a listing of a boefje's whole history, so the one seen last wins."""
        self._upsert(runs, seen_at, newer_only=False)

    def record_reported(self, runs: Sequence[SeenRun], seen_at: datetime) -> None:
        """Keep ``runs``, each reported on its own (by a raw file's BoefjeMeta), where it is at least
        as new as the run kept for its pair: so the listener knows of a run Bytes got between two
        listings (another runner's, or a scheduler's before ours), and a late raw file of an older
        run changes nothing."""
        newest: dict[str, SeenRun] = {}
        for run in runs:
            if run.started_at is None:
                continue
            kept = newest.get(run.hash)
            if kept is None or (kept.started_at is not None and kept.started_at <= run.started_at):
                newest[run.hash] = run
        self._upsert(list(newest.values()), seen_at, newer_only=True)

    def _upsert(self, runs: Sequence[SeenRun], seen_at: datetime, *, newer_only: bool) -> None:
        if not runs:
            return
        ordered = sorted({run.hash: run for run in runs}.values(), key=lambda run: run.hash)  # one lock order
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                rows = [
                    (r.hash, r.organisation, r.plugin_id, r.input_ooi, r.started_at, r.ended_at, seen_at)
                    for r in ordered
                ]
                conflict = _PG_CONFLICT_NEWER if newer_only else _PG_CONFLICT
                pg_insert_rows(conn, "bytes_runs", _PG_COLUMNS, rows, conflict=conflict, page_size=CHUNK)
                return
            insert = sqlite.insert(_BYTES_RUNS)
            kept = _BYTES_RUNS.c
            stmt = insert.on_conflict_do_update(
                index_elements=[kept.hash],
                set_={
                    "started_at": insert.excluded.started_at,
                    "ended_at": insert.excluded.ended_at,
                    "seen_at": insert.excluded.seen_at,
                },
                where=(
                    or_(kept.started_at.is_(None), kept.started_at <= insert.excluded.started_at)
                    if newer_only
                    else kept.seen_at <= insert.excluded.seen_at
                ),
            )
            for start in range(0, len(ordered), CHUNK):
                conn.execute(
                    stmt,
                    [
                        {
                            "hash": r.hash,
                            "organisation": r.organisation,
                            "plugin_id": r.plugin_id,
                            "input_ooi": r.input_ooi,
                            "started_at": r.started_at,
                            "ended_at": r.ended_at,
                            "seen_at": seen_at,
                        }
                        for r in ordered[start : start + CHUNK]
                    ],
                )

    def newest(self, hashes: Collection[str]) -> dict[str, BytesRun]:
        """Bytes' newest run of each of ``hashes`` as last seen; absent: none seen (none, or too old to matter)."""
        found: dict[str, BytesRun] = {}
        if not hashes:
            return found
        cols = _BYTES_RUNS.c
        with self.engine.connect() as conn:
            for condition in in_values(conn, cols.hash, list(hashes)):
                for hash_, started, ended in conn.execute(
                    select(cols.hash, cols.started_at, cols.ended_at).where(condition)
                ):
                    found[hash_] = BytesRun(started, ended)
        return found

    def prune(self, seen_before: datetime) -> int:
        """Forget what no tick has seen since ``seen_before``: runs of pairs whose history was not
        listed since (their objects are gone, or their runs are too old to change a decision), and
        the listings themselves (a boefje still planned is listed again by the next tick). How
        many runs were deleted."""
        with self.engine.begin() as conn:
            pruned = int(conn.execute(delete(_BYTES_RUNS).where(_BYTES_RUNS.c.seen_at < seen_before)).rowcount)
            conn.execute(delete(_HISTORIES).where(_HISTORIES.c.seen_at < seen_before))
        return pruned
