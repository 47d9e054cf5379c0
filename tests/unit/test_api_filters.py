"""The filter language, compiled without a database: what each backend is asked, and what is refused."""

from __future__ import annotations

import re

import pytest
from sqlalchemy.dialects import postgresql, sqlite

from kat_scheduler.storage.filters import (
    POSTGRESQL_ONLY,
    Filter,
    FilterError,
    FilterRequest,
    Operator,
    conditions,
    split_images,
)

DIALECTS = {"postgresql": postgresql.dialect(), "sqlite": sqlite.dialect()}


def sql(body: dict[str, object], dialect: str) -> str:
    [condition] = conditions(FilterRequest.model_validate(body), dialect)
    return str(condition.compile(dialect=DIALECTS[dialect], compile_kwargs={"literal_binds": True}))


def one(column: str, operator: str, value: object, field: str | None = None) -> dict[str, object]:
    item: dict[str, object] = {"column": column, "operator": operator, "value": value}
    if field is not None:
        item["field"] = field
    return {"filters": [item]}


@pytest.mark.parametrize(
    ("pattern", "glob"),
    [
        ("acme%", "acme*"),
        ("a_c", "a?c"),
        ("100*%", "100[*]*"),
        ("what?", "what[?]"),
        ("[x]%", "[[]x]*"),
        ("100\\%%", "100%*"),
        ("a\\_\\\\b", "a_\\b"),
        ("\\*", "[*]"),
    ],
)
def test_a_like_pattern_becomes_the_same_case_sensitive_glob_on_sqlite(pattern, glob):
    assert sql(one("organisation", "like", pattern), "sqlite") == f"tasks.organisation GLOB '{glob}'"


def test_a_json_path_is_read_as_text_only_where_it_holds_a_string_on_both_backends():
    body = one("data", "==", "nmap", field="boefje__id")

    assert sql(body, "postgresql") == (
        "CASE WHEN (jsonb_typeof(tasks.data #> ARRAY['boefje', 'id']) IN ('string'))"
        " THEN tasks.data #>> ARRAY['boefje', 'id'] END = 'nmap'"
    )
    assert sql(body, "sqlite") == (
        "CASE WHEN (json_type(tasks.data, '$.\"boefje\".\"id\"') IN ('text'))"
        " THEN json_extract(tasks.data, '$.\"boefje\".\"id\"') END = 'nmap'"
    )


def test_a_json_value_is_cast_to_the_type_of_the_filter_value_only_when_it_is_of_that_type():
    number = sql(one("data", ">", 2, field="boefje__scan_level"), "postgresql")
    boolean = sql(one("data", "is", True, field="enabled"), "postgresql")

    assert "WHEN (jsonb_typeof(tasks.data #> ARRAY['boefje', 'scan_level']) IN ('number'))" in number
    assert "THEN CAST(tasks.data #>> ARRAY['boefje', 'scan_level'] AS NUMERIC) END > 2" in number
    assert "WHEN (jsonb_typeof(tasks.data #> ARRAY['enabled']) IN ('boolean'))" in boolean
    assert "THEN CAST(tasks.data #>> ARRAY['enabled'] AS BOOLEAN) END IS true" in boolean


@pytest.mark.parametrize("operator", sorted(op.value for op in POSTGRESQL_ONLY))
def test_postgresqls_own_operators_are_refused_on_sqlite_by_name(operator):
    with pytest.raises(FilterError, match=re.escape(f"operator '{operator}' needs PostgreSQL")):
        conditions(FilterRequest.model_validate(one("data", operator, "x")), "sqlite")


def test_every_operator_of_the_contract_is_known():
    contract = [
        *("==", "eq", "!=", "ne", "is", "is_not", "is_null", "is_not_null", ">", "gt", "<", "lt", ">=", "gte"),
        *("<=", "lte", "like", "not_like", "ilike", "not_ilike", "in", "not_in", "contains", "any", "match"),
        *("starts_with", "@>", "<@", "@?", "@@"),
    ]

    assert sorted(op.value for op in Operator) == sorted(contract)


def test_no_filters_mean_no_conditions():
    assert conditions(None, "sqlite") == []
    assert conditions(FilterRequest(filters=[]), "sqlite") == []
    assert Filter(column="organisation", operator=Operator.IS_NULL).value is None


NMAP, DNS = "ghcr.io/minvws/openkat/nmap:latest", "ghcr.io/minvws/openkat/dns:latest"
IMAGES_IN = {"column": "data", "field": "boefje__oci_image", "operator": "in", "value": [NMAP, DNS]}
BOEFJES_IN = {"column": "data", "field": "boefje__id", "operator": "in", "value": ["nmap"]}


def test_the_workers_image_filter_is_taken_out_of_a_request_and_the_rest_kept():
    # boefjes/boefjes/clients/scheduler_client.py, pop_items: images, then plugins.
    images, rest = split_images(FilterRequest.model_validate({"filters": [IMAGES_IN, BOEFJES_IN]}))

    assert images == (NMAP, DNS)
    assert rest == FilterRequest.model_validate({"filters": [BOEFJES_IN]})
    assert split_images(FilterRequest.model_validate({"filters": [IMAGES_IN]})) == ((NMAP, DNS), None)
    assert split_images(FilterRequest.model_validate(one("data", "==", NMAP, "boefje__oci_image"))) == ((NMAP,), None)


@pytest.mark.parametrize(
    "body",
    [
        None,
        {"filters": [BOEFJES_IN]},
        {"filters": {"and": [IMAGES_IN]}},
        {"filters": [IMAGES_IN, IMAGES_IN]},
        one("data", "not_in", [NMAP], "boefje__oci_image"),
        one("data", "in", [], "boefje__oci_image"),
        one("data", "in", [1, 2], "boefje__oci_image"),
        one("data", "in", [f"image-{n}" for n in range(33)], "boefje__oci_image"),
    ],
)
def test_a_request_that_does_not_ask_for_images_the_workers_way_is_left_as_it_is(body):
    request = None if body is None else FilterRequest.model_validate(body)

    assert split_images(request) == ((), request)
