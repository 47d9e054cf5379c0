"""What ``kat-scheduler run`` starts, and with what environment (pure: no processes, no I/O).

Two modes:

* **embedded** (nothing of KAT configured): a private Redis as broker and event bus, SQLite in
  the run folder, and the simulated KAT world, so the whole cycle runs on a bare machine;
* **external** (any of ``OCTOPOES_API``, ``KATALOGUS_API``, ``BYTES_API`` or ``QUEUE_URI`` set):
  the real services and brokers from the settings, nothing embedded.

Every child gets the complete environment it needs, so children agree with the supervisor
whatever ``.env`` file is in the working directory.
"""

from __future__ import annotations

import enum
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kat_scheduler.queues import Queue
from kat_scheduler.settings import Settings, env_name

#: Settings whose presence means "run against a real KAT".
KAT_SERVICE_FIELDS = ("octopoes_api", "katalogus_api", "bytes_api", "queue_uri")

#: Intervals of the embedded run (unless set): a demo should show a tick within seconds.
EMBEDDED_INTERVALS = {"plan_interval": "10", "schedules_interval": "10"}


class RunMode(enum.StrEnum):
    EMBEDDED = "embedded"
    EXTERNAL = "external"


def resolve_mode(settings: Settings, requested: str = "auto") -> RunMode:
    """``auto``: external as soon as any KAT service is configured, else embedded."""
    if requested != "auto":
        return RunMode(requested)
    configured = settings.model_fields_set & set(KAT_SERVICE_FIELDS)
    return RunMode.EXTERNAL if configured else RunMode.EMBEDDED


class Role(enum.StrEnum):
    """Stop order: producers first (no new work), then workers, then what everything uses."""

    PRODUCER = "producer"
    WORKER = "worker"
    MONITOR = "monitor"
    SERVICE = "service"


STOP_ORDER = (Role.PRODUCER, Role.WORKER, Role.MONITOR, Role.SERVICE)


@dataclass(frozen=True)
class ChildSpec:
    name: str
    argv: list[str]
    role: Role
    #: URL answering HTTP when the child is ready (None: ready once started).
    ready_url: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    #: A Celery worker's node name (``%h``: this host) and the queue it consumes: at a stop it is
    #: asked to stop consuming first, so it is idle by the time it gets SIGTERM.
    node: str | None = None
    queue: str | None = None


@dataclass(frozen=True)
class EmbeddedPorts:
    redis: int
    octopoes: int
    katalogus: int
    bytes: int


@dataclass(frozen=True)
class WorldOptions:
    seed: int = 1
    organisations: int = 3
    oois_per_org: int = 100
    boefjes: int = 10


def embedded_environment(settings: Settings, run_dir: Path, ports: EmbeddedPorts) -> dict[str, str]:
    """Variables that point every child at the embedded services (what the user set wins)."""
    chosen = settings.model_fields_set
    redis_base = f"redis://127.0.0.1:{ports.redis}"
    values = {
        "broker_url": f"{redis_base}/0",
        "queue_uri": f"{redis_base}/1",
        "db_uri": f"sqlite:///{(run_dir / 'kat_scheduler.db').resolve()}",
        "octopoes_api": f"http://127.0.0.1:{ports.octopoes}",
        "katalogus_api": f"http://127.0.0.1:{ports.katalogus}",
        "bytes_api": f"http://127.0.0.1:{ports.bytes}",
        "runner": "simulated",
        **EMBEDDED_INTERVALS,
    }
    return {env_name(name): value for name, value in values.items() if name not in chosen}


def flower_argv(settings: Settings, port: int) -> list[str]:
    """Flower's command line; its credentials go in its environment (``ps`` shows argv)."""
    return [
        *celery_argv(),
        "flower",
        f"--address={settings.flower_address}",
        f"--port={port}",
        "--purge_offline_workers=60",
    ]


def celery_argv() -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "kat_scheduler"]


def worker_node(queue: Queue) -> str:
    """The node name of the run's worker for ``queue`` (Celery expands ``%h`` to the host name)."""
    return f"{queue.value}@%h"


def worker_spec(name: str, queue: Queue, concurrency: int, log_level: str) -> ChildSpec:
    return ChildSpec(
        name, worker_argv(queue, concurrency, log_level), Role.WORKER, node=worker_node(queue), queue=queue.value
    )


