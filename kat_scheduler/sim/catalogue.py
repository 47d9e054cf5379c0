"""The fixed plugin catalogue and the word lists the world generator draws from.

``WorldConfig(boefjes=N)`` takes the first N boefjes of :data:`BOEFJES`; the first ten
already cover every feature the scheduler must handle (interval, cron, ``run_on``, empty
``consumes``, scan levels 0–4). Beyond the catalogue, extra boefjes are synthesised
deterministically (see :func:`synthetic_boefje`).
"""

from __future__ import annotations

import random

from kat_scheduler.sim.records import BoefjeDef, NormalizerDef

IP_TYPES = ("IPAddressV4", "IPAddressV6")

#: Every OOI type the generator produces, in generation order.
OOI_TYPES: tuple[str, ...] = (
    "Network",
    "DNSZone",
    "Hostname",
    "IPAddressV4",
    "IPAddressV6",
    "IPPort",
    "Website",
    "URL",
)

BOEFJES: tuple[BoefjeDef, ...] = (
    BoefjeDef(
        id="dns-records",
        name="DNS records",
        scan_level=1,
        consumes=("Hostname",),
        oci_arguments=("kat_dns.main",),
        description="Fetch the DNS record(s) of a hostname.",
    ),
    BoefjeDef(
        id="nmap",
        name="Nmap TCP",
        scan_level=2,
        consumes=IP_TYPES,
        oci_image="ghcr.io/minvws/openkat/nmap:latest",
        oci_arguments=("--open", "-T4", "-Pn", "-r", "-v10", "-sV", "-sS"),
        interval=1440,
        description="Defaults to top 250 TCP ports. Includes service detection.",
    ),
    BoefjeDef(
        id="ssl-certificates",
        name="SSLCertificates",
        scan_level=1,
        consumes=("Website",),
        oci_arguments=("kat_ssl_certificates.main",),
        interval=720,
        description="Scan SSL certificates of websites.",
    ),
    BoefjeDef(
        id="webpage-analysis",
        name="WebpageAnalysis",
        scan_level=2,
        consumes=("URL",),
        oci_arguments=("kat_webpage_analysis.main",),
        description="Downloads a resource and uses several different normalizers to analyze it.",
    ),
    BoefjeDef(
        id="dns-zone",
        name="DNS zone",
        scan_level=1,
        consumes=("DNSZone",),
        oci_arguments=("kat_dns_zone.main",),
        cron="0 4 * * *",
        description="Fetch the parent DNS zone of a DNS zone.",
    ),
    BoefjeDef(
        id="shodan",
        name="Shodan",
        scan_level=1,
        consumes=IP_TYPES,
        oci_arguments=("kat_shodan.main",),
        interval=10080,
        description="Use Shodan to find open ports with vulnerabilities that are found on that port.",
    ),
    BoefjeDef(
        id="crt-sh",
        name="CRT",
        scan_level=0,
        consumes=("Hostname",),
        oci_arguments=("kat_crt_sh.main",),
        run_on=("create", "update"),
        description="Searches for certificates and new hostnames in the transparency logs of crt.sh.",
    ),
    BoefjeDef(
        id="masscan",
        name="Masscan",
        scan_level=2,
        consumes=(),
        oci_image="ghcr.io/minvws/openkat/masscan:latest",
        description="Quickly scan large amounts of IPs; only started on request.",
    ),
    BoefjeDef(
        id="fierce",
        name="Fierce",
        scan_level=3,
        consumes=("Hostname",),
        oci_arguments=("kat_fierce.main",),
        cron="30 2 * * 1",
        description="Perform DNS reconnaissance using Fierce to find non-contiguous IP space.",
    ),
    BoefjeDef(
        id="nuclei-cve",
        name="Nuclei CVE scan",
        scan_level=4,
        consumes=("URL", "Website"),
        oci_image="ghcr.io/minvws/openkat/nuclei:latest",
        oci_arguments=("-t", "/root/nuclei-templates/http/cves/"),
        interval=4320,
        description="Nuclei scans hosts for known CVEs.",
    ),
    BoefjeDef(
        id="security_txt_downloader",
        name="Security.txt downloader",
        scan_level=2,
        consumes=("Website",),
        oci_arguments=("kat_security_txt_downloader.main",),
        description="Downloads the security.txt file from the target website.",
    ),
    BoefjeDef(
        id="dns-sec",
        name="DNSSEC",
        scan_level=1,
        consumes=("Hostname",),
        oci_image="ghcr.io/minvws/openkat/dns-sec:latest",
        description="Validates DNSSEC of a hostname.",
    ),
    BoefjeDef(
        id="leakix",
        name="LeakIX",
        scan_level=1,
        consumes=("IPAddressV4", "IPAddressV6", "Hostname"),
        oci_arguments=("kat_leakix.main",),
        description="Use LeakIX to find open ports, software and vulnerabilities.",
    ),
    BoefjeDef(
        id="rpki",
        name="RPKI",
        scan_level=1,
        consumes=IP_TYPES,
        oci_arguments=("kat_rpki.main",),
        interval=1440,
        description="Check whether an IP address is covered by a valid RPKI route origin.",
    ),
    BoefjeDef(
        id="ssl-version",
        name="SSL version",
        scan_level=2,
        consumes=("Website",),
        oci_image="ghcr.io/minvws/openkat/testssl:latest",
        description="Scan the TLS versions a website supports.",
    ),
    BoefjeDef(
        id="nmap-udp",
        name="Nmap UDP",
        scan_level=2,
        consumes=IP_TYPES,
        oci_image="ghcr.io/minvws/openkat/nmap:latest",
        oci_arguments=("--open", "-T4", "-Pn", "-r", "-v10", "-sV", "-sU"),
        interval=2880,
        description="Defaults to top 250 UDP ports.",
    ),
    BoefjeDef(
        id="service-banner",
        name="Service banner",
        scan_level=2,
        consumes=("IPPort",),
        oci_arguments=("kat_service_banner.main",),
        description="Grab the banner of an open port.",
    ),
)

