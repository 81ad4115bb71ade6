"""GET /api/v1/states/{entity}: filters, every sort order, and cursor paging."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest

STATES = "/api/v1/states"
SORTS = ["updatedAt", "createdAt", "entityId", "status", "version"]
SORT_SPECS = [spec for name in SORTS for spec in (name, f"-{name}")]

State = dict[str, Any]


async def record(client: httpx.AsyncClient, entity_id: str, status: str, **extra: object) -> State:
    response = await client.post(
        f"{STATES}/task", json={"entityId": entity_id, "status": status, **extra}
    )
    assert response.status_code in (200, 201), response.text
    body: State = response.json()
    return body


async def query(client: httpx.AsyncClient, params: object, entity: str = "task") -> list[State]:
    response = await client.get(f"{STATES}/{entity}", params=params)  # type: ignore[arg-type]
    assert response.status_code == 200, response.text
    page = response.json()
    assert page["nextCursor"] is None
    items: list[State] = page["items"]
    return items


async def page_through(
    client: httpx.AsyncClient, sort: str, limit: int, between_pages: list[str] | None = None
) -> list[State]:
    """Every item of every page; `between_pages` ids are created after each page."""
    seen: list[State] = []
    cursor: str | None = None
    pending = list(between_pages or [])
    while True:
        params: dict[str, str | int] = {"sort": sort, "limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        response = await client.get(f"{STATES}/task", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= limit
        seen.extend(page["items"])
        cursor = page["nextCursor"]
        if cursor is None:
            return seen
        if pending:
            await record(client, pending.pop(0), "created")


def sort_key(sort: str) -> Any:
    field = sort.removeprefix("-")
    if field == "updatedAt":
        return lambda state: state["revision"]
    return lambda state: (state[field], state["entityId"])


def ids(states: list[State]) -> list[str]:
    return [state["entityId"] for state in states]


@pytest.fixture
async def tasks(client: httpx.AsyncClient) -> list[State]:
    """A mixed set of tasks: several statuses and versions, metadata of every
    JSON type, and a batch whose rows share one timestamp (ties)."""
    await record(client, "t-05", "created", metadata={"priority": "high", "retries": 3})
    await record(client, "t-02", "in_progress", metadata={"priority": "low", "urgent": True})
    await record(client, "t-09", "created", metadata={"priority": "high", "retries": "3"})
    await record(client, "t-01", "created", metadata={"retries": 3.5, "urgent": False})
    await record(client, "t-02", "completed")
    await record(client, "t-07", "in_progress", metadata={"priority": "high", "urgent": True})
    await record(client, "t-05", "failed")
    await record(client, "t-05", "in_progress")
    batch = await client.post(
        f"{STATES}/task/batch",
        json={
            "items": [
                {"entityId": f"b-{n:02d}", "status": "created", "metadata": {"n": n}}
                for n in (4, 1, 3, 2)
            ]
        },
    )
    assert batch.status_code == 200, batch.text
    await record(client, "t-09", "failed", metadata={"priority": "high", "retries": 0})
    await record(client, "other", "created", metadata={"priority": "high"})
    await client.post(f"{STATES}/parcel", json={"entityId": "t-05", "status": "created"})
    return await query(client, {"limit": 500})


async def test_default_query_returns_every_state_of_the_type_newest_first(
    client: httpx.AsyncClient, tasks: list[State]
) -> None:
    assert len(tasks) == 10
    assert {s["entity"] for s in tasks} == {"task"}
    assert ids(tasks)[:2] == ["other", "t-09"]
    assert [s["revision"] for s in tasks] == sorted((s["revision"] for s in tasks), reverse=True)


async def test_unknown_type_returns_an_empty_page(client: httpx.AsyncClient) -> None:
    assert await query(client, {}, entity="nothing") == []


async def test_status_filter_is_repeatable(client: httpx.AsyncClient, tasks: list[State]) -> None:
    in_progress = await query(client, {"status": "in_progress", "sort": "entityId"})
    assert ids(in_progress) == ["t-05", "t-07"]
    several = await query(
        client, [("status", "completed"), ("status", "failed"), ("sort", "entityId")]
    )
    assert ids(several) == ["t-02", "t-09"]
    assert await query(client, {"status": "paused"}) == []


METADATA_CASES: list[tuple[dict[str, str], list[str]]] = [
    ({"metadata.priority": "high"}, ["other", "t-05", "t-07", "t-09"]),
    ({"metadata.priority": "low"}, ["t-02"]),
    ({"metadata.priority": "High"}, []),
    ({"metadata.retries": "3"}, ["t-05"]),
    ({"metadata.retries": "0"}, ["t-09"]),
    ({"metadata.retries": "3.5"}, ["t-01"]),
    ({"metadata.urgent": "true"}, ["t-02", "t-07"]),
    ({"metadata.urgent": "false"}, ["t-01"]),
    ({"metadata.n": "2"}, ["b-02"]),
    ({"metadata.missing": "x"}, []),
    ({"metadata.priority": "high", "status": "in_progress"}, ["t-05", "t-07"]),
    ({"metadata.priority": "high", "metadata.retries": "0"}, ["t-09"]),
]


async def test_metadata_equality_filters(client: httpx.AsyncClient, tasks: list[State]) -> None:
    for params, expected in METADATA_CASES:
        found = await query(client, {**params, "sort": "entityId"})
        assert ids(found) == expected, params


async def test_metadata_string_that_looks_like_a_number_matches(
    client: httpx.AsyncClient, tasks: list[State]
) -> None:
    await record(client, "t-09", "in_progress", metadata={"retries": "3"})
    found = await query(client, {"metadata.retries": "3", "sort": "entityId"})
    assert ids(found) == ["t-05", "t-09"]


async def test_updated_after_and_before_bound_the_update_time(
    client: httpx.AsyncClient, tasks: list[State]
) -> None:
    by_time = sorted(tasks, key=lambda s: s["updatedAt"])
    pivot = by_time[len(by_time) // 2]["updatedAt"]
    earliest, latest = by_time[0]["updatedAt"], by_time[-1]["updatedAt"]

    after = await query(client, {"updatedAfter": pivot, "sort": "entityId"})
    assert ids(after) == sorted(s["entityId"] for s in tasks if s["updatedAt"] > pivot)
    before = await query(client, {"updatedBefore": pivot, "sort": "entityId"})
    assert ids(before) == sorted(s["entityId"] for s in tasks if s["updatedAt"] < pivot)
    assert len(after) + len(before) + sum(s["updatedAt"] == pivot for s in tasks) == len(tasks)

    between = await query(
        client, {"updatedAfter": earliest, "updatedBefore": latest, "sort": "entityId"}
    )
    assert ids(between) == sorted(
        s["entityId"] for s in tasks if earliest < s["updatedAt"] < latest
    )
    everything = await query(client, {"updatedAfter": "2000-01-01T00:00:00+02:00"})
    assert len(everything) == len(tasks)
    assert await query(client, {"updatedBefore": "2000-01-01T00:00:00Z"}) == []


async def test_every_sort_order(client: httpx.AsyncClient, tasks: list[State]) -> None:
    for sort in SORT_SPECS:
        found = await query(client, {"sort": sort, "limit": 500})
        expected = sorted(tasks, key=sort_key(sort), reverse=sort.startswith("-"))
        assert ids(found) == ids(expected), sort
        if sort.removeprefix("-") == "updatedAt":
            times = [s["updatedAt"] for s in found]
            assert times == sorted(times, reverse=sort.startswith("-")), sort


async def test_cursor_paging_returns_every_row_exactly_once(
    client: httpx.AsyncClient, tasks: list[State]
) -> None:
    for sort in SORT_SPECS:
        paged = await page_through(client, sort, limit=3)
        unpaged = await query(client, {"sort": sort, "limit": 500})
        assert ids(paged) == ids(unpaged), sort
        assert len(set(ids(paged))) == len(tasks), sort


@pytest.mark.parametrize("sort", ["-updatedAt", "updatedAt", "entityId", "createdAt"])
async def test_paging_while_rows_are_inserted_skips_and_repeats_nothing(
    client: httpx.AsyncClient, tasks: list[State], sort: str
) -> None:
    inserted = [f"{prefix}-new-{n}" for n in range(6) for prefix in ("a", "z")]
    paged = await page_through(client, sort, limit=2, between_pages=inserted)
    seen = ids(paged)
    assert len(seen) == len(set(seen)), "a row was returned twice"
    assert set(ids(tasks)) <= set(seen), "a row that existed at the start was skipped"
    assert set(seen) <= set(ids(tasks)) | set(inserted)
    order = sorted(paged, key=sort_key(sort), reverse=sort.startswith("-"))
    assert seen == ids(order)


def _cursor(*parts: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(parts)).encode()).decode().rstrip("=")


async def test_cursor_from_another_sort_is_422(
    client: httpx.AsyncClient, tasks: list[State]
) -> None:
    first = await client.get(f"{STATES}/task", params={"sort": "entityId", "limit": 2})
    cursor = first.json()["nextCursor"]
    assert cursor
    for sort in ("-entityId", "createdAt", "-updatedAt"):
        response = await client.get(f"{STATES}/task", params={"sort": sort, "cursor": cursor})
        assert response.status_code == 422, response.text
        assert response.json()["code"] == "invalid_query"


INVALID_CURSORS = [
    ("-updatedAt", "garbage"),
    ("-updatedAt", "!!!!"),
    ("-updatedAt", _cursor("-updatedAt", "not a revision", "t-01")),
    ("-updatedAt", _cursor("-updatedAt", 2**63, "t-01")),
    ("-updatedAt", _cursor("-updatedAt", True, "t-01")),
    ("version", _cursor("version", 2**40, "t-01")),
    ("-updatedAt", _cursor("-updatedAt", 5)),
    ("entityId", _cursor("entityId", 5, "t-01")),
    ("entityId", _cursor("entityId", "t-01", 7)),
    ("createdAt", _cursor("createdAt", "yesterday", "t-01")),
    ("createdAt", _cursor("createdAt", 12, "t-01")),
    ("version", _cursor("version", "two", "t-01")),
    ("status", _cursor("status", 1, "t-01")),
    ("status", _cursor("status", None, "t-01")),
]


async def test_invalid_cursor_is_422(client: httpx.AsyncClient) -> None:
    await record(client, "t-01", "created")
    for sort, cursor in INVALID_CURSORS:
        response = await client.get(f"{STATES}/task", params={"sort": sort, "cursor": cursor})
        assert response.status_code == 422, (sort, cursor, response.text)
        assert response.json()["code"] == "invalid_query"


INVALID_PARAMS: list[dict[str, str | int]] = [
    {"limit": 501},
    {"limit": 0},
    {"sort": "priority"},
    {"sort": "-revision"},
    {"status": "Not-A-Status"},
    {"updatedAfter": "yesterday"},
]


async def test_invalid_query_parameters_are_422(client: httpx.AsyncClient) -> None:
    for params in INVALID_PARAMS:
        response = await client.get(f"{STATES}/task", params=params)
        assert response.status_code == 422, (params, response.text)
        assert response.json()["code"] == "validation_error"


async def test_bad_metadata_key_is_422(client: httpx.AsyncClient) -> None:
    for key in ["", "a.b", "pri ority", "x" * 65, "ключ", "a'b", 'a"b', "a$", "$.a"]:
        response = await client.get(f"{STATES}/task", params={f"metadata.{key}": "1"})
        assert response.status_code == 422, (key, response.text)
        body = response.json()
        assert body["code"] == "invalid_query"
        assert body["details"] == {"key": key}


async def test_limit_caps_the_page(client: httpx.AsyncClient, tasks: list[State]) -> None:
    response = await client.get(f"{STATES}/task", params={"limit": 4})
    page = response.json()
    assert len(page["items"]) == 4
    assert page["nextCursor"]
    full = await client.get(f"{STATES}/task", params={"limit": 500})
    assert full.json()["nextCursor"] is None
