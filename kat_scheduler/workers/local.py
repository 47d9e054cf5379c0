"""Local Python plugins in KAT's own layout.

``SCHEDULER_PLUGINS_PATH`` holds a folder per plugin::

    plugins/
      kat_dns/
        boefje.json        {"id": "dns-records", ...}
        main.py            def run(boefje_meta: dict) -> list[tuple[set[str], bytes | str]]
      kat_dns_normalize/
        normalizer.json    {"id": "kat_dns_normalize", ...}
        normalize.py       def run(input_ooi: dict, raw: bytes) -> Iterable[dict]

A boefje's settings (Katalogus) are environment variables while it runs, as in KAT. Workers
run one task per process (prefork), so setting the environment for the run is safe.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from kat_scheduler.workers.runners import RawOutput, UnknownPlugin, as_bytes

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


class LocalPluginRunner:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.boefjes: dict[str, Path] = {}
        self.normalizers: dict[str, Path] = {}
        self._modules: dict[Path, ModuleType] = {}
        self._discover()

    def _discover(self) -> None:
        if not self.path.is_dir():
            logger.warning("plugin path %s does not exist: every task will fail as an unknown plugin", self.path)
            return
        for folder in sorted(p for p in self.path.iterdir() if p.is_dir()):
            for description, module, registry in (
                ("boefje.json", "main.py", self.boefjes),
                ("normalizer.json", "normalize.py", self.normalizers),
            ):
                described = folder / description
                if not described.exists():
                    continue
                try:
                    plugin_id = json.loads(described.read_text())["id"]
                except (ValueError, KeyError) as exc:
                    logger.error("skipping plugin folder %s: %s has no valid id (%s)", folder, description, exc)
                    continue
                registry[plugin_id] = folder / module

    def _function(self, registry: dict[str, Path], plugin_id: str, kind: str) -> Callable[..., Any]:
        source = registry.get(plugin_id)
        if source is None:
            raise UnknownPlugin(f"no local {kind} {plugin_id!r} under {self.path}")
        module = self._modules.get(source)
        if module is None:
            spec = importlib.util.spec_from_file_location(f"kat_plugin_{source.parent.name}_{source.stem}", source)
            if spec is None or spec.loader is None:
                raise UnknownPlugin(f"cannot load {source}")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            self._modules[source] = module
        function = getattr(module, "run", None)
        if not callable(function):
            raise UnknownPlugin(f"{source} has no run()")
        return function  # type: ignore[no-any-return]

    def run_boefje(self, boefje_id: str, boefje_meta: dict[str, Any], env: dict[str, str]) -> RawOutput:
        run = self._function(self.boefjes, boefje_id, "boefje")
        with environment(env):
            output = run(boefje_meta)
        return [(set(mime_types), as_bytes(content)) for mime_types, content in output]

    def run_normalizer(self, normalizer_id: str, input_ooi: dict[str, Any], raw: bytes) -> list[dict[str, Any]]:
        run = self._function(self.normalizers, normalizer_id, "normalizer")
        results = []
        for item in run(input_ooi, raw):
            if hasattr(item, "model_dump"):
                item = item.model_dump(mode="json")
            if not isinstance(item, dict) or "object_type" not in item or "primary_key" not in item:
                raise ValueError(
                    f"normalizer {normalizer_id} yielded {item!r}: an OOI needs object_type and primary_key"
                )
            results.append(item)
        return results
