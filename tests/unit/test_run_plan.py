"""What ``kat-scheduler run`` starts, decided without starting anything."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from kat_scheduler.run.plan import (
    EmbeddedPorts,
    Role,
    RunMode,
    child_specs,
    embedded_environment,
    kat_scheduler_command,
    resolve_mode,
    status_command,
)
from kat_scheduler.settings import load_settings

PORTS = EmbeddedPorts(redis=7001, octopoes=7002, katalogus=7003, bytes=7004)


@pytest.fixture(autouse=True)
def no_configuration(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no .env
    for name in ("OCTOPOES_API", "KATALOGUS_API", "BYTES_API", "QUEUE_URI", "SCHEDULER_BROKER_URL", "SCHEDULER_DB_URI"):
        monkeypatch.delenv(name, raising=False)


def test_with_nothing_configured_the_run_is_embedded() -> None:
    assert resolve_mode(load_settings()) is RunMode.EMBEDDED


@pytest.mark.parametrize("variable", ["OCTOPOES_API", "KATALOGUS_API", "BYTES_API", "QUEUE_URI"])
def test_any_kat_service_configured_makes_the_run_external(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    monkeypatch.setenv(variable, "http://kat.example:8000" if variable != "QUEUE_URI" else "amqp://kat.example//")
    assert resolve_mode(load_settings()) is RunMode.EXTERNAL


def test_an_explicit_mode_wins() -> None:
    assert resolve_mode(load_settings(), "external") is RunMode.EXTERNAL


def test_embedded_children_point_at_the_embedded_services(tmp_path: Path) -> None:
    env = embedded_environment(load_settings(), tmp_path, PORTS)
    assert env["SCHEDULER_BROKER_URL"] == "redis://127.0.0.1:7001/0"
    assert env["QUEUE_URI"] == "redis://127.0.0.1:7001/1"
    assert env["SCHEDULER_DB_URI"] == f"sqlite:///{tmp_path.resolve() / 'kat_scheduler.db'}"
    assert env["OCTOPOES_API"] == "http://127.0.0.1:7002"
    assert env["SCHEDULER_RUNNER"] == "simulated"


def test_what_the_operator_set_is_never_overridden(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SCHEDULER_DB_URI", "postgresql://db.example/kat")
    monkeypatch.setenv("SCHEDULER_PLAN_INTERVAL", "120")
    env = embedded_environment(load_settings(), tmp_path, PORTS)
    assert "SCHEDULER_DB_URI" not in env and "SCHEDULER_PLAN_INTERVAL" not in env
    assert env["SCHEDULER_BROKER_URL"] == "redis://127.0.0.1:7001/0"


def test_the_embedded_run_starts_the_simulated_kat_and_every_scheduler_process() -> None:
    specs = child_specs(load_settings(), RunMode.EMBEDDED, flower_port=5555, flower_auth="u:p", sim_ports=PORTS)
    names = [spec.name for spec in specs]
    assert names == ["kat-sim", "scheduler", "boefjes", "normalizers", "listener", "beat", "flower"]
    assert specs[0].role is Role.SERVICE and specs[0].ready_url == "http://127.0.0.1:7003/health"
    assert {spec.name for spec in specs if spec.role is Role.PRODUCER} == {"listener", "beat"}


def test_an_external_run_starts_no_simulation_and_flower_only_when_asked() -> None:
    specs = child_specs(load_settings(), RunMode.EXTERNAL, flower_port=None, flower_auth="u:p")
    assert [spec.name for spec in specs] == ["scheduler", "boefjes", "normalizers", "listener", "beat"]


def test_workers_use_the_configured_concurrency() -> None:
    settings = load_settings(run_boefje_concurrency=7)
    boefjes = next(
        s for s in child_specs(settings, RunMode.EXTERNAL, flower_port=None, flower_auth="") if s.name == "boefjes"
    )
    assert boefjes.argv[boefjes.argv.index("--concurrency") + 1] == "7"
    assert boefjes.argv[boefjes.argv.index("-Q") + 1] == "boefjes"


def test_each_worker_names_its_node_and_queue_so_the_stop_can_ask_it_to_stop_consuming() -> None:
    specs = child_specs(load_settings(), RunMode.EXTERNAL, flower_port=5555, flower_auth="u:p", api_port=8004)
    workers = {spec.name: (spec.queue, spec.node) for spec in specs if spec.role is Role.WORKER}
    assert workers == {
        "scheduler": ("scheduler", "scheduler@%h"),
        "boefjes": ("boefjes", "boefjes@%h"),
        "normalizers": ("normalizers", "normalizers@%h"),
    }
    for spec in specs:
        if spec.node is not None:  # the node name it is asked by is the one it runs as
            assert spec.argv[spec.argv.index("--hostname") + 1] == spec.node
    assert all(spec.node is None and spec.queue is None for spec in specs if spec.role is not Role.WORKER)


def test_the_flower_password_is_not_on_the_command_line() -> None:
    specs = child_specs(load_settings(), RunMode.EXTERNAL, flower_port=5555, flower_auth="kat:s3cret")
    flower = next(spec for spec in specs if spec.name == "flower")
    assert "s3cret" not in " ".join(flower.argv)


def test_the_status_command_names_the_embedded_database_and_broker_and_no_setting_of_the_users_own(
    tmp_path: Path,
) -> None:
    overlay = embedded_environment(load_settings(broker_url="redis://:pw@elsewhere:6379/0"), tmp_path, PORTS)
    command = status_command(overlay)
    assert command == f"SCHEDULER_DB_URI={overlay['SCHEDULER_DB_URI']} {kat_scheduler_command()} status"
    assert "pw" not in command


def test_after_the_run_the_status_command_reads_only_its_database(tmp_path: Path) -> None:
    overlay = embedded_environment(load_settings(), tmp_path, PORTS)
    assert status_command(overlay) == (
        f"SCHEDULER_DB_URI={overlay['SCHEDULER_DB_URI']} SCHEDULER_BROKER_URL=redis://127.0.0.1:7001/0 "
        f"{kat_scheduler_command()} status"
    )
    assert status_command(overlay, database_only=True) == (
        f"SCHEDULER_DB_URI={overlay['SCHEDULER_DB_URI']} {kat_scheduler_command()} status --no-broker"
    )


def test_kat_scheduler_is_called_by_its_full_path_next_to_this_python() -> None:
    command = kat_scheduler_command()
    assert command.startswith(str(Path(sys.executable).parent)) or command.endswith("-m kat_scheduler")
