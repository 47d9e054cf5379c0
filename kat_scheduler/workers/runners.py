"""The runner protocol: how a boefje or normalizer is actually run.

* boefje: ``run_boefje(boefje_id, boefje_meta, environment) -> [(mime types, raw bytes)]``
* normalizer: ``run_normalizer(normalizer_id, input_ooi, raw) -> [OOI dict]``

Two runners ship: :class:`~kat_scheduler.workers.local.LocalPluginRunner` (plugins in KAT's own
layout on disk) and :class:`~kat_scheduler.workers.simulated.SimulatedRunner` (the simulated
world's plugins). ``SCHEDULER_RUNNER`` chooses.
"""

from __future__ import annotations

from typing import Any, Protocol

RawOutput = list[tuple[set[str], bytes]]


class UnknownPlugin(LookupError):
    """The runner has no plugin with this id; the task fails with this message."""


class Runner(Protocol):
    def run_boefje(self, boefje_id: str, boefje_meta: dict[str, Any], environment: dict[str, str]) -> RawOutput: ...

    def run_normalizer(self, normalizer_id: str, input_ooi: dict[str, Any], raw: bytes) -> list[dict[str, Any]]: ...


def as_bytes(content: bytes | str) -> bytes:
    return content if isinstance(content, bytes) else content.encode("utf-8")
