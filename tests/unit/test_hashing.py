import mmh3
import pytest

from kat_scheduler.models import BoefjeTask, NormalizerTask
from kat_scheduler.rules.identity import boefje_task_hash, normalizer_task_hash, report_task_hash
from tests.factories import BoefjeMetaFactory


def reference(value: str) -> str:
    return mmh3.hash_bytes(value.encode()).hex()


def test_a_boefje_task_on_an_object_hashes_like_mula() -> None:
    # Known digest of "Hostname|internet|mispo.es-dns-records-aa" (mmh3 x64-128, seed 0).
    assert boefje_task_hash("dns-records", "aa", "Hostname|internet|mispo.es") == "8d3acc45af4cef92c71dd256f841dd59"


@pytest.mark.parametrize(
    ("args", "hashed"),
    [
        (("dns-records", "aa", "Hostname|internet|mispo.es"), "Hostname|internet|mispo.es-dns-records-aa"),
        (("nmap", "org-b", "IPAddressV4|internet|192.0.2.1"), "IPAddressV4|internet|192.0.2.1-nmap-org-b"),
        (("manual-only", "aa", None), "manual-only-aa"),
        (("manual-only", "aa", ""), "manual-only-aa"),
    ],
)
def test_boefje_task_hashes_hash_the_documented_string(args, hashed) -> None:
    assert boefje_task_hash(*args) == reference(hashed)


def test_normalizer_and_report_hashes_hash_the_documented_string() -> None:
    meta_id = "0e191e18-bc77-405f-8887-80f510304021"
    assert normalizer_task_hash("kat_dns_normalize", meta_id, "aa") == reference(f"kat_dns_normalize-{meta_id}-aa")
    assert report_task_hash("recipe-1", "aa") == reference("recipe-1-aa")


def test_hashes_are_32_hex_characters_even_for_non_ascii_references() -> None:
    digest = boefje_task_hash("dns-records", "aa", "Hostname|internet|bücher.example")
    assert len(digest) == 32
    assert digest == reference("Hostname|internet|bücher.example-dns-records-aa")


def test_task_payloads_know_their_own_hash() -> None:
    task = BoefjeTask(boefje={"id": "dns-records"}, input_ooi="Hostname|internet|mispo.es", organization="aa")
    assert task.hash == "8d3acc45af4cef92c71dd256f841dd59"
    meta = BoefjeMetaFactory(organization="aa")
    raw = {"id": "7c1f0000-0000-4000-8000-000000000000", "boefje_meta": meta.model_dump(mode="json")}
    normalizer_task = NormalizerTask(normalizer={"id": "kat_dns_normalize"}, raw_data=raw)
    assert normalizer_task.hash == reference(f"kat_dns_normalize-{meta.id}-aa")
