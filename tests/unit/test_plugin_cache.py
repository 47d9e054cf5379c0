"""Katalogus plugin lists cached per organisation; a batch's uncached ones are fetched at once."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from kat_scheduler.clients import OrganisationNotFound
from kat_scheduler.clients.plugin_cache import PluginCache
from tests.factories import BoefjeFactory


class StubKatalogus:
    """Boefje lists per organisation; each fetch waits at ``barrier`` (when given) and is counted."""

    def __init__(self, orgs: list[str], barrier: threading.Barrier | None = None) -> None:
        self.lists = {org: [BoefjeFactory.build(id=f"boefje-{org}")] for org in orgs}
        self.barrier = barrier
        self.fetched: list[str] = []
        self._lock = threading.Lock()

    def boefjes(self, org: str) -> list[Any]:
        if self.barrier is not None:
            self.barrier.wait()
        with self._lock:
            self.fetched.append(org)
        if org not in self.lists:
            raise OrganisationNotFound("katalogus", f"/v1/organisations/{org}/plugins", "not found", status_code=404)
        return self.lists[org]

    def normalizers(self, org: str) -> list[Any]:
        return []


def test_a_batchs_uncached_organisations_are_fetched_at_the_same_time_and_then_served_from_the_cache() -> None:
    orgs = ["a", "b", "c", "d"]
    # Every fetch waits until all four are in flight: fetched one after another, the first would time out.
    katalogus = StubKatalogus(orgs, threading.Barrier(len(orgs), timeout=5))
    cache = PluginCache(katalogus, ttl=60)  # type: ignore[arg-type]

    assert cache.prefetch("boefje", [*orgs, "a"]) == 4
    katalogus.barrier = None
    assert [cache.boefjes(org)[0].id for org in orgs] == ["boefje-a", "boefje-b", "boefje-c", "boefje-d"]
    assert sorted(katalogus.fetched) == orgs  # once each


def test_what_is_cached_and_fresh_is_not_fetched_again_until_it_expires() -> None:
    now = [0.0]
    katalogus = StubKatalogus(["a", "b", "c"])
    cache = PluginCache(katalogus, ttl=30, clock=lambda: now[0])  # type: ignore[arg-type]
    cache.boefjes("a")

    assert cache.prefetch("boefje", ["a", "b", "c"]) == 2
    assert cache.prefetch("boefje", ["a", "b", "c"]) == 0
    now[0] = 31.0
    assert cache.prefetch("boefje", ["a", "b", "c"]) == 3
    assert katalogus.fetched == ["a", "b", "c", "a", "b", "c"]


def test_an_unknown_organisation_fails_on_the_handlers_own_call_not_in_the_prefetch() -> None:
    katalogus = StubKatalogus(["a", "b"])
    cache = PluginCache(katalogus, ttl=60)  # type: ignore[arg-type]

    assert cache.prefetch("boefje", ["a", "b", "gone"]) == 2
    with pytest.raises(OrganisationNotFound):
        cache.boefjes("gone")
    assert cache.boefjes("b")[0].id == "boefje-b"


def test_a_single_missing_list_is_left_to_the_callers_own_call() -> None:
    katalogus = StubKatalogus(["a"])
    cache = PluginCache(katalogus, ttl=60)  # type: ignore[arg-type]
    assert cache.prefetch("boefje", ["a"]) == 0 and katalogus.fetched == []
    with pytest.raises(ValueError, match="unknown plugin kind"):
        cache.prefetch("report", ["a", "b"])
