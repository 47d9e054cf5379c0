"""Settings: sane defaults, KAT's variable names, and errors that name the variable."""

import pytest

from kat_scheduler.settings import (
    Settings,
    SettingsError,
    env_name,
    load_settings,
    masked_url,
    redacted,
    settings_env_dist,
    settings_markdown,
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name in Settings.model_fields:
        monkeypatch.delenv(env_name(name), raising=False)


def test_nothing_configured_gives_working_defaults() -> None:
    settings = load_settings()
    assert settings.grace_period == 86400
    assert settings.effective_visibility_timeout > settings.hard_time_limit
    assert settings.db_uri.startswith("sqlite")


def test_kat_variable_names_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OCTOPOES_API", "http://octopoes_api:80")
    monkeypatch.setenv("BYTES_PASSWORD", "s3cret")
    monkeypatch.setenv("QUEUE_URI", "amqp://kat:pw@rabbitmq:5672/kat")
    monkeypatch.setenv("SCHEDULER_DB_URI", "postgresql://sched@db/scheduler")
    monkeypatch.setenv("SCHEDULER_GRACE_PERIOD", "3600")
    settings = load_settings()
    assert str(settings.octopoes_api).startswith("http://octopoes_api")
    assert settings.bytes_password.get_secret_value() == "s3cret"
    assert settings.queue_uri == "amqp://kat:pw@rabbitmq:5672/kat"
    assert settings.db_uri == "postgresql://sched@db/scheduler"
    assert settings.grace_period == 3600


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OCTOPOES_API", "not a url"),
        ("SCHEDULER_PLAN_INTERVAL", "soon"),
        ("SCHEDULER_GRACE_PERIOD", "-5"),
        ("SCHEDULER_BROKER_URL", "kafka://broker"),
        ("QUEUE_URI", "not-a-url"),
        ("SCHEDULER_DB_URI", "mysql://db"),
        ("SCHEDULER_LOG_LEVEL", "LOUD"),
        ("SCHEDULER_BATCH_SIZE", "0"),
    ],
)
def test_an_invalid_variable_fails_with_its_name(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=variable):
        load_settings()


@pytest.mark.parametrize(
    ("variable", "url", "host"),
    [
        ("OCTOPOES_API", "http://user:s3cretpw@a..b:1", "a..b"),
        ("KATALOGUS_API", "http://.katalogus:8003", ".katalogus"),
        ("BYTES_API", "https://bytes:s3cretpw@" + "x" * 64 + ".example.nl/", "x" * 64 + ".example.nl"),
    ],
)
def test_a_kat_url_whose_host_cannot_be_connected_to_is_refused_without_its_password(
    monkeypatch: pytest.MonkeyPatch, variable: str, url: str, host: str
) -> None:
    # pydantic takes these hosts; urllib3 refuses them only when it connects (LocationParseError).
    monkeypatch.setenv(variable, url)

    with pytest.raises(SettingsError) as caught:
        load_settings()

    message = str(caught.value)
    assert f"{variable}: host {host!r} is not a valid host name" in message
    assert "s3cretpw" not in message


