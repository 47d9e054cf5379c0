"""Settings: sane defaults, KAT's variable names, and errors that name the variable."""

import pytest

from kat_scheduler.settings import (
    Settings,
    SettingsError,
    env_name,
    load_settings,
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
        ("SCHEDULER_DB_URI", "mysql://db"),
        ("SCHEDULER_LOG_LEVEL", "LOUD"),
        ("SCHEDULER_BATCH_SIZE", "0"),
    ],
)
def test_an_invalid_variable_fails_with_its_name(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=variable):
        load_settings()


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
    monkeypatch.setenv("QUEUE_URI", "amqp://kat:rabbitpw@rabbitmq:5672/kat")
    monkeypatch.setenv("SCHEDULER_DB_URI", "postgresql://sched:dbpw@db:5432/scheduler")
    shown = str(redacted(load_settings()))
    for secret in ("hunter2", "rabbitpw", "dbpw"):
        assert secret not in shown
    assert "rabbitmq:5672" in shown
