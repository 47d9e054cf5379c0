"""``POST /tasks`` with mula's filter language, over real HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, func, select

from kat_scheduler.models.tasks import SchedulerId
from kat_scheduler.storage.tables import TaskRow
from kat_scheduler.storage.tasks import TaskStore
from tests.api_server import ApiServer
from tests.factories import NewTaskFactory


@pytest.fixture
def store(engine: Engine) -> TaskStore:
    return TaskStore(engine)


def boefje_task(
    store: TaskStore, *, org: str = "aa", boefje: str = "dns-records", image: str | None = None, **extra: object
) -> str:
    task = NewTaskFactory.build(organisation=org, plugin_id=boefje)
    data = {**task.data, "boefje": {"id": boefje, "oci_image": image}, **extra}
    store.claim([NewTaskFactory.build(id=task.id, organisation=org, plugin_id=boefje, hash=task.hash, data=data)])
    return str(task.id)


def found(api: ApiServer, body: object, **params: object) -> set[str]:
    response = api.post("/tasks", json=body, params={"limit": 500, **params})
    assert response.status_code == 200, response.text
    return {t["id"] for t in response.json()["results"]}


def test_a_workers_image_and_plugin_filters_find_only_their_tasks(api, store):
    # boefjes/boefjes/clients/scheduler_client.py, pop_items:
    #   {"column": "data", "field": "boefje__oci_image", "operator": "in", "value": self.oci_images}
    #   {"column": "data", "field": "boefje__id", "operator": "in", "value": self.plugins}
    nmap = boefje_task(store, boefje="nmap", image="ghcr.io/minvws/openkat/nmap:latest")
    boefje_task(store, boefje="dns-records", image="ghcr.io/minvws/openkat/dns:latest")
    boefje_task(store, boefje="nmap-udp", image="ghcr.io/minvws/openkat/nmap:latest")
    body = {
        "filters": [
            {
                "column": "data",
                "field": "boefje__oci_image",
                "operator": "in",
                "value": ["ghcr.io/minvws/openkat/nmap:latest"],
            },
            {"column": "data", "field": "boefje__id", "operator": "in", "value": ["nmap"]},
        ]
    }

    assert found(api, body) == {nmap}


def test_rockys_organisation_filter_with_a_count_only_listing(api, store):
    # rocky/rocky/views/tasks.py, get_organization_filter:
    #   {"filters": [{"column": "organisation", "operator": "in", "value": self.get_user_organizations()}]}
    for org in ("aa", "aa", "bb", "cc"):
        boefje_task(store, org=org)
    body = {"filters": [{"column": "organisation", "operator": "in", "value": ["aa", "bb"]}]}

    response = api.post("/tasks", json=body, params={"limit": 0})

    assert response.json() == {"count": 3, "next": None, "previous": None, "results": []}


def test_groups_and_or_and_not_combine(api, store):
    a1 = boefje_task(store, org="aa", boefje="nmap")
    a2 = boefje_task(store, org="aa", boefje="dns-records")
    b1 = boefje_task(store, org="bb", boefje="nmap")
    boefje_task(store, org="cc", boefje="nmap")
    org = {"column": "organisation", "operator": "=="}

    either = {"filters": {"or": [{**org, "value": "aa"}, {**org, "value": "bb"}]}}
    neither = {"filters": {"not": [{**org, "value": "aa"}, {**org, "value": "cc"}]}}
    both = {
        "filters": {
            "and": [{"column": "data", "field": "boefje__id", "operator": "eq", "value": "nmap"}],
            "or": [{**org, "value": "aa"}, {**org, "value": "bb"}],
        }
    }

    assert found(api, either) == {a1, a2, b1}
    assert found(api, neither) == {b1}
    assert found(api, both) == {a1, b1}


def test_text_operators_on_columns_and_json_paths(api, store):
    mispo = boefje_task(store, org="acme-1", input_ooi="Hostname|internet|mispo.es")
    other = boefje_task(store, org="ACME-2", input_ooi="Hostname|internet|example.nl")
    ooi = {"column": "data", "field": "input_ooi"}

    assert found(api, {"filters": [{"column": "organisation", "operator": "like", "value": "acme%"}]}) == {mispo}
    assert found(api, {"filters": [{"column": "organisation", "operator": "ilike", "value": "acme%"}]}) == {
        mispo,
        other,
    }
    assert found(api, {"filters": [{**ooi, "operator": "contains", "value": "mispo"}]}) == {mispo}
    assert found(api, {"filters": [{**ooi, "operator": "starts_with", "value": "Hostname|internet|ex"}]}) == {other}
    assert found(api, {"filters": [{**ooi, "operator": "not_like", "value": "%mispo%"}]}) == {other}
    assert found(api, {"filters": [{**ooi, "operator": "!=", "value": "Hostname|internet|mispo.es"}]}) == {other}
    assert found(api, {"filters": [{"column": "organisation", "operator": "contains", "value": "%"}]}) == set()


def test_numbers_booleans_nulls_and_arrays_inside_data(api, store):
    low = boefje_task(store, scan_level=1, enabled=True, tags=["web", "dns"], deduplication_key=None)
    high = boefje_task(store, scan_level=3, enabled=False, tags=["ports"], deduplication_key="k")
    level = {"column": "data", "field": "scan_level"}

    assert found(api, {"filters": [{**level, "operator": ">", "value": 2}]}) == {high}
    assert found(api, {"filters": [{**level, "operator": "lte", "value": 1}]}) == {low}
    assert found(api, {"filters": [{"column": "data", "field": "enabled", "operator": "is", "value": True}]}) == {low}
    assert found(
        api, {"filters": [{"column": "data", "field": "deduplication_key", "operator": "is_null", "value": None}]}
    ) == {low}
    assert found(api, {"filters": [{"column": "data", "field": "tags", "operator": "any", "value": ["dns", "x"]}]}) == {
        low
    }
    assert found(api, {"filters": [{"column": "data", "field": "tags__0", "operator": "==", "value": "ports"}]}) == {
        high
    }
    assert found(api, {"filters": [{"column": "schedule_id", "operator": "is_null"}]}) == {low, high}
    assert found(api, {"filters": [{"column": "status", "operator": "==", "value": "queued"}]}) == {low, high}


def test_json_containment_works_on_postgresql_and_is_refused_on_sqlite(api, store, engine):
    nmap = boefje_task(store, boefje="nmap")
    boefje_task(store, boefje="dns-records")
    body = {"filters": [{"column": "data", "operator": "@>", "value": {"boefje": {"id": "nmap"}}}]}

    response = api.post("/tasks", json={"filters": [{**body["filters"][0], "value": "x"}]})
    contained = api.post("/tasks", json=body)

    if engine.dialect.name == "postgresql":
        assert response.status_code == 200
        assert contained.status_code == 422  # a JSON object is no filter value: only scalars and lists
        in_list = {"filters": [{"column": "data", "field": "boefje__id", "operator": "<@", "value": ["nmap", "a"]}]}
        assert found(api, in_list) == {nmap}
    else:
        assert response.status_code == 400
        assert response.json() == {"detail": "operator '@>' needs PostgreSQL; this scheduler's database is sqlite"}


def test_a_null_body_lists_everything(api, store):
    ids = {boefje_task(store) for _ in range(3)}

    response = api.post("/tasks", data=b"null", headers={"Content-Type": "application/json"})

    assert response.status_code == 200
    assert {t["id"] for t in response.json()["results"]} == ids


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        (
            {"filters": [{"column": "secret", "operator": "==", "value": "x"}]},
            400,
            "unknown filter column 'secret'",
        ),
        (
            {"filters": [{"column": "organisation", "operator": "in", "value": "aa"}]},
            400,
            "operator 'in' on organisation needs a list value, not 'aa'",
        ),
        (
            {"filters": [{"column": "status", "operator": "==", "value": "exploded"}]},
            400,
            "value 'exploded' does not fit column 'status'",
        ),
        (
            {"filters": [{"column": "id", "operator": "==", "value": "not-a-uuid"}]},
            400,
            "value 'not-a-uuid' does not fit column 'id'",
        ),
        (
            {"filters": [{"column": "priority", "operator": "like", "value": "1%"}]},
            400,
            "value '1%' does not fit column 'priority'",
        ),
        (
            {"filters": [{"column": "organisation", "field": "x", "operator": "==", "value": "aa"}]},
            400,
            "only data has fields",
        ),
        (
            {"filters": [{"column": "data", "operator": "==", "value": "aa"}]},
            400,
            "needs a field",
        ),
        ({"filters": [{"column": "organisation", "operator": "~", "value": "aa"}]}, 422, "operator"),
        ({"filters": [{"column": "organisation", "operator": "==", "value": "a", "extra": 1}]}, 422, "extra"),
        ({"filters": {"xor": []}}, 422, "xor"),
        ({"where": []}, 422, "where"),
    ],
)
def test_a_malformed_filter_names_the_problem_and_changes_nothing(api, store, engine, body, status, detail):
    boefje_task(store)
    before = tasks_state(engine)

    response = api.post("/tasks", json=body)

    assert response.status_code == status, response.text
    assert detail in str(response.json()["detail"])
    assert tasks_state(engine) == before


def test_a_body_that_is_not_json_is_422(api):
    response = api.post("/tasks", data=b"{filters: nope", headers={"Content-Type": "application/json"})

    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"


def tasks_state(engine: Engine) -> tuple[object, ...]:
    with engine.connect() as conn:
        return tuple(conn.execute(select(func.count(), func.max(TaskRow.modified_at))).one())


def report_task(store: TaskStore, recipe: str, **extra: object) -> str:
    task = NewTaskFactory.build(
        scheduler_id=SchedulerId.REPORT, type="report", data={"report_recipe_id": recipe, **extra}
    )
    store.claim([task])
    return str(task.id)


#: JSON paths PostgreSQL refuses, each with what the answer must say about it.
BAD_JSON_PATHS = [
    pytest.param("@?", "$..a", 'syntax error at or near "."', id="a syntax error"),
    pytest.param("@@", "$.boefje ?", "syntax error at end of jsonpath input", id="an unfinished filter"),
    pytest.param("@?", "", "invalid input syntax for type jsonpath", id="an empty path"),
    pytest.param("@?", '$.boefje.id ? (@ like_regex "[")', "invalid regular expression", id="a broken regex"),
    pytest.param("@?", "$ ? (@.boefje.id == $wanted)", "variable $wanted", id="a variable"),
    pytest.param("@@", '$.created.datetime("x") < "2020"', 'datetime template "x"', id="a datetime template"),
]
SEARCHES = [
    pytest.param("/tasks", id="tasks"),
    pytest.param("/schedulers/boefje/pop", id="pop"),
    pytest.param("/schedulers/report/pop", id="pull pop"),
    pytest.param("/schedules/search", id="schedules"),
]


@pytest.mark.parametrize("path", SEARCHES)
@pytest.mark.parametrize(("operator", "json_path", "detail"), BAD_JSON_PATHS)
def test_a_json_path_postgresql_refuses_is_a_400_naming_it_and_changes_nothing(
    api, store, engine, path, operator, json_path, detail, caplog
):
    boefje_task(store, created="2020-01-01T00:00:00+00:00")
    report_task(store, "recipe-1", created="2020-01-01T00:00:00+00:00")
    before = tasks_state(engine)

    response = api.post(path, json={"filters": [{"column": "data", "operator": operator, "value": json_path}]})

    assert response.status_code == 400, response.text
    if engine.dialect.name == "postgresql":
        assert response.json()["detail"].startswith(f"JSON path {json_path!r} of operator {operator!r}: ")
        assert detail in response.json()["detail"]
    else:
        assert response.json() == {
            "detail": f"operator {operator!r} needs PostgreSQL; this scheduler's database is sqlite"
        }
    assert tasks_state(engine) == before
    assert "Traceback" not in caplog.text


def test_json_path_operators_find_and_pop_tasks_on_postgresql(api, store, engine):
    nmap = boefje_task(store, boefje="nmap")
    boefje_task(store, boefje="dns-records")
    wanted = report_task(store, "recipe-1")
    report_task(store, "recipe-2")
    exists = {"column": "data", "operator": "@?", "value": '$.boefje ? (@.id == "nmap" && @.id starts with "nm")'}
    matches = {"column": "data", "operator": "@@", "value": '$.boefje.id like_regex "^NM" flag "i"'}
    recipe = {"column": "data", "operator": "@?", "value": '$.report_recipe_id ? (@ == "recipe-1")'}

    searched = api.post("/tasks", json={"filters": [exists, matches]})
    popped = api.post("/schedulers/report/pop", json={"filters": [recipe]}, params={"limit": 5})

    if engine.dialect.name == "postgresql":
        assert searched.status_code == 200, searched.text
        assert {t["id"] for t in searched.json()["results"]} == {nmap}
        assert [t["id"] for t in popped.json()["results"]] == [wanted]
    else:
        assert (searched.status_code, popped.status_code) == (400, 400)
