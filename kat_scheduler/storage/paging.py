"""One page of a listing, newest first, with a count that may stop at a cap (the API's lists)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, Engine, Select, func, select
from sqlalchemy.orm import Session

from kat_scheduler.storage.tables import ScheduleRow, TaskRow

RowT = TypeVar("RowT", TaskRow, ScheduleRow)


@dataclass(frozen=True, slots=True)
class Page(Generic[RowT]):
    rows: list[RowT]
    #: How many rows match; with a cap, at most the cap.
    count: int
    #: The count stopped at the cap: there are at least ``count`` rows.
    partial: bool = False


def newest_first(
    engine: Engine,
    model: type[RowT],
    conditions: Sequence[ColumnElement[bool]],
    *,
    offset: int,
    limit: int,
    count_cap: int | None = None,
) -> Page[RowT]:
    """Rows of ``model`` matching ``conditions``, newest ``created_at`` first, and their count.

    ``limit`` 0 counts only. With ``count_cap``, the count reads at most that many rows (a listing
    of millions needs no exact total to show its first pages) and says when it stopped.
    """
    matching: Select[Any] = select(model.id).where(*conditions)
    if count_cap is not None:
        matching = matching.limit(count_cap)
    with Session(engine, expire_on_commit=False) as session:
        count = session.execute(select(func.count()).select_from(matching.subquery())).scalar_one()
        rows: list[RowT] = []
        if limit > 0:
            stmt = (
                select(model).where(*conditions).order_by(model.created_at.desc(), model.id).offset(offset).limit(limit)
            )
            rows = list(session.execute(stmt).scalars())
    return Page(rows, count, count_cap is not None and count >= count_cap)
