"""POST /api/v1/states/{entity}/batch: atomic and per-item batches."""

from __future__ import annotations

from typing import Any

import httpx

STATES = "/api/v1/states"

Body = dict[str, Any]


async def batch(client: httpx.AsyncClient, entity: str, body: Body) -> httpx.Response:
    return await client.post(f"{STATES}/{entity}/batch", json=body)


async def record(client: httpx.AsyncClient, entity: str, entity_id: str, status: str) -> Body:
    response = await client.post(
        f"{STATES}/{entity}", json={"entityId": entity_id, "status": status}
    )
    assert response.status_code in (200, 201), response.text
    body: Body = response.json()
    return body


async def last_revision(client: httpx.AsyncClient) -> int:
    page = (await client.get("/api/v1/changes", params={"after": 0, "limit": 1000})).json()
    after: int = page["nextAfter"]
    while page["items"]:
        page = (await client.get("/api/v1/changes", params={"after": after, "limit": 1000})).json()
        after = page["nextAfter"]
    return after


async def test_thousand_items_in_one_atomic_request(client: httpx.AsyncClient) -> None:
    items = [
        {"entityId": f"job-{n:04d}", "status": "pending", "metadata": {"n": n}} for n in range(1000)
    ]
    response = await batch(client, "process", {"items": items, "atomic": True})
    assert response.status_code == 200, response.text[:2000]
    body = response.json()
    assert body["atomic"] is True
    assert body["succeeded"] == 1000
    assert body["failed"] == 0
    results = body["items"]
    assert [r["index"] for r in results] == list(range(1000))
    assert all(r["ok"] and r["error"] is None for r in results)
    assert [r["entityId"] for r in results] == [i["entityId"] for i in items]
    revisions = [r["state"]["revision"] for r in results]
    assert len(set(revisions)) == 1000
    assert revisions == sorted(revisions)
    assert {r["state"]["version"] for r in results} == {1}

    stored: list[Body] = []
    cursor = None
    while True:
        params: dict[str, str | int] = {"sort": "entityId", "limit": 500}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get(f"{STATES}/process", params=params)).json()
        stored.extend(page["items"])
        cursor = page["nextCursor"]
        if not cursor:
            break
    assert [s["entityId"] for s in stored] == [i["entityId"] for i in items]
    assert [s["metadata"]["n"] for s in stored] == list(range(1000))

    changes = (await client.get("/api/v1/changes", params={"after": 0, "limit": 1000})).json()
    assert [c["revision"] for c in changes["items"]] == revisions
    assert {c["event"] for c in changes["items"]} == {"entity.created"}

    history = (await client.get(f"{STATES}/process/job-0500/history")).json()["items"]
    assert len(history) == 1
    assert history[0]["revision"] == revisions[500]
    assert history[0]["newStatus"] == "pending"


async def test_atomic_batch_with_a_forbidden_transition_writes_nothing(
    client: httpx.AsyncClient,
) -> None:
    await record(client, "task", "done", "in_progress")
    await record(client, "task", "done", "completed")
    before = await last_revision(client)

    response = await batch(
        client,
        "task",
        {
            "items": [
                {"entityId": "new-1", "status": "created"},
                {"entityId": "done", "status": "in_progress"},
                {"entityId": "new-2", "status": "in_progress"},
                {"entityId": "new-3", "status": "completed"},
            ]
        },
    )
    assert response.status_code == 409, response.text
    body = response.json()
    assert body["statusCode"] == 409
    assert body["code"] == "batch_rejected"
    failures = body["details"]["failures"]
    assert [(f["index"], f["entityId"], f["code"]) for f in failures] == [
        (1, "done", "invalid_transition"),
        (3, "new-3", "invalid_transition"),
    ]
    assert failures[0]["statusCode"] == 409
    assert failures[0]["details"]["currentStatus"] == "completed"
    assert failures[0]["message"]

    for entity_id in ("new-1", "new-2", "new-3"):
        assert (await client.get(f"{STATES}/task/{entity_id}")).status_code == 404
    assert (await client.get(f"{STATES}/task/done")).json()["version"] == 2
    assert await last_revision(client) == before


