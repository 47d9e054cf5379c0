"""Backpressure: which bands producers may add, from the depth of the queue they feed (pure).

A queue holding more messages than its limit takes only the urgent bands (``0`` up to
``SCHEDULER_BACKPRESSURE_BAND``) until its workers have drained it. A depth that cannot be read
(the broker is down or struggling) counts as a deep queue, never as an empty one: that is exactly
when adding the whole backlog would hurt most. The tick, due schedules and ``status`` decide here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backpressure:
    """The decision for one queue: ``max_band`` is the highest band to add (``None``: any band)."""

    queue: str
    limit: int
    #: Messages waiting, or ``None`` when the depth could not be read.
    depth: int | None
    max_band: int | None
    #: Why the depth is unknown (an error's text, without secrets), when it is.
    error: str | None = None

    @property
    def on(self) -> bool:
        return self.max_band is not None

    @property
    def reason(self) -> str:
        """One line saying why bands are held back, or that they are not."""
        if self.depth is None:
            why = f"the depth of queue {self.queue} could not be read" + (f" ({self.error})" if self.error else "")
            return f"{why}: only bands <= {self.max_band} are added, as when the queue is deep"
        held = "every band is added" if self.max_band is None else f"only bands <= {self.max_band} are added"
        return f"queue {self.queue} holds {self.depth} messages (limit {self.limit}): {held}"


def backpressure(queue: str, depth: int | None, *, limit: int, band: int, error: str | None = None) -> Backpressure:
    """Bands above ``band`` are held back when ``depth`` exceeds ``limit`` or is unknown (``None``)."""
    held = depth is None or depth > limit
    return Backpressure(queue=queue, limit=limit, depth=depth, max_band=band if held else None, error=error)
