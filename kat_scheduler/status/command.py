"""``kat-scheduler status`` (registered in :mod:`kat_scheduler.cli`)."""

from __future__ import annotations

import sys

import click

from kat_scheduler.settings import Settings, SettingsError, load_settings
from kat_scheduler.status.collect import EXAMPLES, collect_status
from kat_scheduler.status.render import render_table


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of tables.")
@click.option(
    "--examples",
    type=click.IntRange(0, 1000),
    default=EXAMPLES,
    show_default=True,
    help="Stalled rows listed per kind.",
)
@click.option(
    "--no-broker",
    is_flag=True,
    help="Do not read the broker (no queue depths): for a database whose broker is gone, "
    "such as an embedded run's after it stopped.",
)
@click.pass_context
def status_cmd(ctx: click.Context, as_json: bool, examples: int, no_broker: bool) -> None:
    """Queue depths per band, tasks by status, due schedules, last run per producer, stalled rows.

    Exits 1 when a section could not be collected (broker or database unreachable), else 0.
    """
    settings = ctx.obj if isinstance(ctx.obj, Settings) else None
    if settings is None:
        try:
            settings = load_settings()  # not the cached process settings: a command reads its environment now
        except SettingsError as exc:
            click.echo(f"kat-scheduler: {exc}", err=True)
            sys.exit(2)
    report = collect_status(settings, examples=examples, broker=not no_broker)
    click.echo(report.model_dump_json(indent=2) if as_json else render_table(report), nl=as_json)
    ctx.exit(0 if report.ok else 1)
