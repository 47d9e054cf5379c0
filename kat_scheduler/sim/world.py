"""The simulated KAT world: organisations, their object graphs, plugins and Bytes history.

Build one with :func:`generate_world`; the same :class:`WorldConfig` (with ``now`` set) always
gives an identical world. The three simulated services (:mod:`kat_scheduler.sim.server`)
serve it over HTTP; tests and benchmarks read it directly.

Reading the world (all methods take the world lock; returned collections are copies):

- ``world.organisations`` — ``list[OrganisationRecord]`` (``.id``, ``.name``) in order;
  ``world.organisation_ids``; ``world.organisation(org_id)``.
- ``world.boefjes`` / ``world.normalizers`` — the catalogue (``BoefjeDef`` / ``NormalizerDef``:
  ``id``, ``name``, ``scan_level``, ``consumes``, ``produces``, ``interval``, ``cron``,
  ``run_on``, ...), the same for every organisation; ``world.plugin(plugin_id)``.
- ``world.oois(org)`` — ``dict[primary_key, OOIRecord]`` in insertion order;
  ``world.get_ooi(org, pk)``; ``world.list_oois(org, types=..., scan_levels=...)`` lists by type
  and effective scan level (``OOIRecord.scan_level``: 0 when the profile is empty), in the
  order Octopoes pages them; ``world.ooi_types(org)``.
- ``world.is_enabled(org, plugin_id)``, ``world.enabled_plugins(org)`` (``dict[id, bool]``),
  ``world.enabled_boefjes(org)``, ``world.enabled_normalizers(org)``,
  ``world.boefje_settings(org, boefje_id)``.
- Bytes history: ``world.runs(org, boefje_id=None, input_ooi="*")`` — ``list[BoefjeRun]``
  sorted by ``started_at`` ascending (``input_ooi="*"`` any, ``None`` only runs without an
  input object, else that object); ``world.last_run(org, boefje_id, input_ooi)``;
  ``world.boefje_meta(meta_id)``; ``world.render_boefje_meta(run)`` gives the BoefjeMeta JSON.
- What clients stored: ``world.raw_files_of(meta_id)``, ``world.raw_file(raw_id)``,
  ``world.observations``, ``world.normalizer_runs``.
- ``world.stats()`` — counts for summaries.

``world.select_oois(...)`` / ``world.select_runs(...)`` are the no-copy variants the services
use: call them with ``world.lock`` held and do not modify what they return.

By KAT-API.md's rules a boefje ``b`` may run on an object ``o`` of an organisation when ``b`` is
enabled there, ``o.object_type in b.consumes`` and ``b.scan_level <= o.scan_level``; boefjes
with ``run_on`` set run only on scan-profile events, and those with empty ``consumes`` only on
request. Everything needed to compute that set is above, as plain records.

Changing the world (each emits the event real KAT would, to every listener added with
``world.add_listener(sink)``; sinks are called as ``sink(queue_name, body)`` outside the lock):

- ``set_plugin_enabled(org, plugin_id, enabled)``; ``set_boefje_settings(org, boefje_id, settings)``;
  ``set_plugin_deduplicate(org, boefje_id, flag)`` (Katalogus' per-organisation ``deduplicate``),
  ``set_organisation_deduplicate(org, flag)`` (the organisation's own)
- ``set_scan_level(org, pk, level, scan_profile_type="declared")`` → ``update`` mutation
- ``add_ooi(org, object_type, pk, level=..., scan_profile_type=..., attributes=...)`` → ``create``
- ``delete_ooi(org, pk)`` → ``delete`` (value ``null``)
- ``observe(org, method, source, results, ...)`` → ``create`` for each new object
- ``add_boefje_meta(meta)``, ``add_raw(meta_id, files)`` → ``raw_file_received`` per new file,
  ``add_normalizer_meta(meta)``
"""

from __future__ import annotations

import bisect
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from itertools import chain
from typing import Any

