"""The one settings object.

Every field is read from the environment (and from a ``.env`` file in the working directory).
KAT's own variable names are used where they exist (``OCTOPOES_API``, ``QUEUE_URI``, ...); the
rest are ``SCHEDULER_<FIELD>``. ``docs/configuration.md`` is generated from this class
(``kat-scheduler settings --markdown``).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import AliasChoices, AnyHttpUrl, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from kat_scheduler.models.tasks import SchedulerId

ENV_PREFIX = "SCHEDULER_"

#: Fields that keep the name the rest of KAT (or Flower) already uses for them.
KAT_NAMES: dict[str, str] = {
    "octopoes_api": "OCTOPOES_API",
    "katalogus_api": "KATALOGUS_API",
    "bytes_api": "BYTES_API",
    "bytes_username": "BYTES_USERNAME",
    "bytes_password": "BYTES_PASSWORD",
    "queue_uri": "QUEUE_URI",
    "db_uri": "SCHEDULER_DB_URI",
    # Flower reads these itself too, so one variable configures `run` and a plain `celery flower`.
    "flower_address": "FLOWER_ADDRESS",
    "flower_port": "FLOWER_PORT",
    "flower_basic_auth": "FLOWER_BASIC_AUTH",
}


def env_name(field: str) -> str:
    """The environment variable that sets ``field``."""
    return KAT_NAMES.get(field, ENV_PREFIX + field.upper())


def _kat(field: str) -> Any:
    return AliasChoices(KAT_NAMES[field])


class SettingsError(ValueError):
    """Raised when the environment holds settings that do not validate; names the variables."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
        validate_default=True,
    )

    # --- KAT services -------------------------------------------------------------------
    octopoes_api: AnyHttpUrl = Field(
        AnyHttpUrl("http://localhost:8001"),
        validation_alias=_kat("octopoes_api"),
        description="Base URL of the Octopoes API (the object graph).",
    )
    katalogus_api: AnyHttpUrl = Field(
        AnyHttpUrl("http://localhost:8003"),
        validation_alias=_kat("katalogus_api"),
        description="Base URL of the Katalogus API (the plugin registry); `/v1` is added by the client.",
    )
    bytes_api: AnyHttpUrl = Field(
        AnyHttpUrl("http://localhost:8002"),
        validation_alias=_kat("bytes_api"),
        description="Base URL of the Bytes API (the raw data store).",
    )
    bytes_username: str = Field(
        "bytes", validation_alias=_kat("bytes_username"), description="User name for Bytes' `/token` login."
    )
    bytes_password: SecretStr = Field(
        SecretStr("bytes"),
        validation_alias=_kat("bytes_password"),
        description="Password for Bytes' `/token` login. Never logged.",
    )
    http_timeout: float = Field(
        10.0, gt=0, le=300, description="Timeout in seconds of every HTTP call to a KAT service."
    )
    http_retries: int = Field(
        3,
        ge=0,
        le=10,
        description="Retries on connection errors and 502/503/504 answers (never on other 4xx/5xx).",
    )
    http_backoff: float = Field(
        0.2, ge=0, le=30, description="Backoff factor in seconds between retries (doubles each retry)."
    )
    http_pool_size: int = Field(10, ge=1, le=1000, description="Connections kept open per KAT service and process.")

    # --- Brokers and database -----------------------------------------------------------
    broker_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Celery broker for the task queues: `redis://…` or `amqp://…`.",
    )
    result_backend: str | None = Field(
        None,
        description="Celery result backend. Unset: none (task state is kept in the `tasks` table).",
    )
    queue_uri: str = Field(
        "amqp://guest:guest@127.0.0.1:5672/%2F",
        validation_alias=_kat("queue_uri"),
        description=(
            "Broker that carries KAT's events (`scan_profile_mutations`, `raw_file_received`); "
            "RabbitMQ in production, any kombu URL works."
        ),
    )
    db_uri: str = Field(
        "sqlite:///kat_scheduler.db",
        validation_alias=_kat("db_uri"),
        description="SQLAlchemy URL of the task database: `postgresql://…` in production, SQLite embedded.",
    )
    db_pool_size: int = Field(5, ge=1, le=200, description="Database connections kept per process.")

    # --- Planning -----------------------------------------------------------------------
    plan_interval: float = Field(60.0, gt=0, le=86400, description="Seconds between beat ticks of the boefje planner.")
    schedules_interval: float = Field(
        30.0, gt=0, le=86400, description="Seconds between beat ticks that queue due schedules."
    )
    grace_period: int = Field(
        86400,
        ge=0,
        description=(
            "Seconds after a run ended before the same boefje runs again on the same object, "
            "unless the plugin's `interval` (minutes) says otherwise."
        ),
    )
    bytes_stall_age: int = Field(
        0,
        ge=0,
        description=(
            "Seconds after its start that a boefje run Bytes shows without an end counts as dead: "
            "younger, the boefje is running (under some runner) and is not queued again; older, the "
            "run died and the pair is due. 0 means: the hard time limit plus SCHEDULER_RUNNING_SLACK."
        ),
    )
    schedule_jitter: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Fraction of the interval added at random to a schedule's next deadline, to spread load.",
    )
    batch_size: int = Field(
        1000,
        ge=1,
        le=50000,
        description="Candidates handled per batch: one listing page, one claim, one publish.",
    )
    plan_orgs_per_task: int = Field(
        10,
        ge=1,
        le=10000,
        description="Organisations planned by one planning task; a tick fans out one task per group.",
    )
    plan_threads: int = Field(
        3,
        ge=1,
        le=32,
        description=(
            "Organisations one planning task plans at once (threads): while one waits for Octopoes, "
            "Bytes or the database, another computes. 1 plans them one after another. Each holds a "
            "database connection: SCHEDULER_DB_POOL_SIZE must be at least (this + 1) / 2 (the default "
            "shrinks to fit a smaller pool)."
        ),
    )
    events_batch_size: int = Field(
        500, ge=1, le=10000, description="Events the listener hands to its handlers at most at once."
    )
    events_batch_window: float = Field(
        0.01,
        ge=0,
        le=5,
        description=(
            "Seconds without a new event after which the listener hands over what it collected "
            "(a batch goes at the latest 0.25 s after its first event, or when full)."
        ),
    )
    katalogus_cache_ttl: float = Field(
        30.0,
        ge=0,
        le=3600,
        description="Seconds an organisation's plugin list is reused by the event handlers before asking again.",
    )
    org_cap_per_tick: int = Field(
        100000,
        ge=1,
        description="At most this many tasks one organisation adds per tick (fairness between organisations).",
    )
    queue_depth_limit_boefjes: int = Field(
        100000,
        ge=1,
        description="Above this many messages on the `boefjes` queue, producers add only urgent bands.",
    )
    queue_depth_limit_normalizers: int = Field(
        100000,
        ge=1,
        description="Above this many messages on the `normalizers` queue, producers add only urgent bands.",
    )
    backpressure_band: int = Field(
        2,
        ge=0,
        le=9,
        description="When a queue is over its depth limit, or its depth cannot be read, only bands up to this one "
        "(0 most urgent) are added.",
    )

    # --- Workers ------------------------------------------------------------------------
    soft_time_limit: int = Field(
        300, ge=1, description="Seconds a boefje or normalizer may run before it is asked to stop."
    )
    hard_time_limit: int = Field(360, ge=1, description="Seconds after which a running boefje or normalizer is killed.")
    visibility_timeout: int = Field(
        0,
        ge=0,
        description=(
            "Redis broker visibility timeout in seconds; unacked messages are redelivered after it. "
            "0 means: the hard time limit plus 10 minutes (it must exceed the hard limit)."
        ),
    )
    runner: Literal["local", "simulated"] = Field(
        "local",
        description=(
            "How workers run plugins: `local` (Python plugins in KAT's layout under "
            "SCHEDULER_PLUGINS_PATH) or `simulated` (the simulated world's plugins)."
        ),
    )
    plugins_path: str = Field("plugins", description="Folder of local plugins (one folder per plugin).")
    deduplicate: bool = Field(
        False,
        description=(
            "Run a boefje once for an object several organisations hold (Octopoes `/object-clients`), "
            "and store its meta and raw files in Bytes for each organisation that wants that run now: "
            "the boefje is enabled there with `deduplicate: true` and the same settings, the object's "
            "level there clears it, and its grace period or cron lets it run; a queued task there is "
            "taken over. An organisation whose plugin says `deduplicate: false` neither serves nor is served."
        ),
    )
    retry_backoff: float = Field(
        2.0, gt=0, le=3600, description="Seconds before the first retry after a service was down; doubles per retry."
    )
    max_retries: int = Field(
        5, ge=0, le=100, description="Retries of a task after a service error (down, or an unreadable answer)."
    )
    service_failure_retry_delay: int = Field(
        300,
        ge=0,
        le=86400,
        description=(
            "Seconds after a task gave up because Katalogus, Octopoes or Bytes failed (down, or an "
            "answer that could not be read) before its (boefje, object) pair is due again, or a normalizer "
            "task is queued again by the reaper. Such a task is not counted as a run, so the pair does not "
            "wait out its grace period."
        ),
    )
    service_failure_max_requeues: int = Field(
        5,
        ge=0,
        le=1000,
        description=(
            "Times the reaper queues a normalizer task again after it gave up because a KAT service failed "
            "(normalizer tasks come only from events, so nothing else queues them again). After that many, "
            "the row stays failed and its reason says it gave up after that many service failures."
        ),
    )
    kept_output_max_bytes: int = Field(
        10 * 1024 * 1024,
        ge=0,
        le=2**31,
        description=(
            "Largest plugin output (bytes of JSON, raw files base64-encoded) kept in a task's row while "
            "storing it in Bytes or Octopoes is retried. A larger output is not kept: the retry runs the "
            "plugin again."
        ),
    )
    reap_interval: float = Field(
        10.0,
        gt=0,
        le=86400,
        description=(
            "Seconds between runs of the reaper (lost workers, stuck, unpublished and lost tasks, a broker "
            "that lost its data)."
        ),
    )
    worker_heartbeat_interval: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="Seconds between two heartbeats a Celery worker node writes in the database while it lives.",
    )
    worker_lost_after: float = Field(
        20.0,
        gt=0,
        le=86400,
        description=(
            "Seconds without a heartbeat after which a worker node counts as lost (its main process died): the "
            "reaper queues its running and received tasks again, once a later run confirms the silence. At "
            "least three heartbeat intervals are used."
        ),
    )
    running_slack: float = Field(
        60.0,
        ge=0,
        description=(
            "Seconds past the hard time limit after which the reaper treats a running task as stuck "
            "(its worker host died) and runs it again or fails it."
        ),
    )
    unpublished_after: float = Field(
        60.0,
        gt=0,
        description="Seconds after which a claimed task that was never published is published by the reaper.",
    )
    retention_days: int = Field(
        30, ge=1, description="Completed and failed task rows older than this many days are pruned."
    )

    # --- Operations ---------------------------------------------------------------------
    beat_lease: float = Field(
        30.0,
        gt=0,
        description="Seconds a beat's singleton lease lasts; a standby beat takes over after it expires.",
    )
    log_level: str = Field("INFO", description="Log level: DEBUG, INFO, WARNING, ERROR.")
    heartbeat_file: str | None = Field(
        None,
        description=(
            "A file `kat-scheduler listen` and beat touch every few seconds while their loop runs "
            "(the listener only while connected), for `kat-scheduler heartbeat` health checks. "
            "Unset: none."
        ),
    )
    flower_address: str = Field(
        "127.0.0.1",
        validation_alias=_kat("flower_address"),
        description="Address Flower listens on in `kat-scheduler run`.",
    )
    flower_port: int = Field(
        5555,
        validation_alias=_kat("flower_port"),
        ge=0,
        le=65535,
        description="Port of Flower in `kat-scheduler run` (0: a free one).",
    )
    flower_basic_auth: SecretStr | None = Field(
        None,
        validation_alias=_kat("flower_basic_auth"),
        description=(
            "Flower's `user:password` (basic auth), for `kat-scheduler run` and the Procfile/compose "
            "Flower. Unset in `kat-scheduler run`: a password is generated and printed at start."
        ),
    )

    api_host: str = Field(
        "127.0.0.1",
        description=(
            "Address the HTTP API (`kat-scheduler api`, mula-compatible) listens on; `0.0.0.0` for "
            "every interface (in a container)."
        ),
    )
    api_port: int = Field(
        8004,
        ge=0,
        le=65535,
        description="Port of the HTTP API (`kat-scheduler api`; in `kat-scheduler run` 0 means a free one).",
    )
    api_workers: int = Field(
        1,
        ge=1,
        le=64,
        description=(
            "Processes serving the HTTP API (`kat-scheduler api`, uvicorn's workers sharing the port). "
            "One process uses at most one core: set it to the cores the API may use when runners pop "
            "or push hundreds of tasks a second. `kat-scheduler run` serves it with one."
        ),
    )
    api_prepared_pops: bool = Field(
        True,
        description=(
            "On PostgreSQL, run the runners' usual pops as prepared statements (`PREPARE` once per "
            "connection, planned once): about 40 % less database CPU per pop. Turn it off behind a "
            "pooler that does not keep a session's prepared statements (PgBouncer in transaction mode)."
        ),
    )

    pull_schedulers: str = Field(
        "report",
        description=(
            "Schedulers whose tasks are popped over HTTP (`POST /schedulers/{id}/pop`, OpenKAT's own "
            "runners) instead of published to Celery: a comma-separated list of `boefje`, `normalizer`, "
            "`report` (empty: none)."
        ),
    )

    # --- Rate limits ---------------------------------------------------------------------
    rate_limits: str = Field(
        "",
        description=(
            "Rate limits per boefje id, over or beside Katalogus's `rate_limit`/`rate_limit_group`: "
            "entries separated by spaces, each `BOEFJE_ID=LIMIT` or `BOEFJE_ID=LIMIT@GROUP`, e.g. "
            "`shodan=1/second@shodan.io nmap=10/minute;100/hour@host:{input_ooi} dns-records=off`. "
            "`LIMIT`: `N/second`, `N/minute`, `N/hour` or `N/day`, several joined by `;`; `off` removes a plugin's own "
            "limit. `GROUP` (default: the boefje id) names the counter every worker shares; it may use "
            "`{boefje_id}`, `{input_ooi}`, `{object_type}`, `{organisation}`."
        ),
    )
    rate_limit_storage: str | None = Field(
        None,
        description=(
            "Redis URL of the rate-limit counters, the same for every worker on every machine. "
            "Unset: the broker (`SCHEDULER_BROKER_URL`) when it is Redis; with neither, limits are "
            "not enforced (a worker says so once)."
        ),
    )
    rate_limit_poll: float = Field(
        0.2,
        gt=0,
        le=60,
        description=(
            "Seconds between a worker node's looks for rate-limited tasks whose window opened (it "
            "publishes them again; between looks it sleeps until the earliest such time it knows)."
        ),
    )
    rate_limit_lead: float = Field(
        0.25,
        ge=0,
        le=5,
        description=(
            "Seconds before a rate-limited group's room opens that its next waiting tasks are published, "
            "each with that moment as its Celery eta: the worker's consumer holds such a message until "
            "then, not a pool process (other tasks keep starting). It hides the time from release to "
            "start (the database, the broker, a busy machine), so a group reaches its limit; the limit "
            "itself is never exceeded. 0: publish only into an open window."
        ),
    )

    # --- The all-in-one run (`kat-scheduler run`) ---------------------------------------
    run_dir: str = Field(
        ".kat-scheduler",
        description="Folder of `kat-scheduler run`'s state: logs, and in the embedded run its SQLite and Redis files.",
    )
    run_boefje_concurrency: int = Field(
        2, ge=1, le=256, description="Boefje worker processes started by `kat-scheduler run`."
    )
    run_normalizer_concurrency: int = Field(
        1, ge=1, le=256, description="Normalizer worker processes started by `kat-scheduler run`."
    )

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @field_validator("flower_basic_auth")
    @classmethod
    def _flower_auth(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            user, _, password = value.get_secret_value().partition(":")
            if not user or not password:
                raise ValueError("must be user:password")
        return value

    @field_validator("octopoes_api", "katalogus_api", "bytes_api")
    @classmethod
    def _kat_url(cls, value: AnyHttpUrl) -> AnyHttpUrl:
        """A URL the KAT clients can call: pydantic takes hosts requests refuses before sending
        (``*.a``, ``.a``) and hosts urllib3 refuses only as it connects (``a..b``: an empty label
        or one over 63 characters, as the ``idna`` codec it uses says)."""
        import requests

        host = value.host or ""
        problem = None
        try:
            requests.Request("GET", str(value)).prepare()
        except requests.RequestException as exc:
            problem = masked_text(str(exc))
        if problem is None and not host.startswith("["):
            try:
                host.encode("idna")
            except UnicodeError:
                problem = "a label is empty or longer than 63 characters"
        if problem is not None:
            raise ValueError(f"host {host!r} is not a valid host name ({problem}), got {masked_url(str(value))!r}")
        return value

    @field_validator("broker_url", "queue_uri")
    @classmethod
    def _broker(cls, value: str) -> str:
        scheme = value.split("://", 1)[0]
        if "://" not in value or scheme not in {"redis", "rediss", "amqp", "amqps", "pyamqp", "memory"}:
            raise ValueError(f"must be a redis://, rediss:// or amqp:// URL, got {masked_url(value)!r}")
        return value

    @field_validator("pull_schedulers")
    @classmethod
    def _pull_schedulers(cls, value: str) -> str:
        names = [name.strip() for name in value.split(",") if name.strip()]
        known = [s.value for s in SchedulerId]
        unknown = [name for name in names if name not in known]
        if unknown:
            raise ValueError(f"unknown scheduler {', '.join(map(repr, unknown))} (schedulers: {', '.join(known)})")
        return ",".join(dict.fromkeys(names))

    @field_validator("rate_limits")
    @classmethod
    def _rate_limits(cls, value: str) -> str:
        if not value.strip():
            return value
        from kat_scheduler.rules.rate_limits import parse_overrides

        parse_overrides(value)
        return value

    @field_validator("rate_limit_storage")
    @classmethod
    def _rate_limit_storage(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"must be a redis:// or rediss:// URL, got {masked_url(value)!r}")
        return value

    @field_validator("db_uri")
    @classmethod
    def _db(cls, value: str) -> str:
        if not value.startswith(("postgresql", "sqlite")):
            raise ValueError("must be a postgresql:// or sqlite:// SQLAlchemy URL")
        return value

    def model_post_init(self, __context: Any) -> None:
        if self.hard_time_limit <= self.soft_time_limit:
            raise ValueError(
                f"{env_name('hard_time_limit')} ({self.hard_time_limit}) must be greater than "
                f"{env_name('soft_time_limit')} ({self.soft_time_limit})"
            )
        if self.visibility_timeout and self.visibility_timeout <= self.hard_time_limit:
            raise ValueError(
                f"{env_name('visibility_timeout')} ({self.visibility_timeout}) must be greater than "
                f"{env_name('hard_time_limit')} ({self.hard_time_limit}), or a running task is redelivered"
            )

        # A tick's planning threads and its claim thread each hold a database connection; more
        # than the pool (plus as many overflow) allows would leave threads waiting for one. An
        # explicit setting that cannot be served is refused; the default shrinks to fit.
        fits = 2 * self.db_pool_size - 1
        if self.plan_threads > fits:
            if "plan_threads" in self.model_fields_set:
                raise ValueError(
                    f"{env_name('plan_threads')} ({self.plan_threads}) needs {env_name('db_pool_size')} of at "
                    f"least {(self.plan_threads + 2) // 2} (each planning thread holds a database connection; "
                    f"got {self.db_pool_size})"
                )
            self.plan_threads = fits

    @property
    def effective_bytes_stall_age(self) -> float:
        """Seconds after which a run Bytes shows without an end counts as dead (see ``bytes_stall_age``)."""
        return self.bytes_stall_age or self.hard_time_limit + self.running_slack

    @property
    def effective_visibility_timeout(self) -> int:
        return self.visibility_timeout or self.hard_time_limit + 600

    @property
    def pull_scheduler_ids(self) -> frozenset[SchedulerId]:
        """The schedulers whose tasks are popped over HTTP, not published to Celery."""
        return frozenset(SchedulerId(name) for name in self.pull_schedulers.split(",") if name)

    @property
    def broker_is_redis(self) -> bool:
        return self.broker_url.startswith(("redis", "rediss"))

    @property
    def rate_limit_store(self) -> str | None:
        """Where the rate-limit counters live: the setting, else a Redis broker, else nowhere."""
        return self.rate_limit_storage or (self.broker_url if self.broker_is_redis else None)


def load_settings(**overrides: Any) -> Settings:
    """Build Settings from the environment; raise :class:`SettingsError` naming each bad variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            loc = error.get("loc") or ()
            field = str(loc[0]) if loc else ""
            name = env_name(field) if field in Settings.model_fields else (field or "settings")
            message = str(error["msg"]).removeprefix("Value error, ")
            lines.append(f"{name}: {message}")
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None
    except UnicodeDecodeError as exc:
        env_file = os.path.abspath(str(Settings.model_config.get("env_file") or ".env"))
        raise SettingsError(
            f"invalid settings: {env_file} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"
        ) from None
    except ValueError as exc:
        raise SettingsError(f"invalid settings: {exc}") from None


def load_settings_with(environment: Mapping[str, str]) -> Settings:
    """The settings a process would read with ``environment`` added to this one's."""
    saved = {name: os.environ.get(name) for name in environment}
    os.environ.update(environment)
    try:
        return load_settings()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()


def _plain(default: Any) -> Any:
    """A default as a user would write it in the environment."""
    if isinstance(default, SecretStr):
        return default.get_secret_value()
    if isinstance(default, AnyHttpUrl):
        return str(default).rstrip("/")
    return default


def settings_markdown() -> str:
    """The configuration reference (docs/configuration.md), generated from :class:`Settings`."""
    lines = [
        "# Configuration",
        "",
        "<!-- Generated by `kat-scheduler settings --markdown`; do not edit by hand. -->",
        "",
        "Every setting is an environment variable (a `.env` file in the working directory is read too;",
        "`.env-dist` lists them all). KAT's own names are kept where they exist.",
        "",
        "| variable | default | description |",
        "|---|---|---|",
    ]
    for name, field in Settings.model_fields.items():
        default = field.default
        if isinstance(default, SecretStr):
            shown = "`***`"
        elif default is None:
            shown = "unset"
        else:
            shown = f"`{_plain(default)}`"
        lines.append(f"| `{env_name(name)}` | {shown} | {field.description} |")
    return "\n".join(lines) + "\n"


def settings_env_dist() -> str:
    """The ``.env-dist`` file: every variable with its default, commented out."""
    lines = ["# kat_scheduler settings. Copy to .env and uncomment what you change.", ""]
    for name, field in Settings.model_fields.items():
        default = field.default
        value = "" if default is None else _plain(default)
        lines.append(f"# {field.description}")
        lines.append(f"# {env_name(name)}={value}")
        lines.append("")
    return "\n".join(lines)


#: ``scheme://user:password@host…``: the password is everything up to the ``@`` that is followed by a
#: host (a name, or ``[IPv6]``), an optional port and the end or a ``/``, ``?`` or ``#``. So a
#: password may hold ``@``, ``/``, ``?`` or ``:`` unencoded (SQLAlchemy accepts all of them).
_USERINFO = re.compile(
    r"^(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/?#@\[\]]*:)(?P<password>.*?)"
    r"(?P<tail>@(?:\[[^\]]*\]|[^@/?#:\[\]]*)(?::\d*)?(?:[/?#].*)?)$",
    re.DOTALL,
)
#: The same loosely, for a URL ``_USERINFO`` cannot take apart (``…@host:5672'`` quoted in a
#: message): everything between ``user:`` and the last ``@`` is taken for the password.
_LOOSE_USERINFO = re.compile(
    r"^(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/?#@\[\]]*:)(?P<password>.*)(?P<tail>@.*)$", re.DOTALL
)
#: A URL inside a message (an error may quote the one it could not reach, password and all).
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://\S+")
#: Query parameters that carry a secret (``?password=…``, ``&sslpassword=…``, ``?token=…``).
_SECRET_PARAMETER = re.compile(r"([?&;][^=&;#]*(?:pass|pwd|secret|token|key)[^=&;#]*=)[^&;#]*", re.IGNORECASE)
MASK = "***"


def masked_url(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***`` (fit for logs and banners).

    Masks ``user:password@``, ``:password@`` (password only) and secret query parameters
    (``?password=…``); IPv6 hosts, ports and every other part stay as they were. Several URLs
    separated by ``;`` (kombu's failover form) are masked one by one. Errs on the side of masking:
    a string it cannot take apart may lose more than its password, never keep it.
    """
    if ";" in url and "://" in url.partition(";")[2]:
        return ";".join(masked_url(part) for part in url.split(";"))
    match = _USERINFO.match(url) or _LOOSE_USERINFO.match(url)
    if match and match["password"]:
        url = match["head"] + MASK + match["tail"]
    return _SECRET_PARAMETER.sub(lambda m: m[1] + MASK, url)


def masked_text(text: str) -> str:
    """``text`` (an error's message, say) with every URL in it masked as :func:`masked_url` does."""
    return _URL_IN_TEXT.sub(lambda m: masked_url(m[0]), text)


def redacted(settings: Settings) -> dict[str, Any]:
    """The settings as a dict fit for logs: secrets masked, and passwords in URLs (KAT's service
    URLs too) masked."""
    out: dict[str, Any] = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            value = MASK
        elif not isinstance(value, (int, float, bool, type(None))):
            value = masked_url(str(value))
        out[env_name(name)] = value
    return out
