"""Request bodies are taken with their JSON types as sent (kit/request_model.py):
no string is read as a number or a boolean, no number as a string, no boolean
as an integer, on every body of the API. Each coercion is a 422 that names the
field, and writes nothing; the JSON forms of every type still pass."""

from __future__ import annotations

import httpx

STATES = "/api/v1/states"
SUBSCRIPTIONS = "/api/v1/webhooks/subscriptions"
NOWHERE = {"url": "https://hooks.example.com/potok", "events": ["custom.never-published"]}
ITEM = {"entityId": "b1", "status": "online"}

# (method, path, body, the field named); {sub} is a subscription's id.
COERCIONS: list[tuple[str, str, dict[str, object], str]] = [
    # the inputs
    ("POST", f"{STATES}/user", {**ITEM, "entityId": "u2", "ttl": "10"}, "body.ttl"),
    ("POST", f"{STATES}/user", {**ITEM, "entityId": "u2", "ttl": True}, "body.ttl"),
    ("PATCH", f"{SUBSCRIPTIONS}/{{sub}}", {"active": "yes"}, "body.active"),
    ("POST", f"{SUBSCRIPTIONS}/{{sub}}/replay", {"fromRevision": "1"}, "body.fromRevision"),
    # states
    ("POST", f"{STATES}/user", {**ITEM, "ttl": 10.0}, "body.ttl"),
    ("POST", f"{STATES}/user", {**ITEM, "reason": 5}, "body.reason"),
    ("POST", f"{STATES}/user", {"entityId": 7, "status": "online"}, "body.entityId"),
    ("PUT", f"{STATES}/user/u1", {"status": "busy", "ttl": "30"}, "body.ttl"),
    ("PATCH", f"{STATES}/user/u1", {"reason": False}, "body.reason"),
    ("POST", f"{STATES}/user/batch", {"items": [ITEM], "atomic": 1}, "body.atomic"),
    ("POST", f"{STATES}/user/batch", {"items": [ITEM], "atomic": "false"}, "body.atomic"),
    (
        "POST",
        f"{STATES}/user/batch",
        {"items": [{**ITEM, "expectedVersion": "1"}]},
        "body.items.0.expectedVersion",
    ),
    ("POST", f"{STATES}/user/batch", {"items": [{**ITEM, "ttl": True}]}, "body.items.0.ttl"),
    ("POST", f"{STATES}/user/u1/heartbeat", {"ttl": "30"}, "body.ttl"),
    ("POST", f"{STATES}/user/heartbeat", {"ids": ["u1"], "ttl": True}, "body.ttl"),
    ("POST", f"{STATES}/user/heartbeat", {"ids": [1]}, "body.ids.0"),
    # events
    ("POST", "/api/v1/events", {"type": 1}, "body.type"),
    # webhooks
    ("POST", SUBSCRIPTIONS, {**NOWHERE, "rateLimit": "5"}, "body.rateLimit"),
    ("POST", SUBSCRIPTIONS, {**NOWHERE, "timeoutMs": True}, "body.timeoutMs"),
    ("POST", SUBSCRIPTIONS, {**NOWHERE, "maxAttempts": 2.0}, "body.maxAttempts"),
    ("POST", SUBSCRIPTIONS, {**NOWHERE, "secret": 1234567890123456789}, "body.secret"),
    ("POST", SUBSCRIPTIONS, {**NOWHERE, "description": 5}, "body.description"),
    ("PATCH", f"{SUBSCRIPTIONS}/{{sub}}", {"active": 1}, "body.active"),
    ("PATCH", f"{SUBSCRIPTIONS}/{{sub}}", {"rateLimit": "5"}, "body.rateLimit"),
    ("POST", f"{SUBSCRIPTIONS}/{{sub}}/replay", {"fromRevision": True}, "body.fromRevision"),
    (
        "POST",
        f"{SUBSCRIPTIONS}/{{sub}}/replay",
        {"fromRevision": 1, "toRevision": "5"},
        "body.toRevision",
    ),
    ("POST", f"{SUBSCRIPTIONS}/{{sub}}/replay", {"since": 1_700_000_000}, "body.since"),
    ("POST", f"{SUBSCRIPTIONS}/{{sub}}/replay", {"since": "2026-01-01"}, "body.since"),
    (
        "POST",
        f"{SUBSCRIPTIONS}/{{sub}}/rotate-secret",
        {"secret": 12345678901234567},
        "body.secret",
    ),
]


async def test_coerced_types_are_a_422_naming_the_field_and_write_nothing(
    client: httpx.AsyncClient,
) -> None:
    created = await client.post(f"{STATES}/user", json={"entityId": "u1", "status": "online"})
    assert created.status_code == 201, created.text
    subscribed = await client.post(SUBSCRIPTIONS, json={**NOWHERE, "secret": "s" * 16})
    assert subscribed.status_code == 201, subscribed.text
    sub = subscribed.json()
    before = (await client.get("/api/v1/changes")).json()

    for method, path, body, field in COERCIONS:
        response = await client.request(method, path.format(sub=sub["id"]), json=body)
        assert response.status_code == 422, (method, path, body, response.text)
        error = response.json()
        assert error["code"] == "validation_error", error
        assert [".".join(e["location"]) for e in error["details"]["errors"]] == [field], error
        assert f"{field}:" in error["message"], error

    assert (await client.get("/api/v1/changes")).json() == before
    assert (await client.get(f"{STATES}/user/u1")).json() == created.json()
    assert [s["id"] for s in (await client.get(SUBSCRIPTIONS)).json()] == [sub["id"]]
    unchanged = (await client.get(f"{SUBSCRIPTIONS}/{sub['id']}")).json()
    assert unchanged == {name: value for name, value in sub.items() if name != "secret"}
    deliveries = await client.get(f"{SUBSCRIPTIONS}/{sub['id']}/deliveries")
    assert deliveries.json()["items"] == []


async def test_the_json_forms_of_every_type_still_pass(client: httpx.AsyncClient) -> None:
    recorded = await client.post(f"{STATES}/user", json={**ITEM, "ttl": 10, "reason": "r"})
    assert recorded.status_code == 201, recorded.text
    assert recorded.json()["lease"]["ttl"] == 10
    batch = await client.post(
        f"{STATES}/user/batch",
        json={"atomic": False, "items": [{**ITEM, "expectedVersion": 1, "ttl": 0}]},
    )
    assert batch.status_code == 200, batch.text
    heartbeat = await client.post(f"{STATES}/user/heartbeat", json={"ids": ["b1"], "ttl": 5})
    assert heartbeat.status_code == 200, heartbeat.text
    subscribed = await client.post(
        SUBSCRIPTIONS, json={**NOWHERE, "rateLimit": 5, "timeoutMs": 500, "maxAttempts": 2}
    )
    assert subscribed.status_code == 201, subscribed.text
    path = f"{SUBSCRIPTIONS}/{subscribed.json()['id']}"
    paused = await client.patch(path, json={"active": False, "rateLimit": None})
    assert paused.status_code == 200, paused.text
    assert paused.json()["status"] == "disabled"
    for replay in (
        {"fromRevision": 1, "toRevision": 2},
        {"since": "2026-01-01T00:00:00Z"},
        {"since": "2026-01-01T05:00:00+05:00"},
    ):
        response = await client.post(f"{path}/replay", json=replay)
        assert response.status_code == 202, (replay, response.text)