#: Katalogus's rate limits (``rate_limit``, ``rate_limit_group``) of the catalogue boefjes that call an
#: outside service, in a world made with ``WorldConfig(rate_limits=True)``: one counter per service
#: across organisations (shodan, leakix), or per object type (crt-sh).
RATE_LIMITS: dict[str, tuple[str, str | None]] = {
    "shodan": ("1/second", "shodan.io"),
    "crt-sh": ("60/minute", "crt.sh:{object_type}"),
    "leakix": ("10/minute;1000/day", "leakix.net"),
}

#: What each catalogue boefje's normalizer produces.
NORMALIZER_PRODUCES: dict[str, tuple[str, ...]] = {
    "dns-records": ("IPAddressV4", "IPAddressV6", "Hostname", "DNSZone"),
    "nmap": ("IPPort",),
    "ssl-certificates": ("X509Certificate", "Finding"),
    "webpage-analysis": ("URL", "Finding"),
    "dns-zone": ("DNSZone", "Hostname"),
    "shodan": ("IPPort", "Finding"),
    "crt-sh": ("Hostname", "X509Certificate"),
    "masscan": ("IPAddressV4", "IPPort"),
    "fierce": ("Hostname", "IPAddressV4"),
    "nuclei-cve": ("Finding",),
    "security_txt_downloader": ("URL", "Finding"),
    "dns-sec": ("Finding",),
    "leakix": ("IPPort", "Finding", "Hostname"),
    "rpki": ("Finding",),
    "ssl-version": ("Finding",),
    "nmap-udp": ("IPPort",),
    "service-banner": ("Finding",),
}

#: Normalizer ids that differ from the ``kat_<boefje>_normalize`` rule.
_NORMALIZER_IDS: dict[str, str] = {"dns-records": "kat_dns_normalize"}

#: OOI types a synthesised boefje may consume.
_SYNTHETIC_CONSUMES: tuple[tuple[str, ...], ...] = (
    ("Hostname",),
    IP_TYPES,
    ("Website",),
    ("URL",),
    ("IPPort",),
    ("DNSZone",),
    ("Hostname", "URL"),
)