def worker_argv(queue: Queue, concurrency: int, log_level: str) -> list[str]:
    return [
        *celery_argv(),
        "worker",
        "-Q",
        queue.value,
        "--hostname",
        worker_node(queue),
        "--concurrency",
        str(concurrency),
        "--loglevel",
        log_level,
        "--without-gossip",
        "--without-mingle",
    ]


def child_specs(
    settings: Settings,
    mode: RunMode,
    *,
    flower_port: int | None,
    flower_auth: str,
    sim_ports: EmbeddedPorts | None = None,
    world: WorldOptions = WorldOptions(),
    sim_env: Mapping[str, str] | None = None,
    api_port: int | None = None,
) -> list[ChildSpec]:
    """Every child process of the run, in start order (the HTTP API only with ``api_port``, after
    Flower, which must be up before tasks run to see them)."""
    level = settings.log_level
    cli = [sys.executable, "-m", "kat_scheduler"]
    specs: list[ChildSpec] = []
    if mode is RunMode.EMBEDDED:
        if sim_ports is None:
            raise ValueError("the embedded run needs ports for the simulated KAT")
        events_url = (sim_env or {}).get(env_name("queue_uri"), settings.queue_uri)
        specs.append(
            ChildSpec(
                "kat-sim",
                [
                    *cli,
                    "sim",
                    "serve",
                    f"--seed={world.seed}",
                    f"--organisations={world.organisations}",
                    f"--oois-per-org={world.oois_per_org}",
                    f"--boefjes={world.boefjes}",
                    f"--octopoes-port={sim_ports.octopoes}",
                    f"--katalogus-port={sim_ports.katalogus}",
                    f"--bytes-port={sim_ports.bytes}",
                    f"--events-url={events_url}",
                ],
                Role.SERVICE,
                ready_url=f"http://127.0.0.1:{sim_ports.katalogus}/health",
            )
        )
    specs += [
        worker_spec("scheduler", Queue.SCHEDULER, 1, level),
        worker_spec("boefjes", Queue.BOEFJES, settings.run_boefje_concurrency, level),
        worker_spec("normalizers", Queue.NORMALIZERS, settings.run_normalizer_concurrency, level),
        ChildSpec("listener", [*cli, "listen"], Role.PRODUCER),
        ChildSpec("beat", [*celery_argv(), "beat", "--loglevel", level], Role.PRODUCER),
    ]
    if flower_port is not None:
        specs.append(
            ChildSpec(
                "flower",
                flower_argv(settings, flower_port),
                Role.MONITOR,
                ready_url=f"http://{settings.flower_address}:{flower_port}/healthcheck",
                env={env_name("flower_basic_auth"): flower_auth},
            )
        )
    if api_port is not None:
        specs.append(
            ChildSpec(
                "api",
                [*cli, "api", f"--host={settings.api_host}", f"--port={api_port}"],
                Role.PRODUCER,  # it queues work (pushes), so it stops with the producers
                ready_url=f"http://{settings.api_host}:{api_port}/health",
            )
        )
    return specs


def kat_scheduler_command() -> str:
    """``kat-scheduler`` as a shell can run it: the script next to this Python (a virtualenv's
    ``bin``, which is usually not on the PATH), else ``python -m kat_scheduler``."""
    script = Path(sys.executable).parent / "kat-scheduler"
    if script.exists():
        return shlex.quote(str(script))
    return f"{shlex.quote(sys.executable)} -m kat_scheduler"


def status_command(overlay: Mapping[str, str], *, database_only: bool = False) -> str:
    """The shell command that shows this run's ``kat-scheduler status``.

    ``overlay`` is what the run set for its children (:func:`embedded_environment`); its database
    and broker are named on the command line (they are the embedded ones, without passwords;
    settings of the user's own are theirs already). ``database_only``: the run's broker is gone,
    so the command reads only the database.
    """
    names = [env_name("db_uri")] if database_only else [env_name("db_uri"), env_name("broker_url")]
    assignments = [f"{name}={shlex.quote(overlay[name])}" for name in names if name in overlay]
    return " ".join([*assignments, kat_scheduler_command(), "status", *(["--no-broker"] if database_only else [])])
