"""Check that a command line names one of our entry points and that its arguments parse.

Used by the tests of the Procfile, docker-compose.yml and the commands quoted in the docs:
nothing is run, each command line is parsed by the very click command that would run it.
"""

from __future__ import annotations

import re
import shlex
import warnings
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")


def split_shell(line: str) -> list[list[str]]:
    """The simple commands of a shell line (``a && b`` gives two), without comments,
    redirections and leading ``VAR=value`` assignments."""
    words = shlex.split(line, comments=True)
    commands: list[list[str]] = [[]]
    redirect_target = False
    for word in words:
        if redirect_target:  # the file of a `> file`
            redirect_target = False
        elif word in ("&&", "||", ";", "|", "&"):
            commands.append([])
        elif word in (">", ">>", "<", "2>", "2>>"):
            redirect_target = True
        elif word not in ("2>&1",):
            commands[-1].append(word)
    out = []
    for command in commands:
        while command and ASSIGNMENT.match(command[0]):
            command = command[1:]
        if command:
            out.append(command)
    return out


def _parse_click(command: click.Command, name: str, args: list[str]) -> list[str]:
    """Parse ``args`` like click would before running ``command``; problems as text."""
    try:
        with command.make_context(name, list(args), resilient_parsing=False) as ctx:
            with warnings.catch_warnings():  # click 8.2 deprecates protected_args; 9.0 puts them in args
                warnings.simplefilter("ignore", DeprecationWarning)
                rest = [*getattr(ctx, "protected_args", []), *ctx.args]
            if isinstance(command, click.Group) and rest:
                sub = command.get_command(ctx, rest[0])
                if sub is None:
                    return [f"`{name}` has no command {rest[0]!r}"]
                return _parse_click(sub, f"{name} {rest[0]}", rest[1:])
    except click.exceptions.Exit:  # --help, --version
        return []
    except click.ClickException as exc:
        return [f"`{name} {' '.join(args)}`: {exc.format_message()}"]
    return []


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-z][a-z-]*):", text, flags=re.M))


def command_problems(argv: list[str]) -> list[str]:
    """Why ``argv`` would not start (empty: it would). Unknown programs are not ours to check."""
    from celery.bin.celery import celery

    from kat_scheduler.cli import main as kat_cli
    from kat_scheduler.queues import Queue

    if not argv:
        return []
    program = Path(argv[0]).name
    if program == "kat-scheduler":
        return _parse_click(kat_cli, "kat-scheduler", argv[1:])
    if program == "celery":
        if argv[1:3] != ["-A", "kat_scheduler"]:
            return [f"celery without `-A kat_scheduler`: {' '.join(argv)}"]
        if len(argv) < 4 or argv[3] not in celery.commands:
            return [f"celery has no command {argv[3] if len(argv) > 3 else ''!r}"]
        if "-Q" in argv:
            unknown = set(argv[argv.index("-Q") + 1].split(",")) - {q.value for q in Queue}
            if unknown:
                return [f"unknown queue(s) {sorted(unknown)}"]
        return []
    if program == "make":
        targets = [w for w in argv[1:] if not w.startswith("-") and "=" not in w]
        missing = [t for t in targets if t not in makefile_targets()]
        return [f"the Makefile has no target {t!r}" for t in missing]
    return []
