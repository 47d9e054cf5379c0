"""The liveness file of the listener and beat, and ``kat-scheduler heartbeat``."""

from __future__ import annotations

import os
import time
from pathlib import Path

from click.testing import CliRunner

from kat_scheduler.cli import main
from kat_scheduler.runtime.heartbeat import Heartbeat, age


def test_a_beat_touches_the_file_at_most_every_interval(tmp_path: Path) -> None:
    alive = tmp_path / "alive"
    heartbeat = Heartbeat(alive, every=3600)
    heartbeat.beat()
    assert alive.exists()
    os.utime(alive, (1, 1))
    heartbeat.beat()  # within the interval: not touched again
    assert alive.stat().st_mtime == 1


def test_a_heartbeat_without_a_file_does_nothing_and_an_unwritable_one_never_raises(tmp_path: Path) -> None:
    Heartbeat(None).beat()
    Heartbeat(tmp_path / "missing-folder" / "alive").beat()  # logged, not raised


def test_the_check_exits_0_when_fresh_1_when_stale_or_missing_2_when_unconfigured(tmp_path: Path) -> None:
    alive = tmp_path / "alive"
    runner = CliRunner()
    missing = runner.invoke(main, ["heartbeat", "--file", str(alive)])
    assert missing.exit_code == 1 and "does not exist" in missing.output
    alive.touch()
    assert runner.invoke(main, ["heartbeat", "--file", str(alive)]).exit_code == 0
    old = time.time() - 120
    os.utime(alive, (old, old))
    stale = runner.invoke(main, ["heartbeat", "--file", str(alive), "--max-age", "60"])
    assert stale.exit_code == 1 and "120s ago" in stale.output.replace("119s", "120s")
    seconds = age(alive)
    assert seconds is not None and seconds >= 119
    unconfigured = runner.invoke(main, ["heartbeat"], env={"SCHEDULER_HEARTBEAT_FILE": ""})
    assert unconfigured.exit_code == 2
