"""``kat-scheduler explain --org ORG --ooi REF [--format table|json]``.

Registered in :mod:`kat_scheduler.cli`; also runs as ``python -m kat_scheduler.explain``. Exits 0
with the answer, 1 when the object or the organisation does not exist or a service or the
database cannot answer (one line on stderr), 2 for what cannot be an organisation or an object
key, bad settings, or a database without the newest schema.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import click

from kat_scheduler.explain.decide import Policy
from kat_scheduler.explain.facts import BadRequest, ObjectNotFound, Sources, check_request
from kat_scheduler.explain.render import FORMATS, render
from kat_scheduler.explain.service import explain_object
from kat_scheduler.settings import Settings, SettingsError, load_settings, masked_url


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"kat-scheduler: {message}", err=True)
    sys.exit(code)


@click.command("explain")
@click.option("--org", required=True, help="Organisation id.")
@click.option("--ooi", "reference", required=True, help="The object's primary key, e.g. Hostname|internet|example.nl.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.pass_context
def explain_cmd(ctx: click.Context, org: str, reference: str, fmt: str) -> None:
    """Why OOI is or is not scanned: every boefje consuming its type, with the rule that decides now.

    Decisions: queue (band), not_enabled, clearance, grace or cron (until), live (the task), running
    or stalled (in Bytes). JSON: one object per line and boefje.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from kat_scheduler.clients import OrganisationNotFound, ServiceError, clients_from_settings
    from kat_scheduler.storage import migrate
    from kat_scheduler.storage.db import make_engine

    try:
        check_request(org, reference)
    except BadRequest as exc:
        raise click.BadParameter(str(exc)) from None
    settings = ctx.obj if isinstance(ctx.obj, Settings) else None
    if settings is None:
        try:
            settings = load_settings()
        except SettingsError as exc:
            _fail(str(exc), 2)
            return
    try:
        migrate.require_schema(settings.db_uri)
    except migrate.DatabaseNotReady as exc:
        _fail(str(exc), 2 if isinstance(exc, migrate.SchemaNotReady) else 1)
    engine = make_engine(settings.db_uri, pool_size=4)
    clients = clients_from_settings(settings)
    try:
        answer = explain_object(Sources.on(engine, clients), Policy.of(settings), org, reference, now=datetime.now(UTC))
    except ObjectNotFound as exc:
        _fail(str(exc))
        return
    except OrganisationNotFound:
        _fail(f"organisation {org!r} is not known to Katalogus at {masked_url(clients.katalogus.base_url)}")
        return
    except ServiceError as exc:
        _fail(f"not explained: {exc}")
        return
    except SQLAlchemyError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        _fail(f"not explained: the database {masked_url(settings.db_uri)} did not answer: {reason}")
        return
    finally:
        clients.close()
        engine.dispose()
    for line in render(answer.facts, answer.explanations, fmt):
        click.echo(line)
