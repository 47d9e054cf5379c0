"""``kat-scheduler run``: the whole scheduler (and, embedded, a whole simulated KAT) in one command."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Collection
from pathlib import Path
from types import FrameType
from typing import Any

import click
import requests

from kat_scheduler.run.embedded import (
    EmbeddedRedisError,
    free_port,
    free_ports,
    redis_server_argv,
    redis_server_binary,
    wait_for_redis,
)
from kat_scheduler.run.monitor import Monitor, Sample, Sampler
from kat_scheduler.run.plan import (
    ChildSpec,
    EmbeddedPorts,
    Role,
    RunMode,
    WorldOptions,
    child_specs,
    embedded_environment,
    resolve_mode,
    status_command,
)
from kat_scheduler.run.preflight import Unreachable, require_brokers
from kat_scheduler.run.supervisor import STOP_SHARE, Child, ChildFailed, ExitReport, Supervisor
from kat_scheduler.run.view import Banner, banner_lines, dashboard, killed_lines, status_line, summary_lines
from kat_scheduler.settings import (
    Settings,
    SettingsError,
    env_name,
    load_settings,
    load_settings_with,
    masked_url,
)
from kat_scheduler.sim.cli import world_options_with

logger = logging.getLogger(__name__)

#: Seconds the children may take to stop (the promise is 10 s; the final sample takes at most
#: FINAL_SAMPLE_BUDGET of the margin). Producers, workers and Flower share STOP_BUDGET * WORK_SHARE;
#: the services get what is left, and at least the rest of the budget's share.
STOP_BUDGET = 8.0
#: Seconds between status lines when the output is not a terminal.
LINE_EVERY = 5.0
#: Seconds the final sample (for the summary) may take; else the summary uses the last one.
FINAL_SAMPLE_BUDGET = 1.5
#: Seconds the stop waits for its request to the workers to stop consuming to be sent (through the broker).
DRAIN_BUDGET = 1.0
#: The roles stopped before the final sample, and their share of STOP_BUDGET (the rest is the services').
WORK_ROLES = (Role.PRODUCER, Role.WORKER, Role.MONITOR)
WORK_SHARE = sum(STOP_SHARE[role] for role in WORK_ROLES)


class StartupError(RuntimeError):
    """The run could not start; the message says what to do."""


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _listen_port(settings: Settings, field: str, host: str, what: str, avoid: Collection[int] = ()) -> int:
    """The port ``what`` listens on: the setting ``field``'s, or a free one (none of ``avoid``) when
    it is 0 or (unless set explicitly) in use."""
    wanted: int = getattr(settings, field)
    if wanted == 0:
        return free_port(host, avoid)
    if _port_free(host, wanted):
        return wanted
    if field in settings.model_fields_set:
        raise StartupError(f"{env_name(field)}={wanted} is in use on {host}; choose another port (0 picks a free one)")
    port = free_port(host, avoid)
    logger.warning("port %s is in use; %s listens on %s instead", wanted, what, port)
    return port


def _flower_port(settings: Settings) -> int:
    return _listen_port(settings, "flower_port", settings.flower_address, "Flower")


def _api_port(settings: Settings, avoid: Collection[int] = ()) -> int:
    return _listen_port(settings, "api_port", settings.api_host, "the HTTP API", avoid)


def _flower_credentials(settings: Settings) -> tuple[str, str, bool]:
    """Flower's user and password, and whether the password was generated (only then is it shown)."""
    if settings.flower_basic_auth is not None:
        user, _, password = settings.flower_basic_auth.get_secret_value().partition(":")
        return user, password, False
    return "kat", secrets.token_urlsafe(12), True


class Interrupted(StartupError):
    """Ctrl-C or SIGTERM arrived while the run was starting."""


