"""What the database can store, as types for the wire models: refused at the boundary.

A value our tables cannot hold (a key longer than its column, a NUL character, which PostgreSQL
text cannot contain) is a permanent error of the one event, object or plugin that carries it. The
wire models refuse it when they are read, so a bad value is dead-lettered or skipped with its
reason and never reaches a statement that would fail the whole batch or organisation. The column
lengths in ``storage/tables.py`` are these numbers (a test checks that they agree).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, StringConstraints

#: ``input_ooi`` (an object's primary key) in ``tasks``, ``schedules`` and ``bytes_runs``.
OBJECT_KEY_LENGTH = 1024
#: ``organisation`` and ``plugin_id``.
ID_LENGTH = 128


def _without_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("contains a NUL character, which the database cannot store")
    return value


#: An object's primary key (or a scan profile's reference).
ObjectKey = Annotated[str, StringConstraints(max_length=OBJECT_KEY_LENGTH), AfterValidator(_without_nul)]
#: An organisation's or a plugin's id.
Identifier = Annotated[str, StringConstraints(max_length=ID_LENGTH), AfterValidator(_without_nul)]


def storable_key(value: str) -> bool:
    """Whether ``value`` fits an object key column (for data read in bulk without a model per item)."""
    return len(value) <= OBJECT_KEY_LENGTH and "\x00" not in value