async def test_atomic_batch_with_a_version_mismatch_writes_nothing(
    client: httpx.AsyncClient,
) -> None:
    await record(client, "user", "u1", "online")
    await record(client, "user", "u1", "busy")
    await record(client, "user", "u2", "online")
    before = await last_revision(client)

    response = await batch(
        client,
        "user",
        {
            "items": [
                {"entityId": "u2", "status": "offline", "expectedVersion": 1},
                {"entityId": "u1", "status": "offline", "expectedVersion": 1},
                {"entityId": "u3", "status": "offline", "expectedVersion": 1},
            ]
        },
    )
    assert response.status_code == 409, response.text
    failures = response.json()["details"]["failures"]
    assert [(f["index"], f["code"], f["statusCode"]) for f in failures] == [
        (1, "version_mismatch", 412),
        (2, "state_not_found", 404),
    ]
    assert failures[0]["details"] == {"currentVersion": 2, "expectedVersion": 1}
    assert (await client.get(f"{STATES}/user/u2")).json()["status"] == "online"
    assert await last_revision(client) == before

    fixed = await batch(
        client,
        "user",
        {"items": [{"entityId": "u1", "status": "offline", "expectedVersion": 2}]},
    )
    assert fixed.status_code == 200, fixed.text
    assert fixed.json()["items"][0]["state"]["version"] == 3


async def test_atomic_batch_with_an_invalid_item_is_422(client: httpx.AsyncClient) -> None:
    before = await last_revision(client)
    response = await batch(
        client,
        "task",
        {
            "items": [
                {"entityId": "t1", "status": "created"},
                {"entityId": "t2", "status": "created", "metadata": {"blob": "x" * 70_000}},
                {"entityId": "t3", "status": "completed"},
            ]
        },
    )
    assert response.status_code == 422, response.text[:500]
    body = response.json()
    assert body["code"] == "batch_rejected"
    failures = body["details"]["failures"]
    assert [(f["index"], f["code"]) for f in failures] == [
        (1, "metadata_too_large"),
        (2, "invalid_transition"),
    ]
    assert (await client.get(f"{STATES}/task/t1")).status_code == 404
    assert await last_revision(client) == before


async def test_unknown_status_in_a_batch_is_422(client: httpx.AsyncClient) -> None:
    response = await batch(client, "task", {"items": [{"entityId": "t1", "status": "paused"}]})
    assert response.status_code == 422
    assert response.json()["details"]["failures"][0]["code"] == "unknown_status"


async def test_non_atomic_batch_writes_the_good_items_and_reports_each(
    client: httpx.AsyncClient,
) -> None:
    await record(client, "task", "old", "created")
    response = await batch(
        client,
        "task",
        {
            "atomic": False,
            "items": [
                {"entityId": "a", "status": "created", "metadata": {"k": 1}},
                {"entityId": "old", "status": "completed"},
                {"entityId": "old", "status": "in_progress", "reason": "picked"},
                {"entityId": "b", "status": "paused"},
                {"entityId": "c", "status": "created", "metadata": {"blob": "x" * 70_000}},
                {"entityId": "old", "status": "failed", "expectedVersion": 1},
            ],
        },
    )
    assert response.status_code == 200, response.text[:500]
    body = response.json()
    assert body["atomic"] is False
    assert body["succeeded"] == 2
    assert body["failed"] == 4
    results = body["items"]
    assert [(r["index"], r["entityId"], r["ok"]) for r in results] == [
        (0, "a", True),
        (1, "old", False),
        (2, "old", True),
        (3, "b", False),
        (4, "c", False),
        (5, "old", False),
    ]
    assert [(r["error"]["statusCode"], r["error"]["code"]) for r in results if not r["ok"]] == [
        (409, "invalid_transition"),
        (422, "unknown_status"),
        (422, "metadata_too_large"),
        (412, "version_mismatch"),
    ]
    assert all(r["state"] is None for r in results if not r["ok"])
    assert results[0]["state"]["metadata"] == {"k": 1}
    assert results[2]["state"]["status"] == "in_progress"
    assert results[2]["state"]["version"] == 2

    assert (await client.get(f"{STATES}/task/a")).json()["status"] == "created"
    assert (await client.get(f"{STATES}/task/old")).json()["status"] == "in_progress"
    for missing in ("b", "c"):
        assert (await client.get(f"{STATES}/task/{missing}")).status_code == 404
    history = (await client.get(f"{STATES}/task/old/history")).json()["items"]
    assert [h["newStatus"] for h in history] == ["created", "in_progress"]
    assert history[1]["reason"] == "picked"