from kat_scheduler.models import OOI, BoefjeMeta, NormalizerMeta
from kat_scheduler.queues import RAW_FILE_RECEIVED, SCAN_PROFILE_MUTATIONS
from kat_scheduler.sim import events, generator
from kat_scheduler.sim.deschedule import DESCHEDULE_BOEFJE, DESCHEDULE_NORMALIZER
from kat_scheduler.sim.records import (
    DECLARED,
    EMPTY,
    INHERITED,
    SCAN_PROFILE_TYPES,
    BoefjeDef,
    BoefjeRun,
    NormalizerDef,
    NormalizerRun,
    Observation,
    OOIRecord,
    OrganisationRecord,
    PluginDef,
    RawFile,
)

#: ``input_ooi`` value that matches runs on any object (and runs without one).
ANY = "*"

_NO_TIME = datetime.min.replace(tzinfo=UTC)
_CACHE_LIMIT = 128

OOIQueryKey = tuple[frozenset[str] | None, frozenset[int] | None, frozenset[str] | None]


class UnknownOrganisation(KeyError):
    """The organisation does not exist."""


class NotFound(KeyError):
    """The object, plugin or record does not exist."""


class Conflict(ValueError):
    """The record already exists, or the request contradicts itself."""


@dataclass(frozen=True)
class WorldConfig:
    """What world to generate. ``now`` anchors the history; ``None`` means "at generation"."""

    seed: int = 1
    organisations: int = 3
    oois_per_org: int = 100
    boefjes: int = 10
    history_fraction: float = 0.3
    now: datetime | None = None
    boefje_enabled_fraction: float = 0.8
    normalizer_enabled_fraction: float = 0.95
    #: Domains (a zone, its hostname and what hangs under it) of a pool that several organisations
    #: hold, each at its own level: the same primary keys in several organisations. 0: none (the
    #: worlds of before, object for object).
    shared_domains: int = 0
    #: Add the boefje that deschedules a quarter of its objects (:mod:`kat_scheduler.sim.deschedule`),
    #: after the others; off: the worlds of before.
    deschedule_boefje: bool = False
    #: Give the catalogue boefjes of ``catalogue.RATE_LIMITS`` their Katalogus rate limits; off:
    #: the worlds of before (no boefje has a limit).
    rate_limits: bool = False

    def __post_init__(self) -> None:
        if self.organisations < 0 or self.oois_per_org < 0 or self.boefjes < 0 or self.shared_domains < 0:
            raise ValueError("organisations, oois_per_org, boefjes and shared_domains must not be negative")
        for name in ("history_fraction", "boefje_enabled_fraction", "normalizer_enabled_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, not {value}")
        if self.now is not None and self.now.tzinfo is None:
            raise ValueError("now must be timezone-aware")


def _run_key(run: BoefjeRun) -> datetime:
    return run.started_at or _NO_TIME


@dataclass
class _Org:
    """One organisation's state, with the indexes the services need."""

    record: OrganisationRecord
    oois: dict[str, OOIRecord]
    by_type: dict[str, dict[str, OOIRecord]]
    enabled: dict[str, bool]
    settings: dict[str, dict[str, str]]
    query_cache: dict[OOIQueryKey, list[OOIRecord]] = field(default_factory=dict)
    #: Boefjes whose ``deduplicate`` flag this organisation set otherwise than the catalogue's.
    deduplicate: dict[str, bool] = field(default_factory=dict)
    #: The organisation's own ``deduplicate`` flag in Katalogus (``None``: not listed).
    organisation_deduplicate: bool | None = None

    def index_ooi(self, ooi: OOIRecord) -> None:
        self.oois[ooi.primary_key] = ooi
        self.by_type.setdefault(ooi.object_type, {})[ooi.primary_key] = ooi
        self.query_cache.clear()

    def unindex_ooi(self, primary_key: str) -> OOIRecord | None:
        ooi = self.oois.pop(primary_key, None)
        if ooi is not None:
            self.by_type.get(ooi.object_type, {}).pop(primary_key, None)
            self.query_cache.clear()
        return ooi


