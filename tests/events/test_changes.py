"""GET /api/v1/changes: the global change feed by revision (docs/data-model.md)."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
import pytest

STATES = "/api/v1/states"
CHANGES = "/api/v1/changes"
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
EVENT_ID = re.compile(r"^evt_[A-Za-z0-9]+$")


async def feed(client: httpx.AsyncClient, **params: int) -> dict[str, Any]:
    response = await client.get(CHANGES, params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    page: dict[str, Any] = response.json()
    return page


async def test_an_empty_feed(client: httpx.AsyncClient) -> None:
    assert await feed(client) == {"items": [], "nextAfter": 0}
    assert await feed(client, after=42) == {"items": [], "nextAfter": 42}


async def test_every_change_in_revision_order_with_the_event_payload(
    client: httpx.AsyncClient,
) -> None:
    created = await client.post(
        f"{STATES}/task",
        json={"entityId": "task_123", "status": "created", "metadata": {"p": "high"}},
    )
    updated = await client.put(f"{STATES}/task/task_123", json={"status": "in_progress"})
    other = await client.post(f"{STATES}/user", json={"entityId": "u1", "status": "online"})
    assert (await client.delete(f"{STATES}/task/task_123")).status_code == 204

    page = await feed(client)
    items = page["items"]
    assert len(items) == 4
    revisions = [item["revision"] for item in items]
    assert revisions == sorted(revisions)
    assert revisions[:3] == [
        created.json()["revision"],
        updated.json()["revision"],
        other.json()["revision"],
    ]
    assert page["nextAfter"] == revisions[-1]
    assert len({item["id"] for item in items}) == 4

    for item in items:
        assert set(item) == {"id", "event", "revision", "timestamp", "data"}
        assert EVENT_ID.match(item["id"]), item["id"]
        assert TIMESTAMP.match(item["timestamp"]), item["timestamp"]
        assert {"entity", "id", "version", "previousStatus", "newStatus", "metadata"} <= set(
            item["data"]
        )

    assert [item["event"] for item in items] == [
        "entity.created",
        "entity.updated",
        "entity.created",
        "entity.deleted",
    ]
    data = [item["data"] for item in items]
    assert {k: data[0][k] for k in ("entity", "id", "version", "previousStatus", "newStatus")} == {
        "entity": "task",
        "id": "task_123",
        "version": 1,
        "previousStatus": None,
        "newStatus": "created",
    }
    assert data[0]["metadata"] == {"p": "high"}
    assert data[1]["previousStatus"] == "created"
    assert data[1]["newStatus"] == "in_progress"
    assert data[1]["version"] == 2
    assert data[1]["metadata"] == {"p": "high"}
    assert data[2]["entity"] == "user"
    assert data[3]["previousStatus"] == "in_progress"
    assert data[3]["newStatus"] is None
    assert data[3]["version"] == 3
    assert items[0]["timestamp"] == created.json()["updatedAt"]


async def test_failed_changes_leave_no_event(client: httpx.AsyncClient) -> None:
    await client.post(f"{STATES}/task", json={"entityId": "t1", "status": "created"})
    refused = await client.put(f"{STATES}/task/t1", json={"status": "completed"})
    assert refused.status_code == 409
    assert len((await feed(client))["items"]) == 1


async def test_paging_by_next_after_returns_every_event_once(client: httpx.AsyncClient) -> None:
    items = [{"entityId": f"u{n}", "status": "online"} for n in range(7)]
    assert (await client.post(f"{STATES}/user/batch", json={"items": items})).status_code == 200
    for n in range(4):
        await client.put(f"{STATES}/user/u{n}", json={"status": "busy"})

    all_items = (await feed(client))["items"]
    assert len(all_items) == 11

    seen: list[int] = []
    after = 0
    pages = 0
    while True:
        page = await feed(client, after=after, limit=3)
        assert len(page["items"]) <= 3
        if not page["items"]:
            assert page["nextAfter"] == after
            break
        assert all(item["revision"] > after for item in page["items"])
        seen.extend(item["revision"] for item in page["items"])
        after = page["nextAfter"]
        assert after == seen[-1]
        pages += 1
    assert seen == [item["revision"] for item in all_items]
    assert pages == 4

    middle = all_items[5]["revision"]
    rest = await feed(client, after=middle)
    assert [item["revision"] for item in rest["items"]] == seen[6:]


async def test_timestamps_never_go_backwards_along_revisions(
    client: httpx.AsyncClient,
) -> None:
    """Concurrent writers commit in revision order; their timestamps must follow,
    or a reader polling by time (`updatedAfter`) would miss changes."""
    for round_ in range(3):
        responses = await asyncio.gather(
            *(
                client.post(
                    f"{STATES}/user", json={"entityId": f"u{round_}-{n}", "status": "online"}
                )
                for n in range(30)
            )
        )
        assert {r.status_code for r in responses} == {201}
    items = (await feed(client, limit=1000))["items"]
    assert len(items) == 90
    stamps = [item["timestamp"] for item in items]
    assert stamps == sorted(stamps)


async def test_a_page_is_stable_across_reads(client: httpx.AsyncClient) -> None:
    await client.post(f"{STATES}/user", json={"entityId": "u1", "status": "online"})
    first = await client.get(CHANGES)
    second = await client.get(CHANGES)
    assert first.content == second.content


@pytest.mark.parametrize("params", [{"after": -1}, {"limit": 0}, {"limit": 1001}])
async def test_invalid_parameters_are_422(
    client: httpx.AsyncClient, params: dict[str, int]
) -> None:
    response = await client.get(CHANGES, params=params)
    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"


async def test_the_feed_needs_an_api_key(client: httpx.AsyncClient) -> None:
    response = await client.get(CHANGES, headers={"x-api-key": "nope"})
    assert response.status_code == 401
