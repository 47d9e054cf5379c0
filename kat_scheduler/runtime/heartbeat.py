"""A liveness file for long-running loops (the listener, beat), for container health checks.

A loop calls :meth:`Heartbeat.beat` each time round; at most every ``every`` seconds it sets the
file's modification time to now. ``kat-scheduler heartbeat --max-age N`` exits 0 while the file
is younger than N seconds. A process whose loop hangs (a stuck connection, a deadlock) stops
beating, which a process-exists check would never notice.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

logger = logging.getLogger(__name__)

#: Seconds between two touches of the file (a health check should allow several).
BEAT_EVERY = 5.0


class Heartbeat:
    def __init__(self, path: str | os.PathLike[str] | None, every: float = BEAT_EVERY) -> None:
        self.path = Path(path) if path else None
        self.every = every
        self._last = float("-inf")
        self._warned = False

    def beat(self) -> None:
        """Touch the file if ``every`` seconds passed since the last touch; never raises."""
        if self.path is None:
            return
        now = time.monotonic()
        if now - self._last < self.every:
            return
        self._last = now
        try:
            self.path.touch()
            self._warned = False
        except OSError as exc:
            if not self._warned:  # once per failure streak, not every few seconds
                logger.error("cannot touch the heartbeat file %s: %s", self.path, exc)
                self._warned = True


def age(path: str | os.PathLike[str]) -> float | None:
    """Seconds since ``path`` was last touched; ``None`` when it does not exist."""
    try:
        return max(0.0, time.time() - Path(path).stat().st_mtime)
    except FileNotFoundError:
        return None