def _wait_http(url: str, child: Child, timeout: float, stopping: threading.Event) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stopping.is_set():
            raise Interrupted("stopped while starting")
        if not child.alive:
            raise StartupError(
                f"{child.name} exited during start; its log ({child.log_path}) ends with:\n{child.tail()}"
            )
        try:
            if requests.get(url, timeout=1).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise StartupError(f"{child.name} did not answer on {url} within {timeout:.0f}s; see {child.log_path}")


class Run:
    """One run: the children, the monitor, and the stop flag."""

    def __init__(self, settings: Settings, mode: RunMode, *, flower: bool, world: WorldOptions) -> None:
        self.settings = settings
        self.mode = mode
        self.flower = flower
        self.world = world
        self.run_dir = Path(settings.run_dir).resolve()
        self.log_dir = self.run_dir / "logs"
        self.stopping = threading.Event()
        self.supervisor: Supervisor | None = None
        self.monitor: Monitor | None = None
        self.sampler: Sampler | None = None
        self.child_settings = settings
        #: What the run set for its children on top of the environment (the embedded services).
        self.overlay: dict[str, str] = {}
        self.banner: Banner | None = None
        self.launched_at = self.started_at = time.monotonic()
        self.first: Sample | None = None
        self.last: Sample | None = None
        self.exits: list[ExitReport] = []
        self._closers: list[Any] = []
        self._lockfile: Any = None
        #: The run's Celery workers, (queue, node name), and an app to reach them through the broker.
        self.workers: list[tuple[str, str]] = []
        self.control: Any = None

    # -- start ----------------------------------------------------------------------------
    def prepare(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._lock()
        embedded_state = self.run_dir / "embedded"
        if self.mode is RunMode.EMBEDDED and embedded_state.exists():
            # The simulated KAT lives in memory: its world is new every run, so the scheduler's
            # state of the last run (kept for `kat-scheduler status` after it) starts over too.
            shutil.rmtree(embedded_state)
        if self.log_dir.exists():
            shutil.rmtree(self.log_dir)
        self.log_dir.mkdir(parents=True)

    def _lock(self) -> None:
        """One run per run folder: two would share (and corrupt) its Redis and SQLite files."""
        import fcntl

        lock = open(self.run_dir / "run.lock", "a+")  # noqa: SIM115 - held for the whole run
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            lock.close()
            raise StartupError(
                f"{self.run_dir} is in use by kat-scheduler run (pid {holder}); stop it, or set "
                f"{env_name('run_dir')} to another folder"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        self._lockfile = lock

    def start(self) -> None:
        self.prepare()
        base_env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        overlay: dict[str, str] = {}
        services: dict[str, str] = {}
        # One API process: the run shares one machine with everything it starts.
        base_env[env_name("api_workers")] = "1"
        supervisor = self.supervisor = Supervisor(base_env, self.log_dir, grace=STOP_BUDGET)
        user, password, generated = _flower_credentials(self.settings)
        flower_port = _flower_port(self.settings) if self.flower else None  # before anything starts
        api_port = _api_port(self.settings, avoid=[flower_port] if flower_port else [])
        sim_ports = None
        if self.mode is RunMode.EMBEDDED:
            state = self.run_dir / "embedded"
            state.mkdir(parents=True, exist_ok=True)
            ports = sim_ports = EmbeddedPorts(*free_ports(4, avoid=[api_port, flower_port or 0]))
            overlay = embedded_environment(self.settings, state, ports)
            if env_name("broker_url") in overlay or env_name("queue_uri") in overlay:
                try:
                    binary = redis_server_binary()
                except EmbeddedRedisError as exc:
                    raise StartupError(str(exc)) from exc
                redis_child = supervisor.start(
                    ChildSpec("redis", redis_server_argv(binary, ports.redis, state), Role.SERVICE)
                )
                wait_for_redis(f"redis://127.0.0.1:{ports.redis}/0", redis_child.process)
                services["redis"] = f"redis://127.0.0.1:{ports.redis} (embedded, data in {state})"
        self.overlay = overlay
        self.child_settings = load_settings_with(overlay) if overlay else self.settings
        supervisor.env.update(overlay)
        try:
            require_brokers(self.child_settings)
        except Unreachable as exc:
            raise StartupError(str(exc)) from None
        if self.stopping.is_set():
            raise Interrupted("stopped while starting")
        self._migrate()
        services["database"] = masked_url(self.child_settings.db_uri)
        services["broker"] = masked_url(self.child_settings.broker_url)
        services["events"] = masked_url(self.child_settings.queue_uri)

        specs = child_specs(
            self.child_settings,
            self.mode,
            flower_port=flower_port,
            flower_auth=f"{user}:{password}",
            sim_ports=sim_ports,
            world=self.world,
            sim_env=overlay,
            api_port=api_port,
        )
        self.monitor = self._make_monitor()
        self.workers = [(spec.queue, spec.node) for spec in specs if spec.queue and spec.node]
        if self.workers:
            from kat_scheduler.runtime.celery_app import create_app

            self.control = create_app(self.child_settings, main="kat-scheduler-run", tasks=False)
        for spec in specs:
            if self.stopping.is_set():
                raise Interrupted("stopped while starting")
            if self.first is None and spec.role is not Role.SERVICE:
                # The baseline, before anything can work: on a loaded machine the first tick may
                # finish before the view's first sample, and the summary would count nothing.
                self.first = self.monitor.sample(full=True)
            child = supervisor.start(spec)
            if spec.ready_url:
                _wait_http(spec.ready_url, child, 120 if spec.name == "kat-sim" else 30, self.stopping)
        services["octopoes"] = masked_url(str(self.child_settings.octopoes_api))
        services["katalogus"] = masked_url(str(self.child_settings.katalogus_api))
        services["bytes"] = masked_url(str(self.child_settings.bytes_api))
        flower_url = f"http://{self.settings.flower_address}:{flower_port}" if flower_port else None
        self.banner = Banner(
            self.mode.value,
            flower_url,
            user,
            password if generated else None,
            str(self.log_dir),
            services,
            status_command(overlay),
            api_url=f"http://{self.settings.api_host}:{api_port}",
        )
        self.started_at = time.monotonic()  # --duration counts from here, not from the launch

    def _migrate(self) -> None:
        from kat_scheduler.storage import migrate

        try:
            migrate.upgrade(self.child_settings.db_uri)
        except Exception as exc:
            raise StartupError(f"cannot migrate the database {masked_url(self.child_settings.db_uri)}: {exc}") from exc

    def _make_monitor(self) -> Monitor:
        from kat_scheduler.clients import clients_from_settings
        from kat_scheduler.dispatch.publishing import make_publisher
        from kat_scheduler.storage.db import make_engine

        engine = make_engine(self.child_settings.db_uri, pool_size=1)
        publisher = make_publisher(self.child_settings)
        # The view must not wait on a slow service: short timeouts, no retries.
        clients = clients_from_settings(self.child_settings.model_copy(update={"http_timeout": 2.0, "http_retries": 0}))
        self._closers += [engine.dispose, publisher.close, clients.close]
        tasks_every = 0.0 if self.mode is RunMode.EMBEDDED else 5.0
        return Monitor(engine, publisher, clients, tasks_every=tasks_every)

    # -- run ------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return time.monotonic() - self.started_at

    def loop(self, duration: float | None, refresh: float, live: bool) -> None:
        assert self.supervisor is not None and self.monitor is not None and self.banner is not None
        deadline = None if duration is None else self.started_at + duration
        self.sampler = Sampler(self.monitor, refresh)
        self.sampler.start()
        self.last = self.sampler.first(timeout=refresh + 2)
        self.first = self.first or self.last
        if live:
            from rich.live import Live

            with Live(self._render(), refresh_per_second=4, screen=False, transient=False) as screen:
                while self._tick(deadline, refresh):
                    screen.update(self._render())
        else:
            next_line = 0.0
            while self._tick(deadline, refresh):
                if time.monotonic() >= next_line and self.last is not None:
                    click.echo(status_line(self.last, self.monitor, self.elapsed()))
                    next_line = time.monotonic() + LINE_EVERY

    def _tick(self, deadline: float | None, refresh: float) -> bool:
        """Wait ``refresh`` seconds (or until asked to stop), then watch and sample; False: stop."""
        assert self.supervisor is not None and self.monitor is not None
        wait = refresh if deadline is None else max(0.0, min(refresh, deadline - time.monotonic()))
        if self.stopping.wait(wait):
            return False
        for event in self.supervisor.watch():
            click.echo(f"kat-scheduler run: {event}", err=True)
        if self.sampler is not None and self.sampler.latest is not None:
            self.last = self.sampler.latest
        return deadline is None or time.monotonic() < deadline

    def _render(self) -> Any:
        assert self.monitor is not None and self.supervisor is not None and self.banner is not None
        if self.last is None:
            return "waiting for the first sample…"
        return dashboard(self.last, self.monitor, self.supervisor.children, self.elapsed(), self.banner)

    # -- stop -----------------------------------------------------------------------------
    def stop(self) -> None:
        try:
            self._stop_children()
        finally:
            if self._lockfile is not None:
                self._lockfile.close()

    def _drain_workers(self) -> None:
        """Ask each worker to stop consuming (Celery's ``cancel_consumer``, through the broker) while
        the producers stop, so it has finished its tasks when it gets SIGTERM.

        A warm shutdown that comes while a task was just handed to a pool process (the worker has
        not yet read that it started) drops that task from the worker's books; the pool process
        runs it anyway and then waits 30 s for the worker to read its result (billiard's
        ``_ensure_messages_consumed``), which it never does: the stop had to kill the worker.
        Bounded by :data:`DRAIN_BUDGET` (a broker that does not answer delays nothing more).
        """
        if self.control is None or not self.workers:
            return
        from celery.utils.nodenames import host_format

        control, workers = self.control, self.workers

        def send() -> None:
            try:
                for queue, node in workers:
                    control.control.cancel_consumer(queue, destination=[host_format(node)])
                control.close()
            except Exception:
                logger.warning("could not ask the workers to stop consuming; they stop on SIGTERM", exc_info=True)

        sender = threading.Thread(target=send, name="kat-run-drain", daemon=True)
        sender.start()
        sender.join(DRAIN_BUDGET)

    def _stop_children(self) -> None:
        if self.supervisor is None:
            return
        deadline = time.monotonic() + STOP_BUDGET
        self._drain_workers()
        services_share = STOP_BUDGET * (1 - WORK_SHARE)
        work = min(STOP_BUDGET * WORK_SHARE, deadline - services_share - time.monotonic())
        self.exits += self.supervisor.stop(max(0.0, work), roles=WORK_ROLES)
        if self.sampler is not None:
            self.last = self.sampler.final(timeout=FINAL_SAMPLE_BUDGET) or self.last
            if not self.sampler.stop():
                logger.warning("the final sample is stuck on a service; leaving its connections to the exit")
                self._closers = []
        for close in self._closers:
            try:
                close()
            except Exception:
                logger.debug("closing a monitor connection failed", exc_info=True)
        # What the others left over, and never less than the services' own share.
        services = max(deadline - time.monotonic(), services_share)
        self.exits += self.supervisor.stop(services, roles=[Role.SERVICE])
        self.supervisor.kill_all()


@click.command("run")
@click.option("--duration", type=click.FloatRange(min=1), default=None, help="Stop by itself after this many seconds.")
@click.option(
    "--mode",
    type=click.Choice(["auto", "embedded", "external"]),
    default="auto",
    show_default=True,
    help="embedded: private Redis, SQLite and a simulated KAT; external: the configured services; "
    "auto: external as soon as OCTOPOES_API, KATALOGUS_API, BYTES_API or QUEUE_URI is set.",
)
@click.option("--no-flower", is_flag=True, help="Do not start Flower.")
@click.option("--refresh", type=click.FloatRange(min=0.1), default=1.0, show_default=True, help="Seconds per update.")
@click.option(
    "--live/--lines",
    default=None,
    help="A live dashboard (default on a terminal) or a status line every 5 s (default otherwise).",
)
@world_options_with(organisations=5, oois_per_org=300)  # about a minute of work for the embedded run
def run_cmd(
    duration: float | None,
    mode: str,
    no_flower: bool,
    refresh: float,
    live: bool | None,
    seed: int,
    organisations: int,
    oois_per_org: int,
    boefjes: int,
) -> None:
    """Run beat, the scheduler, boefje and normalizer workers, the listener and Flower together.

    With nothing configured, everything is embedded: a private Redis, SQLite and a simulated KAT
    world (--organisations, --oois-per-org, --boefjes, --seed), under SCHEDULER_RUN_DIR. Ctrl-C or
    SIGTERM stops every process within 10 s; a summary follows.

    \b
    Exit codes:
      0  the run stopped as asked (--duration, Ctrl-C, SIGTERM, SIGHUP), also while starting.
         A child that did not stop within the stop budget was killed: the summary and stderr
         name it, after how long, and what it cut off (a worker's running tasks are handed on
         by the reaper); a kill at the stop is not a failure of the run.
      1  the run could not start, or a child kept exiting (restarted three times).
      2  the settings are invalid.
    """
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        settings = load_settings()
    except SettingsError as exc:
        click.echo(f"kat-scheduler: {exc}", err=True)
        sys.exit(2)
    run = Run(
        settings,
        resolve_mode(settings, mode),
        flower=not no_flower,
        world=WorldOptions(seed, organisations, oois_per_org, boefjes),
    )

    def on_signal(signum: int, frame: FrameType | None) -> None:
        run.stopping.set()

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # SIGHUP: the terminal closed
        signal.signal(signum, on_signal)
    code = 0
    try:
        run.start()
        assert run.banner is not None and run.supervisor is not None
        live_view = sys.stdout.isatty() if live is None else live
        if not live_view:  # the live view shows the same at its top
            for line in banner_lines(run.banner):
                click.echo(line)
            click.echo("  processes  " + " ".join(f"{c.name}={c.pid}" for c in run.supervisor.children))
            click.echo(f"  started in {run.started_at - run.launched_at:.1f}s")
        run.loop(duration, refresh, live_view)
    except Interrupted:
        click.echo("kat-scheduler run: stopped while starting", err=True)
    except (StartupError, EmbeddedRedisError, ChildFailed) as exc:
        click.echo(f"kat-scheduler run: {exc}", err=True)
        code = 1
    finally:
        stop_started = time.monotonic()
        run.stop()
        stopped_in = time.monotonic() - stop_started
    if run.last is not None and run.monitor is not None:
        for line in summary_lines(run.first, run.last, run.monitor, run.elapsed(), run.exits):
            click.echo(line)
    for line in killed_lines(run.exits):  # said on stderr too, where a log collector looks
        click.echo(f"kat-scheduler run: warning: {line}", err=True)
    click.echo(f"  stopped in {stopped_in:.1f}s; logs in {run.log_dir}")
    if run.mode is RunMode.EMBEDDED and run.banner is not None:
        if env_name("broker_url") in run.overlay:  # the embedded Redis stopped with the run
            command = status_command(run.overlay, database_only=True)
            click.echo(f"  this run's tasks until the next run (its queues went with the embedded Redis): {command}")
        else:
            click.echo(f"  this run's tasks until the next run: {status_command(run.overlay)}")
    sys.exit(code)