@dataclass
class _History:
    """Bytes' boefje runs of one organisation, sorted by ``started_at``, with lookup indexes.

    Bytes does not know organisations, so runs for any organisation name are accepted.
    """

    runs: list[BoefjeRun] = field(default_factory=list)
    runs_by_boefje: dict[str, list[BoefjeRun]] = field(default_factory=dict)
    runs_by_key: dict[tuple[str, str | None], list[BoefjeRun]] = field(default_factory=dict)

    def index_run(self, run: BoefjeRun, *, append: bool = False) -> None:
        lists = (
            self.runs,
            self.runs_by_boefje.setdefault(run.boefje_id, []),
            self.runs_by_key.setdefault((run.boefje_id, run.input_ooi), []),
        )
        for runs in lists:
            if append:
                runs.append(run)
            else:
                bisect.insort_right(runs, run, key=_run_key)


class World:
    """The simulated state of one KAT installation. Build it with :func:`generate_world`."""

    def __init__(
        self,
        config: WorldConfig,
        boefjes: Sequence[BoefjeDef],
        normalizers: Sequence[NormalizerDef],
        orgs: Iterable[generator.GeneratedOrg],
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.config = config
        self.lock = threading.RLock()
        #: Timestamps of things clients store (raw files, events); defaults to the wall clock.
        self.clock: Callable[[], datetime] = clock or (lambda: datetime.now(UTC))
        self._boefjes = list(boefjes)
        self._normalizers = list(normalizers)
        plugins: list[PluginDef] = [*self._boefjes, *self._normalizers]
        self._plugins: dict[str, PluginDef] = {p.id: p for p in plugins}
        self._orgs: dict[str, _Org] = {}
        self._history: dict[str, _History] = {}
        self._runs_by_id: dict[uuid.UUID, BoefjeRun] = {}
        self._raw_files: dict[uuid.UUID, RawFile] = {}
        self._raw_by_meta: dict[uuid.UUID, list[RawFile]] = {}
        self._normalizer_runs: dict[uuid.UUID, NormalizerRun] = {}
        self._observations: list[Observation] = []
        self._listeners: list[events.EventSink] = []
        for generated in orgs:
            org = _Org(generated.organisation, {}, {}, dict(generated.enabled), dict(generated.settings))
            for ooi in generated.oois:
                org.oois[ooi.primary_key] = ooi
                org.by_type.setdefault(ooi.object_type, {})[ooi.primary_key] = ooi
            history = self._history.setdefault(generated.organisation.id, _History())
            for run in generated.runs:  # already sorted by started_at
                history.index_run(run, append=True)
                self._runs_by_id[run.id] = run
            self._orgs[generated.organisation.id] = org

    @property
    def now(self) -> datetime:
        """The moment the generated history is relative to."""
        assert self.config.now is not None
        return self.config.now

    # -- events ----------------------------------------------------------------------------

    def add_listener(self, sink: events.EventSink) -> None:
        with self.lock:
            self._listeners.append(sink)

    def remove_listener(self, sink: events.EventSink) -> None:
        with self.lock:
            if sink in self._listeners:
                self._listeners.remove(sink)

    def _emit(self, pending: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """Deliver events; called without holding the lock so sinks may read the world."""
        if not pending:
            return
        with self.lock:
            listeners = list(self._listeners)
        for queue, body in pending:
            for sink in listeners:
                sink(queue, body)

    # -- organisations and plugins ---------------------------------------------------------

    @property
    def organisations(self) -> list[OrganisationRecord]:
        with self.lock:
            return [org.record for org in self._orgs.values()]

    @property
    def organisation_ids(self) -> list[str]:
        with self.lock:
            return list(self._orgs)

    def organisation(self, org_id: str) -> OrganisationRecord | None:
        with self.lock:
            org = self._orgs.get(org_id)
            return org.record if org else None

    def _org(self, org_id: str) -> _Org:
        org = self._orgs.get(org_id)
        if org is None:
            raise UnknownOrganisation(org_id)
        return org

    @property
    def boefjes(self) -> list[BoefjeDef]:
        return list(self._boefjes)

    @property
    def normalizers(self) -> list[NormalizerDef]:
        return list(self._normalizers)

    @property
    def plugins(self) -> list[PluginDef]:
        """Boefjes then normalizers, in catalogue order (the order the Katalogus lists them)."""
        return [*self._boefjes, *self._normalizers]

    def plugin(self, plugin_id: str) -> PluginDef | None:
        return self._plugins.get(plugin_id)

    def is_enabled(self, org_id: str, plugin_id: str) -> bool:
        with self.lock:
            return self._org(org_id).enabled.get(plugin_id, False)

    def enabled_plugins(self, org_id: str) -> dict[str, bool]:
        with self.lock:
            return dict(self._org(org_id).enabled)

    def enabled_boefjes(self, org_id: str) -> list[BoefjeDef]:
        with self.lock:
            enabled = self._org(org_id).enabled
            return [b for b in self._boefjes if enabled.get(b.id, False)]

    def enabled_normalizers(self, org_id: str) -> list[NormalizerDef]:
        with self.lock:
            enabled = self._org(org_id).enabled
            return [n for n in self._normalizers if enabled.get(n.id, False)]

    def boefje_settings(self, org_id: str, boefje_id: str) -> dict[str, str]:
        with self.lock:
            return dict(self._org(org_id).settings.get(boefje_id, {}))

    def set_plugin_enabled(self, org_id: str, plugin_id: str, enabled: bool) -> None:
        with self.lock:
            org = self._org(org_id)
            if plugin_id not in self._plugins:
                raise NotFound(plugin_id)
            org.enabled[plugin_id] = bool(enabled)

    def deduplicates(self, org_id: str, boefje_id: str) -> bool:
        """The boefje's ``deduplicate`` flag in the organisation (the catalogue's unless set)."""
        with self.lock:
            plugin = self._plugins.get(boefje_id)
            default = plugin.deduplicate if isinstance(plugin, BoefjeDef) else False
            return self._org(org_id).deduplicate.get(boefje_id, default)

    def set_organisation_deduplicate(self, org_id: str, deduplicate: bool | None) -> None:
        """Set the organisation's own ``deduplicate`` flag (``None``: Katalogus lists none)."""
        with self.lock:
            self._org(org_id).organisation_deduplicate = deduplicate

    def organisation_json(self, org_id: str) -> dict[str, Any]:
        """An organisation as Katalogus lists it."""
        with self.lock:
            org = self._org(org_id)
            found = org.record.to_json()
            if org.organisation_deduplicate is not None:
                found["deduplicate"] = org.organisation_deduplicate
            return found

    def set_plugin_deduplicate(self, org_id: str, boefje_id: str, deduplicate: bool) -> None:
        """Set the boefje's ``deduplicate`` flag for one organisation (Katalogus lists it so)."""
        with self.lock:
            org = self._org(org_id)
            if not isinstance(self._plugins.get(boefje_id), BoefjeDef):
                raise NotFound(boefje_id)
            org.deduplicate[boefje_id] = bool(deduplicate)

    def plugin_json(self, org_id: str, plugin: PluginDef, enabled: bool) -> dict[str, Any]:
        """A plugin as Katalogus lists it for the organisation."""
        found = plugin.to_json(enabled)
        if isinstance(plugin, BoefjeDef):
            with self.lock:
                flag = self._org(org_id).deduplicate.get(plugin.id)
            if flag is not None:
                found["deduplicate"] = flag
        return found

    def set_boefje_settings(self, org_id: str, boefje_id: str, settings: Mapping[str, str]) -> None:
        with self.lock:
            org = self._org(org_id)
            if boefje_id not in self._plugins:
                raise NotFound(boefje_id)
            org.settings[boefje_id] = dict(settings)

    # -- objects ---------------------------------------------------------------------------

    def oois(self, org_id: str) -> dict[str, OOIRecord]:
        with self.lock:
            return dict(self._org(org_id).oois)

    def ooi_types(self, org_id: str) -> list[str]:
        with self.lock:
            return [t for t, oois in self._org(org_id).by_type.items() if oois]

    def get_ooi(self, org_id: str, primary_key: str) -> OOIRecord | None:
        with self.lock:
            return self._org(org_id).oois.get(primary_key)

    def list_oois(
        self,
        org_id: str,
        types: Iterable[str] | None = None,
        scan_levels: Iterable[int] | None = None,
        scan_profile_types: Iterable[str] | None = None,
    ) -> list[OOIRecord]:
        """Objects of the given types and effective scan levels (``None``: no filter)."""
        with self.lock:
            return list(self.select_oois(org_id, types, scan_levels, scan_profile_types))

    def select_oois(
        self,
        org_id: str,
        types: Iterable[str] | None = None,
        scan_levels: Iterable[int] | None = None,
        scan_profile_types: Iterable[str] | None = None,
    ) -> list[OOIRecord]:
        """As :meth:`list_oois`, but the cached list itself: call with ``world.lock`` held, don't modify."""
        with self.lock:
            org = self._org(org_id)
            key: OOIQueryKey = (
                frozenset(types) if types is not None else None,
                frozenset(scan_levels) if scan_levels is not None else None,
                frozenset(scan_profile_types) if scan_profile_types is not None else None,
            )
            cached = org.query_cache.get(key)
            if cached is not None:
                return cached
            type_set, level_set, profile_set = key
            source: Iterable[OOIRecord]
            if type_set is None:
                source = org.oois.values()
            else:
                source = chain.from_iterable(org.by_type.get(t, {}).values() for t in sorted(type_set))
            result = [
                ooi
                for ooi in source
                if (level_set is None or ooi.scan_level in level_set)
                and (profile_set is None or ooi.scan_profile_type in profile_set)
            ]
            if len(org.query_cache) >= _CACHE_LIMIT:
                org.query_cache.clear()
            org.query_cache[key] = result
            return result

    def add_ooi(
        self,
        org_id: str,
        object_type: str,
        primary_key: str,
        *,
        level: int = 0,
        scan_profile_type: str | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> OOIRecord:
        """Add a new object (``Conflict`` if it exists); the profile defaults to declared, or empty at 0."""
        profile_type = scan_profile_type or (DECLARED if level > 0 else EMPTY)
        _check_profile(profile_type, level)
        ooi = OOIRecord(
            object_type,
            primary_key,
            profile_type,
            0 if profile_type == EMPTY else level,
            dict(attributes) if attributes is not None else None,
        )
        with self.lock:
            org = self._org(org_id)
            if primary_key in org.oois:
                raise Conflict(f"{primary_key} already exists in {org_id}")
            org.index_ooi(ooi)
            event = events.scan_profile_mutation("create", org_id, primary_key, ooi)
        self._emit([(SCAN_PROFILE_MUTATIONS, event)])
        return ooi

    def set_scan_level(self, org_id: str, primary_key: str, level: int, scan_profile_type: str = DECLARED) -> OOIRecord:
        """Give an object a new scan profile (declared by default); emits an ``update`` mutation."""
        _check_profile(scan_profile_type, level)
        with self.lock:
            org = self._org(org_id)
            ooi = org.oois.get(primary_key)
            if ooi is None:
                raise NotFound(primary_key)
            ooi.scan_profile_type = scan_profile_type
            ooi.level = 0 if scan_profile_type == EMPTY else level
            org.query_cache.clear()
            event = events.scan_profile_mutation("update", org_id, primary_key, ooi)
        self._emit([(SCAN_PROFILE_MUTATIONS, event)])
        return ooi

    def delete_ooi(self, org_id: str, primary_key: str) -> bool:
        """Remove an object; emits a ``delete`` mutation. False if it did not exist."""
        with self.lock:
            if self._org(org_id).unindex_ooi(primary_key) is None:
                return False
            event = events.scan_profile_mutation("delete", org_id, primary_key, None)
        self._emit([(SCAN_PROFILE_MUTATIONS, event)])
        return True

    def observe(
        self,
        org_id: str,
        method: str,
        source: str,
        results: Sequence[OOI],
        *,
        source_method: str | None = None,
        task_id: str | None = None,
    ) -> list[OOIRecord]:
        """Save a normalizer's output as Octopoes does; returns the objects that were new.

        New objects get an inherited profile at the source object's level (an empty one when
        that level is 0 or the source is unknown), and each emits a ``create`` mutation.
        """
        pending: list[tuple[str, dict[str, Any]]] = []
        created: list[OOIRecord] = []
        with self.lock:
            org = self._org(org_id)
            source_ooi = org.oois.get(source)
            level = source_ooi.scan_level if source_ooi else 0
            for result in results:
                if result.primary_key in org.oois:
                    continue
                attributes = {k: v for k, v in (result.model_extra or {}).items() if k != "user_id"}
                ooi = OOIRecord(
                    result.object_type,
                    result.primary_key,
                    INHERITED if level > 0 else EMPTY,
                    level,
                    attributes,
                )
                org.index_ooi(ooi)
                created.append(ooi)
                pending.append(
                    (
                        SCAN_PROFILE_MUTATIONS,
                        events.scan_profile_mutation("create", org_id, ooi.primary_key, ooi),
                    )
                )
            self._observations.append(
                Observation(
                    org_id,
                    method,
                    source,
                    source_method,
                    task_id,
                    tuple(r.primary_key for r in results),
                    tuple(o.primary_key for o in created),
                )
            )
        self._emit(pending)
        return created

    @property
    def observations(self) -> list[Observation]:
        with self.lock:
            return list(self._observations)

    # -- Bytes -----------------------------------------------------------------------------

    def runs(self, org_id: str, boefje_id: str | None = None, input_ooi: str | None = ANY) -> list[BoefjeRun]:
        """Boefje runs sorted by ``started_at`` ascending. ``input_ooi``: ``"*"`` any, ``None`` none."""
        with self.lock:
            return list(self.select_runs(org_id, boefje_id, input_ooi))

    def select_runs(
        self,
        org_id: str,
        boefje_id: str | None = None,
        input_ooi: str | None = ANY,
        boefje_version: str | None = None,
    ) -> Sequence[BoefjeRun]:
        """As :meth:`runs`, possibly the index list itself: call with ``world.lock`` held, don't modify.

        An organisation Bytes has no runs for simply has none (no error).
        """
        with self.lock:
            org = self._history.get(org_id) or _History()
            runs: Sequence[BoefjeRun]
            if boefje_id is not None:
                if input_ooi == ANY:
                    runs = org.runs_by_boefje.get(boefje_id, [])
                else:
                    runs = org.runs_by_key.get((boefje_id, input_ooi), [])
            elif input_ooi == ANY:
                runs = org.runs
            else:
                runs = [run for run in org.runs if run.input_ooi == input_ooi]
            if boefje_version is not None:
                runs = [run for run in runs if run.boefje_version == boefje_version]
            return runs

    def last_run(self, org_id: str, boefje_id: str, input_ooi: str | None) -> BoefjeRun | None:
        """The run with the latest ``started_at`` of a boefje on an object (``None``: without one)."""
        with self.lock:
            runs = self.select_runs(org_id, boefje_id, input_ooi)
            return runs[-1] if runs else None

    def boefje_meta(self, meta_id: uuid.UUID | str) -> BoefjeRun | None:
        key = meta_id if isinstance(meta_id, uuid.UUID) else uuid.UUID(meta_id)
        with self.lock:
            return self._runs_by_id.get(key)

    def render_boefje_meta(self, run: BoefjeRun) -> dict[str, Any]:
        """The BoefjeMeta JSON of a run; generated runs get ``{"input": <the object now>}``."""
        if run.arguments is not None:
            return run.to_json(run.arguments)
        if run.input_ooi is None:
            return run.to_json({})
        with self.lock:
            org = self._orgs.get(run.organization)
            ooi = org.oois.get(run.input_ooi) if org else None
            if ooi is not None:
                return run.to_json({"input": ooi.to_json()})
        object_type = run.input_ooi.split("|", 1)[0]
        return run.to_json({"input": {"object_type": object_type, "primary_key": run.input_ooi}})

    def add_boefje_meta(self, meta: BoefjeMeta) -> BoefjeRun:
        """Store a posted boefje run (for any organisation name, as Bytes); ``Conflict`` if its id exists."""
        extra = {k: v for k, v in (meta.model_extra or {}).items()}
        run = BoefjeRun(
            id=meta.id,
            organization=meta.organization,
            boefje_id=meta.boefje.id,
            input_ooi=meta.input_ooi,
            started_at=meta.started_at,
            ended_at=meta.ended_at,
            boefje_version=meta.boefje.version,
            arguments=dict(meta.arguments),
            environment=dict(meta.environment) if meta.environment is not None else None,
            runnable_hash=meta.runnable_hash,
            extra=extra or None,
        )
        with self.lock:
            if run.id in self._runs_by_id:
                raise Conflict(f"boefje meta {run.id} already exists")
            self._runs_by_id[run.id] = run
            self._history.setdefault(run.organization, _History()).index_run(run)
        return run

    def add_raw(self, meta_id: uuid.UUID, files: Sequence[tuple[str, bytes, Sequence[str]]]) -> dict[str, uuid.UUID]:
        """Store raw files of a boefje run as Bytes does; returns ``{name: raw id}``.

        A file whose set of mime types equals one already stored for this run is not stored
        again: its name maps to the existing raw file and no event is sent. Two new files
        with the same set in one call are a ``Conflict``. Each stored file emits
        ``raw_file_received``.
        """
        pending: list[tuple[str, dict[str, Any]]] = []
        ids: dict[str, uuid.UUID] = {}
        with self.lock:
            run = self._runs_by_id.get(meta_id)
            if run is None:
                raise NotFound(str(meta_id))
            existing = {frozenset(raw.mime_types): raw.id for raw in self._raw_by_meta.get(meta_id, [])}
            new_sets = [frozenset(tags) for _, _, tags in files if frozenset(tags) not in existing]
            if len(new_sets) != len(set(new_sets)):
                raise Conflict("Content types do not define unique sets of mime types.")
            meta_json = self.render_boefje_meta(run)
            for name, content, tags in files:
                mime_types = tuple(dict.fromkeys(tags))
                known = existing.get(frozenset(mime_types))
                if known is not None:
                    ids[name] = known
                    continue
                raw = RawFile(uuid.uuid4(), meta_id, run.organization, content, mime_types, self.clock())
                self._raw_files[raw.id] = raw
                self._raw_by_meta.setdefault(meta_id, []).append(raw)
                existing[frozenset(mime_types)] = raw.id
                ids[name] = raw.id
                body = events.raw_file_received(run.organization, str(raw.id), meta_json, mime_types, raw.created_at)
                pending.append((RAW_FILE_RECEIVED, body))
        self._emit(pending)
        return ids

    def raw_file(self, raw_id: uuid.UUID | str) -> RawFile | None:
        key = raw_id if isinstance(raw_id, uuid.UUID) else uuid.UUID(raw_id)
        with self.lock:
            return self._raw_files.get(key)

    def raw_files(self) -> list[RawFile]:
        with self.lock:
            return list(self._raw_files.values())

    def raw_files_of(self, meta_id: uuid.UUID | str) -> list[RawFile]:
        key = meta_id if isinstance(meta_id, uuid.UUID) else uuid.UUID(meta_id)
        with self.lock:
            return list(self._raw_by_meta.get(key, []))

    def render_raw_meta(self, raw: RawFile) -> dict[str, Any]:
        """The RawDataMeta JSON of a stored raw file."""
        with self.lock:
            run = self._runs_by_id[raw.boefje_meta_id]
            return {
                "id": str(raw.id),
                "boefje_meta": self.render_boefje_meta(run),
                "mime_types": [{"value": m} for m in raw.mime_types],
                "secure_hash": None,
                "hash_retrieval_link": None,
            }

    def add_normalizer_meta(self, meta: NormalizerMeta, body: Mapping[str, Any]) -> NormalizerRun:
        """Store a posted normalizer run (kept as posted); ``Conflict`` if its id exists."""
        run = NormalizerRun(meta.id, meta.normalizer.id, meta.raw_data.id, dict(body))
        with self.lock:
            if run.id in self._normalizer_runs:
                raise Conflict(f"normalizer meta {run.id} already exists")
            self._normalizer_runs[run.id] = run
        return run

    @property
    def normalizer_runs(self) -> list[NormalizerRun]:
        with self.lock:
            return list(self._normalizer_runs.values())

    # -- summary ---------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counts for summaries: totals, objects per type and per scan level."""
        with self.lock:
            types: Counter[str] = Counter()
            levels: Counter[int] = Counter()
            for org in self._orgs.values():
                for ooi in org.oois.values():
                    types[ooi.object_type] += 1
                    levels[ooi.scan_level] += 1
            return {
                "organisations": len(self._orgs),
                "oois": sum(types.values()),
                "boefjes": len(self._boefjes),
                "normalizers": len(self._normalizers),
                "boefje_runs": len(self._runs_by_id),
                "raw_files": len(self._raw_files),
                "oois_per_type": dict(sorted(types.items())),
                "oois_per_scan_level": dict(sorted(levels.items())),
            }


def _check_profile(scan_profile_type: str, level: int) -> None:
    if scan_profile_type not in SCAN_PROFILE_TYPES:
        raise ValueError(f"scan_profile_type must be one of {SCAN_PROFILE_TYPES}, not {scan_profile_type!r}")
    if not 0 <= level <= 4:
        raise ValueError(f"scan level must be 0-4, not {level}")


def generate_world(config: WorldConfig | None = None, *, clock: Callable[[], datetime] | None = None) -> World:
    """Generate the world ``config`` describes (the defaults when ``None``).

    Deterministic: the same config, including ``now``, gives an identical world. When
    ``config.now`` is ``None`` it is set to the current time and kept in ``world.config``.
    """
    config = config or WorldConfig()
    if config.now is None:
        config = replace(config, now=datetime.now(UTC))
    assert config.now is not None
    boefjes = generator.make_boefjes(config.boefjes, config.seed)
    if config.rate_limits:  # no draw depends on them: the world is otherwise the same
        boefjes = generator.with_rate_limits(boefjes)
    normalizers = generator.make_normalizers(boefjes)
    orgs: list[generator.GeneratedOrg] = []
    pool = generator.shared_domains(config.seed, config.shared_domains)
    for index in range(config.organisations):
        record = generator.make_organisation(index)
        held = generator.held_shared_domains(config.seed, index, pool)
        oois = generator.generate_oois(config.seed, index, config.oois_per_org, held)
        enabled, settings = generator.generate_plugin_state(
            config.seed,
            index,
            boefjes,
            normalizers,
            config.boefje_enabled_fraction,
            config.normalizer_enabled_fraction,
        )
        runs = generator.generate_history(
            config.seed, index, record.id, oois, boefjes, config.history_fraction, config.now
        )
        if config.deschedule_boefje:  # after every draw: the other boefjes' world is the same without it
            enabled.update({DESCHEDULE_BOEFJE.id: True, DESCHEDULE_NORMALIZER.id: True})
            settings[DESCHEDULE_BOEFJE.id] = {}
        orgs.append(generator.GeneratedOrg(record, oois, enabled, settings, runs))
    if config.deschedule_boefje:
        boefjes, normalizers = [*boefjes, DESCHEDULE_BOEFJE], [*normalizers, DESCHEDULE_NORMALIZER]
    return World(config, boefjes, normalizers, orgs, clock=clock)
