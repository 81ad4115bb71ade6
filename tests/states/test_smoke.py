from __future__ import annotations

import httpx


async def test_seed_example_creates_then_transitions(client: httpx.AsyncClient) -> None:
    created = await client.post(
        "/api/v1/states/task",
        json={
            "entityId": "task_123",
            "status": "in_progress",
            "metadata": {"assignee": "user_789", "priority": "high"},
        },
    )
    assert created.status_code == 201, created.text
    assert created.json()["version"] == 1
    assert created.headers["etag"] == '"1"'

    updated = await client.post(
        "/api/v1/states/task", json={"entityId": "task_123", "status": "completed"}
    )
    assert updated.status_code == 200, updated.text
    body = updated.json()
    assert body["status"] == "completed"
    assert body["version"] == 2
    assert body["metadata"] == {"assignee": "user_789", "priority": "high"}
