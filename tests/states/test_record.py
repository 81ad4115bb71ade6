"""POST /api/v1/states/{entity}: create, validated transitions, free-form and strict types."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from potok_state.app import create_app
from tests.conftest import API_KEY, make_settings

STATES = "/api/v1/states"


async def record(
    client: httpx.AsyncClient, entity: str, entity_id: str, status: str, **extra: object
) -> httpx.Response:
    return await client.post(
        f"{STATES}/{entity}", json={"entityId": entity_id, "status": status, **extra}
    )


def assert_error(response: httpx.Response, status_code: int, code: str) -> dict[str, object]:
    assert response.status_code == status_code, response.text
    body: dict[str, object] = response.json()
    assert body["statusCode"] == status_code
    assert body["code"] == code
    assert isinstance(body["error"], str)
    assert body["error"]
    assert isinstance(body["message"], str)
    assert body["message"]
    assert body["requestId"] == response.headers["x-request-id"]
    return body


async def test_seed_example_creates_then_completes_keeping_metadata(
    client: httpx.AsyncClient,
) -> None:
    created = await client.post(
        f"{STATES}/task",
        json={
            "entityId": "task_123",
            "status": "in_progress",
            "metadata": {"assignee": "user_789", "priority": "high"},
        },
    )
    assert created.status_code == 201, created.text
    first = created.json()
    assert first["entity"] == "task"
    assert first["entityId"] == "task_123"
    assert first["status"] == "in_progress"
    assert first["metadata"] == {"assignee": "user_789", "priority": "high"}
    assert first["version"] == 1
    assert first["createdAt"] == first["updatedAt"]
    assert created.headers["etag"] == '"1"'

    updated = await client.post(
        f"{STATES}/task", json={"entityId": "task_123", "status": "completed"}
    )
    assert updated.status_code == 200, updated.text
    second = updated.json()
    assert second["status"] == "completed"
    assert second["metadata"] == {"assignee": "user_789", "priority": "high"}
    assert second["version"] == 2
    assert second["revision"] > first["revision"]
    assert second["createdAt"] == first["createdAt"]
    assert second["updatedAt"] >= first["updatedAt"]
    assert updated.headers["etag"] == '"2"'

    fetched = await client.get(f"{STATES}/task/task_123")
    assert fetched.json() == second


async def test_versions_count_per_entity_and_revisions_are_global(
    client: httpx.AsyncClient,
) -> None:
    a1 = (await record(client, "user", "a", "online")).json()
    b1 = (await record(client, "user", "b", "online")).json()
    a2 = (await record(client, "user", "a", "busy")).json()
    a3 = (await record(client, "user", "a", "offline", metadata={"why": "lunch"})).json()
    assert [a1["version"], a2["version"], a3["version"]] == [1, 2, 3]
    assert b1["version"] == 1
    assert a1["revision"] < b1["revision"] < a2["revision"] < a3["revision"]
    assert a3["metadata"] == {"why": "lunch"}


async def test_forbidden_transition_is_409_with_current_status_and_allowed_list(
    client: httpx.AsyncClient,
) -> None:
    assert (await record(client, "task", "t1", "created")).status_code == 201
    response = await record(client, "task", "t1", "completed")
    body = assert_error(response, 409, "invalid_transition")
    details = body["details"]
    assert isinstance(details, dict)
    assert details["currentStatus"] == "created"
    assert details["requestedStatus"] == "completed"
    assert sorted(details["allowed"]) == ["failed", "in_progress"]

    state = (await client.get(f"{STATES}/task/t1")).json()
    assert state["status"] == "created"
    assert state["version"] == 1


async def test_final_status_allows_no_transition(client: httpx.AsyncClient) -> None:
    await record(client, "task", "t1", "in_progress")
    await record(client, "task", "t1", "completed")
    body = assert_error(await record(client, "task", "t1", "failed"), 409, "invalid_transition")
    assert body["details"] == {
        "entity": "task",
        "entityId": "t1",
        "currentStatus": "completed",
        "requestedStatus": "failed",
        "allowed": [],
    }


async def test_failed_task_can_be_retried(client: httpx.AsyncClient) -> None:
    await record(client, "task", "t1", "created")
    for status in ("failed", "in_progress", "failed", "in_progress", "completed"):
        response = await record(client, "task", "t1", status)
        assert response.status_code == 200, response.text
    assert response.json()["version"] == 6


@pytest.mark.parametrize(("entity", "status"), [("task", "completed"), ("process", "running")])
async def test_invalid_initial_status_is_409(
    client: httpx.AsyncClient, entity: str, status: str
) -> None:
    body = assert_error(await record(client, entity, "x1", status), 409, "invalid_transition")
    details = body["details"]
    assert isinstance(details, dict)
    assert details["currentStatus"] is None
    assert details["requestedStatus"] == status
    assert details["allowed"]
    assert (await client.get(f"{STATES}/{entity}/x1")).status_code == 404


async def test_status_unknown_to_the_table_is_422(client: httpx.AsyncClient) -> None:
    body = assert_error(await record(client, "task", "t1", "paused"), 422, "unknown_status")
    details = body["details"]
    assert isinstance(details, dict)
    assert details["status"] == "paused"
    assert details["statuses"] == ["created", "in_progress", "completed", "failed"]

    await record(client, "task", "t1", "created")
    assert_error(await record(client, "task", "t1", "paused"), 422, "unknown_status")


async def test_free_form_type_accepts_any_status_and_any_transition(
    client: httpx.AsyncClient,
) -> None:
    statuses = ["queued", "shipped", "queued", "x9", "delivered_late", "queued"]
    created = await record(client, "parcel", "p-1", statuses[0])
    assert created.status_code == 201, created.text
    for status in statuses[1:]:
        response = await record(client, "parcel", "p-1", status)
        assert response.status_code == 200, response.text
        assert response.json()["status"] == status
    assert response.json()["version"] == len(statuses)
    machine = await client.get("/api/v1/state-machines/parcel")
    assert machine.status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {"entityId": "p1", "status": "Shipped"},
        {"entityId": "p1", "status": "1st"},
        {"entityId": "p1", "status": ""},
        {"entityId": "p 1", "status": "ok"},
        {"entityId": "x" * 129, "status": "ok"},
        {"entityId": "p1"},
        {"status": "ok"},
        {"entityId": "p1", "status": "ok", "metadata": ["not", "an", "object"]},
        {"entityId": "p1", "status": "ok", "unexpected": 1},
    ],
)
async def test_invalid_record_body_is_422(
    client: httpx.AsyncClient, body: dict[str, object]
) -> None:
    assert_error(await client.post(f"{STATES}/parcel", json=body), 422, "validation_error")


async def test_invalid_entity_type_is_422(client: httpx.AsyncClient) -> None:
    response = await record(client, "Parcel", "p1", "ok")
    assert_error(response, 422, "validation_error")


async def test_oversize_metadata_is_422(client: httpx.AsyncClient) -> None:
    response = await record(client, "parcel", "p1", "ok", metadata={"blob": "x" * 70_000})
    assert_error(response, 422, "metadata_too_large")
    assert (await client.get(f"{STATES}/parcel/p1")).status_code == 404


async def test_same_status_with_new_metadata_is_a_change_even_from_a_final_status(
    client: httpx.AsyncClient,
) -> None:
    await record(client, "process", "job-1", "pending")
    await record(client, "process", "job-1", "running")
    finished = await record(client, "process", "job-1", "finished", metadata={"exit": 0})
    assert finished.status_code == 200
    again = await record(client, "process", "job-1", "finished", metadata={"exit": 0, "log": "ok"})
    assert again.status_code == 200, again.text
    body = again.json()
    assert body["status"] == "finished"
    assert body["metadata"] == {"exit": 0, "log": "ok"}
    assert body["version"] == finished.json()["version"] + 1

    history = (await client.get(f"{STATES}/process/job-1/history")).json()["items"]
    assert history[-1]["event"] == "entity.updated"
    assert history[-1]["previousStatus"] == "finished"
    assert history[-1]["newStatus"] == "finished"


async def test_reason_and_actor_are_recorded(client: httpx.AsyncClient) -> None:
    await record(client, "task", "t1", "created", reason="imported")
    entry = (await client.get(f"{STATES}/task/t1/history")).json()["items"][0]
    assert entry["reason"] == "imported"
    assert entry["actor"] == "gateway"


async def test_missing_or_unknown_api_key_is_401(client: httpx.AsyncClient) -> None:
    body = {"entityId": "t1", "status": "created"}
    missing = await client.post(f"{STATES}/task", json=body, headers={"x-api-key": ""})
    assert_error(missing, 401, "unauthorized")
    unknown = await client.post(f"{STATES}/task", json=body, headers={"x-api-key": "nope"})
    assert_error(unknown, 401, "unauthorized")
    assert (await client.get(f"{STATES}/task/t1")).status_code == 404


@pytest.fixture
async def strict_client(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    application: FastAPI = create_app(make_settings(database_url, state_machines_strict=True))
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://potok.test", headers={"x-api-key": API_KEY}
        ) as http:
            yield http


async def test_strict_mode_rejects_types_without_a_table(
    strict_client: httpx.AsyncClient,
) -> None:
    body = assert_error(
        await record(strict_client, "parcel", "p1", "queued"), 422, "unknown_entity_type"
    )
    assert body["details"] == {"entity": "parcel"}
    batch = await strict_client.post(
        f"{STATES}/parcel/batch", json={"items": [{"entityId": "p1", "status": "queued"}]}
    )
    assert_error(batch, 422, "unknown_entity_type")
    assert (await strict_client.get(f"{STATES}/parcel/p1")).status_code == 404

    created = await record(strict_client, "task", "t1", "created")
    assert created.status_code == 201, created.text
