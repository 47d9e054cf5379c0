"""Kill what a dead supervisor leaves running: ``python -m kat_scheduler.run.watchdog GRACE``.

When the supervisor of ``kat-scheduler run`` dies without stopping its children (SIGKILL, the OOM
killer), each child gets SIGTERM from the guard (:mod:`kat_scheduler.run.guard`) and stops as it
would on a stop. A child can hang in its own shutdown, though: a Celery worker whose SIGTERM
arrives while its prefork pool is still starting can wait forever on a pool process that waits
on it. This watchdog makes sure nothing outlives the run anyway.

The supervisor starts it first and writes to its stdin, one line each, ``+PGID`` when it starts a
child (every child leads a process group of its own), ``-PGID`` when that child is gone, and
``end`` once it has stopped them all. Its stdin is a pipe whose only writer is the supervisor, so
an end of file without ``end`` means the supervisor died, however it died. Then the watchdog gives
the children ``GRACE`` seconds to stop on their SIGTERM and SIGKILLs every group still alive.
It ignores the signals a terminal or a stop sends, so only the supervisor's end ends it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterable

#: Seconds between two looks at the groups while they stop.
POLL = 0.1


def alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's group now: not ours to kill
        return False
    return True


def read_groups(lines: Iterable[str]) -> tuple[set[int], bool]:
    """The groups still running by the supervisor's ``lines`` (read as they come, until ``end`` or
    the end of the input), and whether it said ``end``."""
    groups: set[int] = set()
    for line in lines:
        line = line.strip()
        if line == "end":
            return groups, True
        if line[:1] in "+-" and line[1:].isdigit():
            (groups.add if line[0] == "+" else groups.discard)(int(line[1:]))
    return groups, False


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        sys.exit("usage: python -m kat_scheduler.run.watchdog GRACE_SECONDS")
    grace = float(argv[0])
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    groups, ended = read_groups(sys.stdin)  # until the supervisor's end, clean or not
    if ended:
        return
    deadline = time.monotonic() + grace
    while (groups := {pgid for pgid in groups if alive(pgid)}) and time.monotonic() < deadline:
        time.sleep(POLL)
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    if groups:
        print(
            f"kat-scheduler run's watchdog: killed {len(groups)} process group(s) left after the supervisor died "
            f"({', '.join(map(str, sorted(groups)))})",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
