"""``kat-scheduler sim serve``: run the simulated KAT services until interrupted."""

from __future__ import annotations

import gc
import signal
import threading
import time
from types import FrameType

import click

from kat_scheduler.sim.server import SimulatedKAT
from kat_scheduler.sim.world import WorldConfig, generate_world


@click.group(name="sim")
def sim() -> None:
    """The simulated KAT services (Octopoes, Katalogus, Bytes) on a generated world."""


@sim.command()
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of the generated world.")
@click.option("--organisations", type=click.IntRange(min=0), default=3, show_default=True)
@click.option("--oois-per-org", type=click.IntRange(min=0), default=100, show_default=True)
@click.option("--boefjes", type=click.IntRange(min=0), default=10, show_default=True)
@click.option("--history-fraction", type=click.FloatRange(0.0, 1.0), default=0.3, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--octopoes-port", type=click.IntRange(0, 65535), default=8001, show_default=True)
@click.option("--katalogus-port", type=click.IntRange(0, 65535), default=8003, show_default=True)
@click.option("--bytes-port", type=click.IntRange(0, 65535), default=8002, show_default=True)
@click.option("--bytes-username", default="bytes", show_default=True, envvar="BYTES_USERNAME")
@click.option("--bytes-password", default="bytes", envvar="BYTES_PASSWORD", help="Password Bytes accepts.")
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
    )
    started = time.perf_counter()
    world = generate_world(config)
    generated_in = time.perf_counter() - started
    # The world lives as long as the process: keep the collector from rescanning it, which
    # otherwise adds pauses of a few hundred milliseconds to requests on large worlds.
    gc.freeze()
    kat = SimulatedKAT(
        world,
        host=host,
        octopoes_port=octopoes_port,
        katalogus_port=katalogus_port,
        bytes_port=bytes_port,
        bytes_username=bytes_username,
        bytes_password=bytes_password,
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
        click.echo("# serving; Ctrl-C or SIGTERM stops")
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        kat.stop()
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
        click.echo("# stopped")


if __name__ == "__main__":  # python -m kat_scheduler.sim.cli serve ...
    sim()
