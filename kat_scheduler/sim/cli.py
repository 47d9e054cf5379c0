"""``kat-scheduler sim``: serve the simulated KAT services, and publish KAT's events.

- ``sim serve`` runs Octopoes, Katalogus and Bytes on a generated world until interrupted;
  with ``--events-url`` the world's events go to that broker as KAT publishes them.
- ``sim publish-mutations`` / ``sim publish-raw`` publish storms of ``scan_profile_mutations`` /
  ``raw_file_received`` events about the same deterministic world (the same world options
  give the same objects and boefje runs as ``sim serve``).
"""

from __future__ import annotations

import gc
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any, TypeVar

import click

from kat_scheduler.queues import RAW_FILE_RECEIVED, SCAN_PROFILE_MUTATIONS
from kat_scheduler.sim import events
from kat_scheduler.sim.server import SimulatedKAT
from kat_scheduler.sim.world import World, WorldConfig, generate_world

F = TypeVar("F", bound=Callable[..., Any])


def world_options_with(*, organisations: int = 3, oois_per_org: int = 100) -> Callable[[F], F]:
    """``--seed``, ``--organisations``, ``--oois-per-org`` and ``--boefjes`` with these defaults."""

    def decorate(command: F) -> F:
        options = (
            click.option("--seed", type=int, default=1, show_default=True, help="Seed of the generated world."),
            click.option("--organisations", type=click.IntRange(min=0), default=organisations, show_default=True),
            click.option("--oois-per-org", type=click.IntRange(min=0), default=oois_per_org, show_default=True),
            click.option("--boefjes", type=click.IntRange(min=0), default=10, show_default=True),
        )
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def world_options(command: F) -> F:
    """``--seed``, ``--organisations``, ``--oois-per-org`` and ``--boefjes``: what world to generate."""
    return world_options_with()(command)


history_option = click.option("--history-fraction", type=click.FloatRange(0.0, 1.0), default=0.3, show_default=True)


@click.group(name="sim")
def sim() -> None:
    """The simulated KAT services (Octopoes, Katalogus, Bytes) on a generated world."""


