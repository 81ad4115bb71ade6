"""Idempotency-Key on POST/PUT/PATCH/DELETE/batch: a repeat replays the first response."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

STATES = "/api/v1/states"
REPLAYED = "idempotent-replayed"


def key(value: str) -> dict[str, str]:
    return {"Idempotency-Key": value}


async def history(client: httpx.AsyncClient, entity: str, entity_id: str) -> list[Any]:
    response = await client.get(f"{STATES}/{entity}/{entity_id}/history")
    assert response.status_code == 200, response.text
    items: list[Any] = response.json()["items"]
    return items


async def test_post_is_replayed(client: httpx.AsyncClient) -> None:
    body = {"entityId": "t1", "status": "created", "metadata": {"a": 1}}
    first = await client.post(f"{STATES}/task", json=body, headers=key("k-1"))
    assert first.status_code == 201, first.text
    assert REPLAYED not in first.headers

    again = await client.post(f"{STATES}/task", json=body, headers=key("k-1"))
    assert again.status_code == 201, again.text
    assert again.headers[REPLAYED] == "true"
    assert again.json() == first.json()
    assert again.headers["etag"] == first.headers["etag"]
    assert len(await history(client, "task", "t1")) == 1

    update = {"entityId": "t1", "status": "in_progress"}
    moved = await client.post(f"{STATES}/task", json=update, headers=key("k-2"))
    assert moved.status_code == 200
    moved_again = await client.post(f"{STATES}/task", json=update, headers=key("k-2"))
    assert moved_again.status_code == 200
    assert moved_again.headers[REPLAYED] == "true"
    assert moved_again.json()["revision"] == moved.json()["revision"]
    assert moved_again.json()["version"] == 2
    assert len(await history(client, "task", "t1")) == 2


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_put_and_patch_are_replayed(client: httpx.AsyncClient, method: str) -> None:
    await client.post(f"{STATES}/user", json={"entityId": "u1", "status": "online"})
    body = {"status": "busy", "metadata": {"n": 1}}
    first = await client.request(method, f"{STATES}/user/u1", json=body, headers=key("k"))
    assert first.status_code == 200, first.text
    assert REPLAYED not in first.headers
    again = await client.request(method, f"{STATES}/user/u1", json=body, headers=key("k"))
    assert again.status_code == 200, again.text
    assert again.headers[REPLAYED] == "true"
    assert again.json() == first.json()
    assert again.headers["etag"] == '"2"'
    assert len(await history(client, "user", "u1")) == 2
    assert (await client.get(f"{STATES}/user/u1")).json()["version"] == 2


async def test_delete_is_replayed(client: httpx.AsyncClient) -> None:
    await client.post(f"{STATES}/user", json={"entityId": "u1", "status": "online"})
    first = await client.delete(f"{STATES}/user/u1", headers=key("del"))
    assert first.status_code == 204
    assert REPLAYED not in first.headers
    again = await client.delete(f"{STATES}/user/u1", headers=key("del"))
    assert again.status_code == 204
    assert again.headers[REPLAYED] == "true"
    assert [h["event"] for h in await history(client, "user", "u1")] == [
        "entity.created",
        "entity.deleted",
    ]
    without_key = await client.delete(f"{STATES}/user/u1")
    assert without_key.status_code == 404


async def test_batch_is_replayed(client: httpx.AsyncClient) -> None:
    body = {"items": [{"entityId": f"u{n}", "status": "online"} for n in range(5)]}
    first = await client.post(f"{STATES}/user/batch", json=body, headers=key("b"))
    assert first.status_code == 200, first.text
    again = await client.post(f"{STATES}/user/batch", json=body, headers=key("b"))
    assert again.status_code == 200, again.text
    assert again.headers[REPLAYED] == "true"
    assert again.json() == first.json()
    for n in range(5):
        assert len(await history(client, "user", f"u{n}")) == 1
    changes = (await client.get("/api/v1/changes")).json()["items"]
    assert len(changes) == 5


async def test_same_key_with_another_body_is_422(client: httpx.AsyncClient) -> None:
    first = await client.post(
        f"{STATES}/user", json={"entityId": "u1", "status": "online"}, headers=key("k")
    )
    assert first.status_code == 201
    other = await client.post(
        f"{STATES}/user", json={"entityId": "u1", "status": "busy"}, headers=key("k")
    )
    assert other.status_code == 422, other.text
    body = other.json()
    assert body["code"] == "idempotency_key_reused"
    assert body["details"] == {"idempotencyKey": "k"}
    other_path = await client.put(f"{STATES}/user/u1", json={"status": "busy"}, headers=key("k"))
    assert other_path.status_code == 422
    assert other_path.json()["code"] == "idempotency_key_reused"
    state = (await client.get(f"{STATES}/user/u1")).json()
    assert state["status"] == "online"
    assert state["version"] == 1


async def test_keys_are_scoped_per_api_key(client: httpx.AsyncClient) -> None:
    body = {"entityId": "u1", "status": "online"}
    gateway = await client.post(f"{STATES}/user", json=body, headers=key("shared"))
    assert gateway.status_code == 201
    admin = await client.post(
        f"{STATES}/user", json=body, headers={**key("shared"), "x-api-key": "admin-key"}
    )
    assert admin.status_code == 200, admin.text
    assert REPLAYED not in admin.headers
    assert admin.json()["version"] == 2
    assert admin.json()["revision"] > gateway.json()["revision"]
    entries = await history(client, "user", "u1")
    assert [e["actor"] for e in entries] == ["gateway", "admin"]

    admin_again = await client.post(
        f"{STATES}/user", json=body, headers={**key("shared"), "x-api-key": "admin-key"}
    )
    assert admin_again.headers[REPLAYED] == "true"
    assert admin_again.json() == admin.json()


async def test_concurrent_identical_requests_apply_once(client: httpx.AsyncClient) -> None:
    body = {"entityId": "t1", "status": "in_progress", "metadata": {"run": 1}}
    responses = await asyncio.gather(
        *(client.post(f"{STATES}/task", json=body, headers=key("race")) for _ in range(10))
    )
    assert [r.status_code for r in responses] == [201] * 10, [r.text for r in responses]
    assert len({r.json()["revision"] for r in responses}) == 1
    assert sum(REPLAYED not in r.headers for r in responses) == 1
    assert len(await history(client, "task", "t1")) == 1
    assert (await client.get(f"{STATES}/task/t1")).json()["version"] == 1


async def test_concurrent_identical_updates_apply_once(client: httpx.AsyncClient) -> None:
    await client.post(f"{STATES}/user", json={"entityId": "u1", "status": "online"})
    responses = await asyncio.gather(
        *(
            client.patch(f"{STATES}/user/u1", json={"metadata": {"x": 1}}, headers=key("p"))
            for _ in range(10)
        )
    )
    assert {r.status_code for r in responses} == {200}, [r.text for r in responses]
    assert {r.json()["version"] for r in responses} == {2}
    assert len(await history(client, "user", "u1")) == 2


async def test_a_failed_request_is_not_stored(client: httpx.AsyncClient) -> None:
    await client.post(f"{STATES}/task", json={"entityId": "t1", "status": "created"})
    body = {"status": "completed"}
    refused = await client.put(f"{STATES}/task/t1", json=body, headers=key("retry-me"))
    assert refused.status_code == 409
    refused_again = await client.put(f"{STATES}/task/t1", json=body, headers=key("retry-me"))
    assert refused_again.status_code == 409
    assert REPLAYED not in refused_again.headers

    await client.put(f"{STATES}/task/t1", json={"status": "in_progress"})
    retried = await client.put(f"{STATES}/task/t1", json=body, headers=key("retry-me"))
    assert retried.status_code == 200, retried.text
    assert REPLAYED not in retried.headers
    assert retried.json()["status"] == "completed"
    assert retried.json()["version"] == 3


async def test_a_failed_batch_is_not_stored(client: httpx.AsyncClient) -> None:
    body = {"items": [{"entityId": "t1", "status": "created", "expectedVersion": 1}]}
    refused = await client.post(f"{STATES}/task/batch", json=body, headers=key("b"))
    assert refused.status_code == 409
    await client.post(f"{STATES}/task", json={"entityId": "t1", "status": "created"})
    body_ok = {"items": [{"entityId": "t1", "status": "in_progress", "expectedVersion": 1}]}
    reused = await client.post(f"{STATES}/task/batch", json=body_ok, headers=key("b"))
    assert reused.status_code == 200, reused.text
    assert REPLAYED not in reused.headers


@pytest.mark.parametrize("value", ["", "x" * 256])
async def test_invalid_key_is_422(client: httpx.AsyncClient, value: str) -> None:
    response = await client.post(
        f"{STATES}/user", json={"entityId": "u1", "status": "online"}, headers=key(value)
    )
    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"
    assert (await client.get(f"{STATES}/user/u1")).status_code == 404
