"""GET /api/v1/states/{entity}/{id}/history: every change, oldest first, paged."""

from __future__ import annotations

import base64
import re

import httpx
import pytest

STATES = "/api/v1/states"
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


async def write(client: httpx.AsyncClient, entity_id: str, status: str, **extra: object) -> int:
    response = await client.post(
        f"{STATES}/user", json={"entityId": entity_id, "status": status, **extra}
    )
    assert response.status_code in (200, 201), response.text
    revision: int = response.json()["revision"]
    return revision


async def test_history_lists_every_change_oldest_first_with_every_field(
    client: httpx.AsyncClient,
) -> None:
    r1 = await write(client, "u1", "online", metadata={"ip": "10.0.0.1"}, reason="login")
    await write(client, "other", "online")
    r2 = await write(client, "u1", "busy")
    r3 = (
        await client.patch(
            f"{STATES}/user/u1",
            json={"metadata": {"call": True}, "reason": "meeting"},
            headers={"x-api-key": "admin-key"},
        )
    ).json()["revision"]
    assert (await client.delete(f"{STATES}/user/u1")).status_code == 204

    response = await client.get(f"{STATES}/user/u1/history")
    assert response.status_code == 200, response.text
    page = response.json()
    assert page["nextCursor"] is None
    items = page["items"]
    assert len(items) == 4
    for item in items:
        assert set(item) == {
            "revision",
            "version",
            "event",
            "previousStatus",
            "newStatus",
            "metadata",
            "reason",
            "actor",
            "changedAt",
        }
        assert TIMESTAMP.match(item["changedAt"]), item["changedAt"]
    assert items[0] == {
        "revision": r1,
        "version": 1,
        "event": "entity.created",
        "previousStatus": None,
        "newStatus": "online",
        "metadata": {"ip": "10.0.0.1"},
        "reason": "login",
        "actor": "gateway",
        "changedAt": items[0]["changedAt"],
    }
    assert items[1] | {"changedAt": None} == {
        "revision": r2,
        "version": 2,
        "event": "entity.updated",
        "previousStatus": "online",
        "newStatus": "busy",
        "metadata": {"ip": "10.0.0.1"},
        "reason": None,
        "actor": "gateway",
        "changedAt": None,
    }
    assert items[2] | {"changedAt": None} == {
        "revision": r3,
        "version": 3,
        "event": "entity.updated",
        "previousStatus": "busy",
        "newStatus": "busy",
        "metadata": {"ip": "10.0.0.1", "call": True},
        "reason": "meeting",
        "actor": "admin",
        "changedAt": None,
    }
    assert items[3]["event"] == "entity.deleted"
    assert items[3]["previousStatus"] == "busy"
    assert items[3]["newStatus"] is None
    assert items[3]["version"] == 4
    assert items[3]["revision"] > r3
    assert [i["changedAt"] for i in items] == sorted(i["changedAt"] for i in items)


async def test_paging_covers_every_entry_exactly_once(client: httpx.AsyncClient) -> None:
    statuses = ["online", "busy", "offline"]
    revisions = [await write(client, "u1", statuses[n % 3]) for n in range(11)]
    await write(client, "u2", "online")

    seen: list[int] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, str | int] = {"limit": 3}
        if cursor is not None:
            params["cursor"] = cursor
        response = await client.get(f"{STATES}/user/u1/history", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= 3
        seen.extend(item["revision"] for item in page["items"])
        pages += 1
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert seen == revisions
    assert pages == 4


async def test_exact_page_size_ends_without_a_cursor(client: httpx.AsyncClient) -> None:
    for status in ("online", "busy"):
        await write(client, "u1", status)
    page = (await client.get(f"{STATES}/user/u1/history", params={"limit": 2})).json()
    assert len(page["items"]) == 2
    assert page["nextCursor"] is None


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor", ["not a cursor", "!!!", _b64("-5"), _b64("abc"), _b64("9" * 40), "x" * 600]
)
async def test_invalid_cursor_is_422(client: httpx.AsyncClient, cursor: str) -> None:
    await write(client, "u1", "online")
    response = await client.get(f"{STATES}/user/u1/history", params={"cursor": cursor})
    assert response.status_code == 422, response.text
    assert response.json()["code"] in {"invalid_query", "validation_error"}


@pytest.mark.parametrize("limit", [0, 501, -1])
async def test_limit_out_of_range_is_422(client: httpx.AsyncClient, limit: int) -> None:
    await write(client, "u1", "online")
    response = await client.get(f"{STATES}/user/u1/history", params={"limit": limit})
    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"


async def test_history_of_unknown_entity_is_404(client: httpx.AsyncClient) -> None:
    await write(client, "u1", "online")
    response = await client.get(f"{STATES}/user/ghost/history")
    assert response.status_code == 404
    assert response.json()["code"] == "state_not_found"
    other_type = await client.get(f"{STATES}/task/u1/history")
    assert other_type.status_code == 404
