"""``kat-scheduler sim serve`` prints the service URLs, serves, and stops on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import requests
from click.testing import CliRunner

from kat_scheduler.sim.cli import sim


def test_serve_help_lists_every_option() -> None:
    result = CliRunner().invoke(sim, ["serve", "--help"])
    assert result.exit_code == 0
    for option in (
        "--seed",
        "--organisations",
        "--oois-per-org",
        "--boefjes",
        "--history-fraction",
        "--host",
        "--octopoes-port",
        "--katalogus-port",
        "--bytes-port",
        "--bytes-username",
        "--bytes-password",
    ):
        assert option in result.output
    assert "8001" in result.output and "8003" in result.output and "8002" in result.output


def test_serve_prints_urls_serves_the_world_and_stops_on_sigterm() -> None:
    command = [
        sys.executable,
        "-m",
        "kat_scheduler.sim.cli",
        "serve",
        "--seed=5",
        "--organisations=2",
        "--oois-per-org=50",
        "--octopoes-port=0",
        "--katalogus-port=0",
        "--bytes-port=0",
        "--bytes-password=pw",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout is not None
        urls: dict[str, str] = {}
        summary: list[str] = []
        for line in process.stdout:
            if "=" in line and not line.startswith("#"):
                name, _, value = line.strip().partition("=")
                urls[name] = value
            else:
                summary.append(line)
            if line.startswith("# serving"):
                break
        assert set(urls) == {"OCTOPOES_API", "KATALOGUS_API", "BYTES_API"}
        assert any("2 organisations, 100 objects" in line for line in summary)

        organisations = requests.get(f"{urls['KATALOGUS_API']}/v1/organisations", timeout=5).json()
        assert list(organisations) == ["org01", "org02"]
        assert requests.get(f"{urls['OCTOPOES_API']}/org02/objects", timeout=5).json()["count"] == 50
        token = requests.post(f"{urls['BYTES_API']}/token", data={"username": "bytes", "password": "pw"}, timeout=5)
        assert token.status_code == 200

        process.send_signal(signal.SIGTERM)
        remaining, _ = process.communicate(timeout=10)
        assert process.returncode == 0
        assert "# stopped" in remaining
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
