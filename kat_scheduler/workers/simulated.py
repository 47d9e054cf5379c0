"""Simulated runners for the simulated world: deterministic, instant, and they grow the graph.

A boefje's raw output names what it "found" for its input (derived from a hash of the input);
its normalizer turns that into objects: a hostname resolves to addresses and its zone, an
address has open ports, and so on. Saved as an observation, the new objects get inherited scan
profiles in the simulated Octopoes, which emits ``scan_profile_mutations``, which plan new
boefjes: the whole KAT cycle. Derivation is bounded (no endless subdomains).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from kat_scheduler.sim.deschedule import DESCHEDULE_MIME_TYPE, deschedules, reason
from kat_scheduler.workers.runners import RawOutput, UnknownPlugin


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


def _ipv4(seed: str) -> str:
    d = _digest(seed)
    return f"198.18.{d[0]}.{d[1] or 1}"


def _ipv6(seed: str) -> str:
    d = _digest(seed)
    return f"2001:db8::{d[0]:x}{d[1]:02x}"


FINDING_BOEFJES = ("ssl-certificates", "dns-sec", "nuclei-cve", "ssl-version", "rpki", "service-banner")


def _derive(boefje_id: str, ooi: dict[str, Any]) -> list[dict[str, Any]]:
    """What ``boefje_id`` 'finds' on ``ooi``."""
    object_type = ooi.get("object_type", "")
    pk = ooi.get("primary_key", "")
    value = pk.split("|")[-1]
    found: list[dict[str, Any]] = []
    if object_type == "Hostname" and boefje_id in ("dns-records", "fierce"):
        for address in (_ipv4(pk),):
            found.append(
                {
                    "object_type": "IPAddressV4",
                    "primary_key": f"IPAddressV4|internet|{address}",
                    "address": address,
                    "network": "Network|internet",
                }
            )
        if boefje_id == "dns-records":
            address6 = _ipv6(pk)
            found.append(
                {
                    "object_type": "IPAddressV6",
                    "primary_key": f"IPAddressV6|internet|{address6}",
                    "address": address6,
                    "network": "Network|internet",
                }
            )
            labels = value.split(".")
            if len(labels) > 2:
                zone = ".".join(labels[-2:])
                found.append({"object_type": "DNSZone", "primary_key": f"DNSZone|internet|{zone}", "name": zone})
    elif object_type == "Hostname" and boefje_id == "crt-sh" and value.count(".") < 3:
        sub = f"www.{value}" if not value.startswith("www.") else f"mail.{value[4:]}"
        found.append(
            {
                "object_type": "Hostname",
                "primary_key": f"Hostname|internet|{sub}",
                "name": sub,
                "network": "Network|internet",
            }
        )
    elif object_type in ("IPAddressV4", "IPAddressV6") and boefje_id in ("nmap", "shodan", "nmap-udp"):
        protocol = "udp" if boefje_id == "nmap-udp" else "tcp"
        for port in (443,) if _digest(pk)[0] % 2 else (80, 443):
            found.append(
                {
                    "object_type": "IPPort",
                    "primary_key": f"IPPort|internet|{value}|{protocol}|{port}",
                    "address": pk,
                    "protocol": protocol,
                    "port": port,
                    "state": "open",
                }
            )
    elif boefje_id in FINDING_BOEFJES and _digest(boefje_id + pk)[0] % 4 == 0:
        found.append(
            {
                "object_type": "Finding",
                "primary_key": f"Finding|{boefje_id}|{pk}",
                "ooi": pk,
                "finding_type": f"KAT-SIM-{boefje_id.upper()}",
            }
        )
    return found


class SimulatedRunner:
    """Runs any boefje or normalizer of the simulated catalogue (and fails others clearly)."""

    def run_boefje(self, boefje_id: str, boefje_meta: dict[str, Any], environment: dict[str, str]) -> RawOutput:
        ooi = (boefje_meta.get("arguments") or {}).get("input") or {}
        if not boefje_id:
            raise UnknownPlugin("no boefje id")
        primary_key = ooi.get("primary_key")
        if primary_key and deschedules(boefje_id, primary_key):  # as KAT's boefjes say "not me, not again"
            said = {"boefje": boefje_id, "input": primary_key, "found": [], "deschedule": reason(primary_key)}
            return [({DESCHEDULE_MIME_TYPE, "application/json"}, json.dumps(said).encode())]
        body = {"boefje": boefje_id, "input": primary_key, "found": _derive(boefje_id, ooi)}
        return [({f"boefje/{boefje_id}", "application/json"}, json.dumps(body).encode())]

    def run_normalizer(self, normalizer_id: str, input_ooi: dict[str, Any], raw: bytes) -> list[dict[str, Any]]:
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise ValueError(f"{normalizer_id}: raw data is not the simulated boefjes' JSON ({exc})") from exc
        found = body.get("found", [])
        if not isinstance(found, list):
            raise ValueError(f"{normalizer_id}: 'found' is not a list")
        return [item for item in found if isinstance(item, dict)]