def synthetic_boefje(index: int, rng: random.Random) -> BoefjeDef:
    """An extra boefje beyond the catalogue (``index`` counts from 1 over the whole list)."""
    interval = rng.choice((None, None, 60, 720, 1440))
    return BoefjeDef(
        id=f"sim-boefje-{index:02d}",
        name=f"Simulated boefje {index}",
        scan_level=rng.randint(0, 4),
        consumes=rng.choice(_SYNTHETIC_CONSUMES),
        oci_arguments=(f"kat_sim_{index:02d}.main",),
        interval=interval,
        description=f"A synthesised boefje (number {index}) for larger simulations.",
    )


def normalizer_for(boefje: BoefjeDef) -> NormalizerDef:
    """The one normalizer that reads a boefje's raw files."""
    normalizer_id = _NORMALIZER_IDS.get(boefje.id, f"kat_{boefje.id.replace('-', '_')}_normalize")
    return NormalizerDef(
        id=normalizer_id,
        name=f"{boefje.name} normalizer",
        consumes=(boefje.mime_type,),
        produces=NORMALIZER_PRODUCES.get(boefje.id, ("Finding",)),
        description=f"Parses the raw output of {boefje.id}.",
    )


def boefje_settings(boefje_id: str, rng: random.Random) -> dict[str, str]:
    """The Katalogus settings an organisation keeps for a boefje (most have none)."""
    if boefje_id == "shodan":
        return {"SHODAN_API": f"{rng.getrandbits(128):032x}"}
    if boefje_id == "leakix":
        return {"LEAKIX_API": f"{rng.getrandbits(160):040x}"}
    if boefje_id in ("nmap", "nmap-udp"):
        return {"TOP_PORTS": rng.choice(("100", "250", "1000"))}
    if boefje_id == "dns-records":
        return {"RECORD_TYPES": "A,AAAA,CAA,CERT,RP,SRV,TXT,MX,NS,CNAME,DNAME"}
    if boefje_id in ("webpage-analysis", "security_txt_downloader"):
        return {"USERAGENT": "Mozilla/5.0 (compatible; OpenKAT)"}
    return {}


ORGANISATION_NAMES: tuple[str, ...] = (
    "Gemeente Noordhaven",
    "Waterschap Rijnland-Oost",
    "Stichting Zorgnet",
    "Provincie Zeewolde",
    "Ministerie van Digitale Zaken",
    "Hogeschool Amstelland",
    "Veiligheidsregio Twente-Noord",
    "Omgevingsdienst Delta",
    "Stichting Open Archief",
    "Gemeente Bergvliet",
    "Academisch Ziekenhuis Lindeoord",
    "Rijksdienst voor Registers",
)

DOMAIN_WORDS: tuple[str, ...] = (
    "noordhaven",
    "rijnland",
    "zorgnet",
    "zeewolde",
    "digitaal",
    "amstelland",
    "veilig",
    "delta",
    "archief",
    "bergvliet",
    "lindeoord",
    "registers",
    "polder",
    "duinen",
    "haven",
    "brug",
    "molen",
    "dijk",
    "sluis",
    "kanaal",
)

DOMAIN_SUFFIXES: tuple[str, ...] = ("", "-online", "-portaal", "-data", "-net", "-info")
TLDS: tuple[str, ...] = ("nl", "nl", "nl", "com", "eu", "org")
SUBDOMAINS: tuple[str, ...] = (
    "www",
    "mail",
    "api",
    "portal",
    "vpn",
    "intranet",
    "webmail",
    "mx1",
    "ns1",
    "test",
    "acc",
    "cdn",
    "status",
    "login",
)

#: (protocol, port) pairs an IP address may have open, with weights.
PORTS: tuple[tuple[str, int], ...] = (
    ("tcp", 443),
    ("tcp", 80),
    ("tcp", 22),
    ("tcp", 25),
    ("tcp", 3389),
    ("tcp", 8080),
    ("udp", 53),
)
PORT_WEIGHTS: tuple[int, ...] = (10, 8, 4, 2, 1, 2, 1)
