"""Run a command that dies with its parent: ``python -m kat_scheduler.run.guard PPID CMD ARGS…``.

The supervisor starts every child through this guard. It asks Linux to send the child SIGTERM
when the supervisor dies (``PR_SET_PDEATHSIG``, kept across ``exec``), checks that the supervisor
did not die before that, and then becomes the command. So a supervisor killed with SIGKILL (or
by the OOM killer) leaves no process set running on its own. Elsewhere the guard only execs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        sys.exit("usage: python -m kat_scheduler.run.guard PARENT_PID COMMAND [ARGS...]")
    parent, command = int(argv[0]), argv[1:]
    die_with_parent()
    if os.getppid() != parent:  # the supervisor died before the death signal was armed
        sys.exit(0)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