@pytest.mark.parametrize(
    "url", ["http://octopoes_api:8001", "http://127.0.0.1:8001", "http://[::1]:8001", "https://kat.example.nl./"]
)
def test_kat_urls_with_usable_hosts_are_taken(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("OCTOPOES_API", url)

    assert str(load_settings().octopoes_api).startswith(url.rstrip("/"))


def test_a_hard_limit_below_the_soft_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCHEDULER_SOFT_TIME_LIMIT", "600")
    monkeypatch.setenv("SCHEDULER_HARD_TIME_LIMIT", "300")
    with pytest.raises(SettingsError, match="SCHEDULER_HARD_TIME_LIMIT"):
        load_settings()


def test_a_visibility_timeout_shorter_than_the_hard_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # Otherwise Redis would hand a still-running task to a second worker.
    monkeypatch.setenv("SCHEDULER_VISIBILITY_TIMEOUT", "100")
    with pytest.raises(SettingsError, match="SCHEDULER_VISIBILITY_TIMEOUT"):
        load_settings()


def test_more_planning_threads_than_database_connections_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCHEDULER_PLAN_THREADS", "12")
    with pytest.raises(SettingsError, match="SCHEDULER_DB_POOL_SIZE of at least 7"):
        load_settings()
    monkeypatch.setenv("SCHEDULER_DB_POOL_SIZE", "7")
    assert load_settings().plan_threads == 12


def test_the_default_planning_threads_shrink_to_a_small_database_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCHEDULER_DB_POOL_SIZE", "1")
    assert load_settings().plan_threads == 1
    monkeypatch.setenv("SCHEDULER_DB_POOL_SIZE", "2")
    assert load_settings().plan_threads == 3


def test_every_setting_is_described_and_documented() -> None:
    doc = settings_markdown()
    dist = settings_env_dist()
    for name, field in Settings.model_fields.items():
        assert field.description, f"{name} has no description"
        assert f"`{env_name(name)}`" in doc
        assert f"# {env_name(name)}=" in dist


def test_secrets_never_appear_in_the_printable_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BYTES_PASSWORD", "hunter2")
    monkeypatch.setenv("FLOWER_BASIC_AUTH", "ops:flowerpw")
    monkeypatch.setenv("QUEUE_URI", "amqp://kat:rabbitpw@rabbitmq:5672/kat")
    monkeypatch.setenv("SCHEDULER_DB_URI", "postgresql://sched:dbpw@db:5432/scheduler")
    monkeypatch.setenv("SCHEDULER_BROKER_URL", "redis://:redispw@redis:6379/0")
    monkeypatch.setenv("SCHEDULER_RESULT_BACKEND", "db+postgresql://sched:backendpw@db/results")
    monkeypatch.setenv("OCTOPOES_API", "http://kat:octopoespw@octopoes:8001")
    monkeypatch.setenv("KATALOGUS_API", "https://kat:katalogusp%40w@katalogus")
    monkeypatch.setenv("BYTES_API", "http://kat:bytesapipw@bytes:8002")
    shown = str(redacted(load_settings()))
    for secret in (
        "hunter2",
        "flowerpw",
        "rabbitpw",
        "dbpw",
        "redispw",
        "backendpw",
        "octopoespw",
        "katalogusp",
        "bytesapipw",
    ):
        assert secret not in shown
    assert "rabbitmq:5672" in shown
    assert "http://kat:***@octopoes:8001/" in shown


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://sched:dbpw@db:5432/scheduler", "postgresql://sched:***@db:5432/scheduler"),
        ("postgresql://sched:dbpw@db/scheduler", "postgresql://sched:***@db/scheduler"),  # no port
        ("redis://:redispw@redis:6379/0", "redis://:***@redis:6379/0"),  # password only
        ("redis://:redispw@redis", "redis://:***@redis"),
        ("amqp://kat:rabbitpw@[::1]:5672/kat", "amqp://kat:***@[::1]:5672/kat"),  # IPv6
        ("amqp://kat:rabbitpw@[2001:db8::1]/kat", "amqp://kat:***@[2001:db8::1]/kat"),
        (
            "postgresql://sched@db/x?password=dbpw&sslmode=require",
            "postgresql://sched@db/x?password=***&sslmode=require",
        ),
        ("postgresql://db/x?sslmode=require&sslpassword=dbpw", "postgresql://db/x?sslmode=require&sslpassword=***"),
        ("http://octopoes/api?api_key=dbpw", "http://octopoes/api?api_key=***"),
        ("postgresql://sched:db%2Fp%40w@db/x", "postgresql://sched:***@db/x"),  # URL-encoded
        ("postgresql://sched:db/p?w#x@db/x", "postgresql://sched:***@db/x"),  # what SQLAlchemy accepts unencoded
        ("redis://:db@pw@redis/0", "redis://:***@redis/0"),
        ("db+postgresql://sched:dbpw@db/results", "db+postgresql://sched:***@db/results"),
        ("http://kat:dbpw@octopoes:8001/", "http://kat:***@octopoes:8001/"),
        ("amqp://kat:dbpw@one//;amqp://kat:dbpw@two//", "amqp://kat:***@one//;amqp://kat:***@two//"),  # failover
    ],
)
def test_a_password_in_any_form_of_url_is_masked_and_the_rest_kept(url: str, shown: str) -> None:
    assert masked_url(url) == shown


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://sched@db:5432/scheduler",
        "redis://redis:6379/0",
        "amqp://[::1]:5672//",
        "sqlite:///kat_scheduler.db",
        "sqlite:////var/lib/kat/at@home.db",
        "memory://",
        "http://octopoes:8001/?limit=10",
    ],
)
def test_a_url_without_a_password_is_shown_as_it_is(url: str) -> None:
    assert masked_url(url) == url


def test_an_env_file_that_is_not_utf8_is_named_in_the_error(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from kat_scheduler.settings import SettingsError, load_settings

    (tmp_path / ".env").write_bytes(b"SCHEDULER_BATCH_SIZE=\xff\xfe\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SettingsError) as error:
        load_settings()
    assert str(error.value) == f"invalid settings: {tmp_path / '.env'} is not UTF-8 text (byte 0xff at offset 21)"
