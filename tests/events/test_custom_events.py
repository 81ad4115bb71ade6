"""Custom events: POST /api/v1/events publishes `custom.*` events to the change
feed and to matching webhook subscribers (docs/data-model.md)."""

from __future__ import annotations

import httpx

from tests.support.hub import in_process, settled_deliveries, subscribe, webhook_settings
from tests.support.receivers import running_receiver


async def test_a_custom_event_is_recorded_and_returned(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/events", json={"type": "custom.order.paid", "data": {"orderId": "o1", "n": 2}}
    )
    assert response.status_code == 201, response.text
    event = response.json()
    assert event["id"].startswith("evt_")
    assert event["event"] == "custom.order.paid"
    assert event["data"] == {"orderId": "o1", "n": 2}
    assert event["revision"] >= 1
    assert event["timestamp"].endswith("Z")

    plain = await client.post("/api/v1/events", json={"type": "custom.event"})
    assert plain.status_code == 201, plain.text
    assert plain.json()["data"] == {}
    assert plain.json()["revision"] > event["revision"]

    feed = (await client.get("/api/v1/changes", params={"after": 0})).json()["items"]
    assert [item["id"] for item in feed] == [event["id"], plain.json()["id"]]
    assert feed[0] == event


async def test_only_custom_event_types_are_accepted(client: httpx.AsyncClient) -> None:
    bodies: list[dict[str, object]] = [
        {"type": "entity.created", "data": {}},
        {"type": "entity.updated"},
        {"type": "webhook.test"},
        {"type": "custom."},
        {"type": "custom.Upper"},
        {"type": "order.paid"},
        {"type": "custom.x", "data": ["not", "an", "object"]},
        {"type": "custom.x", "extra": 1},
        {"data": {}},
    ]
    for body in bodies:
        response = await client.post("/api/v1/events", json=body)
        assert response.status_code == 422, (body, response.text)
    assert (await client.get("/api/v1/changes")).json()["items"] == []


async def test_a_custom_event_reaches_custom_subscribers_only(database_url: str) -> None:
    async with (
        running_receiver() as receiver,
        in_process(webhook_settings(database_url)) as hub,
    ):
        custom = await subscribe(hub, receiver.url("/custom"), ["custom.*"])
        entity = await subscribe(hub, receiver.url("/entity"), ["entity.*"])
        published = await hub.post(
            "/api/v1/events", json={"type": "custom.invoice.sent", "data": {"invoice": 7}}
        )
        assert published.status_code == 201
        [arrived] = await receiver.wait_for(1, path="/custom")
        assert arrived.payload == {
            "id": published.json()["id"],
            "event": "custom.invoice.sent",
            "revision": published.json()["revision"],
            "timestamp": published.json()["timestamp"],
            "data": {"invoice": 7},
        }
        assert arrived.headers["x-webhook-event"] == "custom.invoice.sent"
        await settled_deliveries(hub, custom["id"], 1)
        assert await settled_deliveries(hub, entity["id"], 0) == []
        assert receiver.at("/entity") == []