async def test_non_atomic_batch_where_every_item_fails(client: httpx.AsyncClient) -> None:
    before = await last_revision(client)
    response = await batch(
        client, "task", {"atomic": False, "items": [{"entityId": "x", "status": "completed"}]}
    )
    assert response.status_code == 200, response.text
    assert response.json()["succeeded"] == 0
    assert response.json()["failed"] == 1
    assert await last_revision(client) == before


async def test_duplicate_ids_are_applied_in_order(client: httpx.AsyncClient) -> None:
    response = await batch(
        client,
        "task",
        {
            "items": [
                {"entityId": "t1", "status": "created", "metadata": {"step": 1}},
                {"entityId": "t1", "status": "in_progress"},
                {"entityId": "t1", "status": "completed", "metadata": {"step": 3}},
            ]
        },
    )
    assert response.status_code == 200, response.text
    states = [r["state"] for r in response.json()["items"]]
    assert [(s["status"], s["version"]) for s in states] == [
        ("created", 1),
        ("in_progress", 2),
        ("completed", 3),
    ]
    assert states[1]["metadata"] == {"step": 1}
    assert states[0]["revision"] < states[1]["revision"] < states[2]["revision"]
    assert {s["createdAt"] for s in states} == {states[0]["createdAt"]}

    stored = (await client.get(f"{STATES}/task/t1")).json()
    assert stored == states[2]
    assert stored["createdAt"] == states[0]["createdAt"]
    history = (await client.get(f"{STATES}/task/t1/history")).json()["items"]
    assert [(h["event"], h["previousStatus"], h["newStatus"]) for h in history] == [
        ("entity.created", None, "created"),
        ("entity.updated", "created", "in_progress"),
        ("entity.updated", "in_progress", "completed"),
    ]


async def test_duplicate_ids_are_validated_against_the_earlier_item(
    client: httpx.AsyncClient,
) -> None:
    response = await batch(
        client,
        "task",
        {
            "items": [
                {"entityId": "t1", "status": "in_progress"},
                {"entityId": "t1", "status": "completed"},
                {"entityId": "t1", "status": "in_progress"},
            ]
        },
    )
    assert response.status_code == 409, response.text
    failures = response.json()["details"]["failures"]
    assert [(f["index"], f["code"]) for f in failures] == [(2, "invalid_transition")]
    assert failures[0]["details"]["currentStatus"] == "completed"
    assert (await client.get(f"{STATES}/task/t1")).status_code == 404

    per_item = await batch(
        client,
        "task",
        {
            "atomic": False,
            "items": [
                {"entityId": "t2", "status": "created"},
                {"entityId": "t2", "status": "completed"},
                {"entityId": "t2", "status": "in_progress", "expectedVersion": 1},
            ],
        },
    )
    assert [r["ok"] for r in per_item.json()["items"]] == [True, False, True]
    assert (await client.get(f"{STATES}/task/t2")).json()["version"] == 2


async def test_more_than_1000_items_or_none_is_422(client: httpx.AsyncClient) -> None:
    items = [{"entityId": f"p{n}", "status": "pending"} for n in range(1001)]
    too_many = await batch(client, "process", {"items": items})
    assert too_many.status_code == 422
    assert too_many.json()["code"] == "validation_error"
    empty = await batch(client, "process", {"items": []})
    assert empty.status_code == 422
    assert (await client.get(f"{STATES}/process/p0")).status_code == 404


async def test_malformed_items_are_422(client: httpx.AsyncClient) -> None:
    for item in (
        {"entityId": "bad id", "status": "pending"},
        {"entityId": "p1", "status": "Pending"},
        {"entityId": "p1", "status": "pending", "expectedVersion": 0},
        {"entityId": "p1", "status": "pending", "extra": True},
    ):
        response = await batch(client, "process", {"items": [item]})
        assert response.status_code == 422, item
        assert response.json()["code"] == "validation_error"