@sim.command()
@world_options
@history_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--octopoes-port", type=click.IntRange(0, 65535), default=8001, show_default=True)
@click.option("--katalogus-port", type=click.IntRange(0, 65535), default=8003, show_default=True)
@click.option("--bytes-port", type=click.IntRange(0, 65535), default=8002, show_default=True)
@click.option("--bytes-username", default="bytes", show_default=True, envvar="BYTES_USERNAME")
@click.option("--bytes-password", default="bytes", envvar="BYTES_PASSWORD", help="Password Bytes accepts.")
@click.option(
    "--events-url",
    metavar="URL",
    help="Broker (amqp://… or redis://…) to publish the world's events on, as KAT does. Unset: none.",
)
@click.option(
    "--shared-domains",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Domains of a pool several organisations hold, each at its own level (for deduplication).",
)
@click.option(
    "--deschedule-boefje/--no-deschedule-boefje",
    default=False,
    show_default=True,
    help="Add the boefje that deschedules a quarter of its addresses (internetdb; for deschedule).",
)
def serve(
    seed: int,
    organisations: int,
    oois_per_org: int,
    boefjes: int,
    history_fraction: float,
    host: str,
    octopoes_port: int,
    katalogus_port: int,
    bytes_port: int,
    bytes_username: str,
    bytes_password: str,
    events_url: str | None,
    shared_domains: int,
    deschedule_boefje: bool,
) -> None:
    """Generate a world and serve it until Ctrl-C or SIGTERM.

    Prints ``OCTOPOES_API=…``, ``KATALOGUS_API=…`` and ``BYTES_API=…`` lines first, so the
    output can be sourced into a shell.
    """
    config = WorldConfig(
        seed=seed,
        organisations=organisations,
        oois_per_org=oois_per_org,
        boefjes=boefjes,
        history_fraction=history_fraction,
        shared_domains=shared_domains,
        deschedule_boefje=deschedule_boefje,
    )
    started = time.perf_counter()
    world = generate_world(config)
    generated_in = time.perf_counter() - started
    # The world lives as long as the process: keep the collector from rescanning it, which
    # otherwise adds pauses of a few hundred milliseconds to requests on large worlds.
    gc.freeze()
    bridge = None
    if events_url:
        from kat_scheduler.sim.bridge import EventBridge  # kombu only when needed

        bridge = EventBridge(events_url)
    kat = SimulatedKAT(
        world,
        host=host,
        octopoes_port=octopoes_port,
        katalogus_port=katalogus_port,
        bytes_port=bytes_port,
        bytes_username=bytes_username,
        bytes_password=bytes_password,
        event_sink=bridge,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    try:
        kat.start()
    except OSError as error:
        raise click.ClickException(f"cannot listen on {host}: {error}") from error
    previous = signal.getsignal(signal.SIGTERM)
    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:  # elsewhere only Ctrl-C / the caller can stop us
        signal.signal(signal.SIGTERM, on_signal)
    try:
        for name, url in kat.urls.items():
            click.echo(f"{name}={url}")
        stats = world.stats()
        click.echo(
            f"# world seed={seed}: {stats['organisations']} organisations, {stats['oois']} objects, "
            f"{stats['boefjes']} boefjes, {stats['normalizers']} normalizers, "
            f"{stats['boefje_runs']} boefje runs (generated in {generated_in:.2f}s)"
        )
        click.echo(f"# organisations: {', '.join(world.organisation_ids)}")
        click.echo(f"# objects per type: {stats['oois_per_type']}")
        click.echo(f"# objects per scan level: {stats['oois_per_scan_level']}")
        if bridge is not None:
            click.echo(f"# events: published on {bridge.safe_url}")
        click.echo("# serving; Ctrl-C or SIGTERM stops")
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        kat.stop()
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
        if bridge is not None:
            bridge.close()
            click.echo(f"# events: {bridge.published} published, {bridge.failed} failed")
        click.echo("# stopped")


# -- publishing storms ----------------------------------------------------------------------

url_option = click.option(
    "--url", required=True, metavar="URL", help="Broker to publish on: amqp://… (RabbitMQ) or redis://…."
)
org_option = click.option("--org", metavar="ORG", help="Only this organisation. Default: all, round-robin.")


def _world(seed: int, organisations: int, oois_per_org: int, boefjes: int, history_fraction: float = 0.0) -> World:
    config = WorldConfig(
        seed=seed,
        organisations=organisations,
        oois_per_org=oois_per_org,
        boefjes=boefjes,
        history_fraction=history_fraction,
    )
    return generate_world(config)


def _publish(url: str, queue: str, build: Callable[[], list[dict[str, Any]]]) -> None:
    """Build the bodies, publish them, and report; exits 1 when any event failed."""
    started = time.perf_counter()
    try:
        bodies = build()
    except ValueError as error:
        raise click.ClickException(str(error)) from error
    built_in = time.perf_counter() - started
    from kat_scheduler.sim.bridge import EventBridge

    with EventBridge(url) as bridge:
        started = time.perf_counter()
        published = bridge.publish_many(queue, bodies)
        took = time.perf_counter() - started
        rate = published / took if took > 0 else 0.0
        click.echo(
            f"published {published} {queue} events on {bridge.safe_url} in {took:.3f}s ({rate:,.0f}/s; "
            f"bodies built in {built_in:.3f}s)"
        )
    if published < len(bodies):
        raise click.ClickException(f"{len(bodies) - published} of {len(bodies)} events could not be published")


@sim.command("publish-mutations")
@url_option
@world_options
@org_option
@click.option(
    "--count",
    type=click.IntRange(min=0),
    help="Events to publish, cycling through the objects. Default: one per object.",
)
@click.option("--operation", type=click.Choice(events.MUTATION_OPERATIONS), default="create", show_default=True)
@click.option("--level", type=click.IntRange(0, 4), help="Scan level put in the events instead of the objects' own.")
def publish_mutations(
    url: str,
    seed: int,
    organisations: int,
    oois_per_org: int,
    boefjes: int,
    org: str | None,
    count: int | None,
    operation: str,
    level: int | None,
) -> None:
    """Publish scan_profile_mutations events about the objects of a generated world.

    Objects are taken round-robin over the organisations; a delete event has a null value.
    """
    world = _world(seed, organisations, oois_per_org, boefjes)
    _publish(
        url,
        SCAN_PROFILE_MUTATIONS,
        lambda: events.world_mutations(world, count, organisation=org, operation=operation, level=level),
    )


@sim.command("publish-raw")
@url_option
@world_options
@history_option
@org_option
@click.option(
    "--count", type=click.IntRange(min=0), help="Events to publish, cycling through the runs. Default: one per run."
)
@click.option(
    "--error-fraction",
    type=click.FloatRange(0.0, 1.0),
    default=0.0,
    show_default=True,
    help="Fraction of raw files also tagged error/boefje (evenly spread).",
)
def publish_raw(
    url: str,
    seed: int,
    organisations: int,
    oois_per_org: int,
    boefjes: int,
    history_fraction: float,
    org: str | None,
    count: int | None,
    error_fraction: float,
) -> None:
    """Publish raw_file_received events for the boefje runs in a generated world's Bytes history.

    Runs are taken round-robin over the organisations; every event has a new raw file id.
    """
    world = _world(seed, organisations, oois_per_org, boefjes, history_fraction)
    _publish(
        url,
        RAW_FILE_RECEIVED,
        lambda: events.world_raw_files(world, count, organisation=org, error_fraction=error_fraction),
    )


if __name__ == "__main__":  # python -m kat_scheduler.sim.cli serve ...
    sim()
