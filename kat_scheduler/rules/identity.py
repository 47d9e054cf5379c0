"""Task identity hashes, byte-for-byte those of KAT's scheduler (mula).

MurmurHash3 x64 128-bit, seed 0, of the UTF-8 string, as a 32-character hex digest.
"""

from __future__ import annotations

import mmh3


def _digest(value: str) -> str:
    return mmh3.hash_bytes(value.encode("utf-8")).hex()


def boefje_task_hash(boefje_id: str, organisation: str, input_ooi: str | None) -> str:
    if input_ooi:
        return _digest(f"{input_ooi}-{boefje_id}-{organisation}")
    return _digest(f"{boefje_id}-{organisation}")


def normalizer_task_hash(normalizer_id: str, boefje_meta_id: str, organisation: str) -> str:
    return _digest(f"{normalizer_id}-{boefje_meta_id}-{organisation}")


def report_task_hash(report_recipe_id: str, organisation: str) -> str:
    return _digest(f"{report_recipe_id}-{organisation}")
