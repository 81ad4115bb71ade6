"""Subscription CRUD, URL rules and event filters (docs/data-model.md)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.support.hub import (
    in_process,
    publish,
    record,
    settled_deliveries,
    subscribe,
    webhook_settings,
)
from tests.support.receivers import Receiver

SUBSCRIPTIONS = "/api/v1/webhooks/subscriptions"


async def test_create_shows_the_secret_once(hub: httpx.AsyncClient, receiver: Receiver) -> None:
    created = await subscribe(
        hub, receiver.url(), ["entity.*"], description="gateway", entityTypes=["task"]
    )
    assert created["id"].startswith("sub_")
    assert created["secret"].startswith("whsec_")
    assert len(base64.b64decode(created["secret"].removeprefix("whsec_"))) == 32
    assert created["status"] == "active"
    assert created["consecutiveFailures"] == 0
    assert (created["events"], created["entityTypes"], created["description"]) == (
        ["entity.*"],
        ["task"],
        "gateway",
    )
    other = await subscribe(hub, receiver.url(), secret="a-secret-of-my-own")
    assert other["secret"] == "a-secret-of-my-own"
    assert other["secret"] != created["secret"]

    listed = await hub.get(SUBSCRIPTIONS)
    assert listed.status_code == 200
    assert [s["id"] for s in listed.json()] == [created["id"], other["id"]]
    one = await hub.get(f"{SUBSCRIPTIONS}/{created['id']}")
    assert one.status_code == 200
    for shown in [*listed.json(), one.json()]:
        assert "secret" not in shown
        assert created["secret"] not in str(shown)
    assert one.json()["lastDeliveryAt"] is None
    assert one.json()["lastError"] is None


async def test_patch_changes_url_events_and_description(
    hub: httpx.AsyncClient, receiver: Receiver
) -> None:
    created = await subscribe(hub, receiver.url("/old"), ["entity.created"])
    patched = await hub.patch(
        f"{SUBSCRIPTIONS}/{created['id']}",
        json={"url": receiver.url("/new"), "events": ["custom.*"], "description": "moved"},
    )
    assert patched.status_code == 200, patched.text
    assert (patched.json()["url"], patched.json()["events"], patched.json()["description"]) == (
        receiver.url("/new"),
        ["custom.*"],
        "moved",
    )
    await record(hub, "task", "t1", "created")
    await publish(hub, "custom.moved")
    [arrived] = await receiver.wait_for(1)
    assert (arrived.path, arrived.payload["event"]) == ("/new", "custom.moved")


async def test_delete_then_404(hub: httpx.AsyncClient, receiver: Receiver) -> None:
    created = await subscribe(hub, receiver.url())
    deleted = await hub.delete(f"{SUBSCRIPTIONS}/{created['id']}")
    assert deleted.status_code == 204
    assert deleted.content == b""
    for response in (
        await hub.get(f"{SUBSCRIPTIONS}/{created['id']}"),
        await hub.delete(f"{SUBSCRIPTIONS}/{created['id']}"),
        await hub.patch(f"{SUBSCRIPTIONS}/{created['id']}", json={"active": True}),
        await hub.get(f"{SUBSCRIPTIONS}/{created['id']}/deliveries"),
        await hub.post(f"{SUBSCRIPTIONS}/{created['id']}/test"),
    ):
        assert response.status_code == 404, response.text
        assert response.json()["code"] == "subscription_not_found"
    assert (await hub.get(SUBSCRIPTIONS)).json() == []


async def test_only_http_urls_are_accepted(hub: httpx.AsyncClient) -> None:
    for url in ("ftp://example.com/hook", "file:///etc/passwd", "example.com/hook", "http://:80/x"):
        response = await hub.post(SUBSCRIPTIONS, json={"url": url, "events": ["*"]})
        assert response.status_code == 422, (url, response.text)


@pytest.fixture
async def public_only(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with in_process(webhook_settings(database_url, allow_private_targets=False)) as client:
        yield client


PRIVATE_URLS = [
    "http://127.0.0.1:8080/hook",
    "http://localhost/hook",
    "http://api.localhost/hook",
    "https://10.1.2.3/hook",
    "http://192.168.0.10/hook",
    "http://172.16.5.4/hook",
    "http://169.254.169.254/latest/meta-data",
    "http://[::1]:9000/hook",
    "http://[fe80::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://0.0.0.0/hook",
    # Forms the HTTP client or the system resolver read as loopback.
    "http://127。0。0。1:8080/hook",
    "http://①②⑦.0.0.1:8080/hook",
    "http://[64:ff9b::7f00:1]/hook",
    "http://[2002:7f00:1::]/hook",
    "http://2130706433/hook",
    "http://0x7f000001/hook",
    "http://0177.0.0.1/hook",
    "http://127.1/hook",
    "http://0/hook",
    "http://localhost./hook",
]


async def test_private_targets_are_refused_unless_allowed(public_only: httpx.AsyncClient) -> None:
    for url in PRIVATE_URLS:
        response = await public_only.post(SUBSCRIPTIONS, json={"url": url, "events": ["*"]})
        assert response.status_code == 422, (url, response.text)
        assert response.json()["code"] == "invalid_webhook_url", url
    assert (await public_only.get(SUBSCRIPTIONS)).json() == []


async def test_a_public_target_is_accepted_and_patching_to_a_private_one_is_refused(
    public_only: httpx.AsyncClient,
) -> None:
    created = await public_only.post(
        SUBSCRIPTIONS, json={"url": "https://hooks.example.com/potok", "events": ["*"]}
    )
    assert created.status_code == 201, created.text
    patched = await public_only.patch(
        f"{SUBSCRIPTIONS}/{created.json()['id']}", json={"url": "http://127.0.0.1/x"}
    )
    assert patched.status_code == 422
    assert patched.json()["code"] == "invalid_webhook_url"
    unicode = await public_only.patch(
        f"{SUBSCRIPTIONS}/{created.json()['id']}", json={"url": "http://127。0。0。1/x"}
    )
    assert unicode.status_code == 422
    await public_only.delete(f"{SUBSCRIPTIONS}/{created.json()['id']}")


async def test_a_private_target_saved_earlier_is_refused_at_every_attempt(
    database_url: str, receiver: Receiver
) -> None:
    """A subscription saved while private targets were allowed (or written
    around the API) gets nothing once they are not: the check runs again
    before every attempt, on the host as the client reads it."""
    async with in_process(webhook_settings(database_url, allow_private_targets=True)) as client:
        port = receiver.port
        await subscribe(client, f"http://127。0。0。1:{port}/hook")
    async with in_process(
        webhook_settings(database_url, allow_private_targets=False, max_retries=0)
    ) as client:
        subscription = (await client.get(SUBSCRIPTIONS)).json()[0]
        await record(client, "task", "t1", "created")
        [delivery] = await settled_deliveries(client, subscription["id"], 1)
        assert delivery["status"] == "failed"
        assert "Private, loopback and link-local" in delivery["lastError"]
    assert receiver.requests == []


async def test_bad_event_filters_are_refused(hub: httpx.AsyncClient, receiver: Receiver) -> None:
    for events in (["entity.renamed"], ["webhook.test"], ["custom"], [], ["*.*"]):
        response = await hub.post(SUBSCRIPTIONS, json={"url": receiver.url(), "events": events})
        assert response.status_code == 422, (events, response.text)


FILTERS: dict[str, tuple[list[str], list[str] | None]] = {
    "/all": (["*"], None),
    "/entity": (["entity.*"], None),
    "/updated": (["entity.updated"], None),
    "/custom": (["custom.*"], None),
    "/paid": (["custom.order.paid"], None),
    "/tasks": (["entity.*"], ["task"]),
    "/task-or-user-deleted": (["entity.deleted"], ["task", "user"]),
}
EXPECTED = {
    "/all": [
        "entity.created/user",
        "entity.updated/user",
        "entity.created/task",
        "custom.order.paid",
        "custom.order.refunded",
        "entity.deleted/user",
    ],
    "/entity": [
        "entity.created/user",
        "entity.updated/user",
        "entity.created/task",
        "entity.deleted/user",
    ],
    "/updated": ["entity.updated/user"],
    "/custom": ["custom.order.paid", "custom.order.refunded"],
    "/paid": ["custom.order.paid"],
    "/tasks": ["entity.created/task"],
    "/task-or-user-deleted": ["entity.deleted/user"],
}


async def test_event_and_entity_type_filters_deliver_only_what_matches(
    hub: httpx.AsyncClient, receiver: Receiver
) -> None:
    subscriptions = {
        path: await subscribe(hub, receiver.url(path), events, entityTypes=entity_types)
        for path, (events, entity_types) in FILTERS.items()
    }
    await record(hub, "user", "u1", "online")
    await record(hub, "user", "u1", "busy")
    await record(hub, "task", "t1", "created")
    await publish(hub, "custom.order.paid", {"orderId": "o1"})
    await publish(hub, "custom.order.refunded", {"orderId": "o1"})
    deleted = await hub.delete("/api/v1/states/user/u1")
    assert deleted.status_code == 204

    # Every event is dispatched to every subscription at once, so once the
    # catch-all has them all, each log is complete.
    await receiver.wait_for(6, path="/all")
    for path, expected in EXPECTED.items():
        log = await settled_deliveries(hub, subscriptions[path]["id"], len(expected))
        assert len(log) == len(expected), path
        arrived = [
            request.payload["event"]
            + (
                f"/{request.payload['data']['entity']}"
                if "entity" in request.payload["data"]
                else ""
            )
            for request in receiver.at(path)
        ]
        assert sorted(arrived) == sorted(expected), path


async def test_a_subscription_receives_only_events_after_its_creation(
    hub: httpx.AsyncClient, receiver: Receiver
) -> None:
    before = await record(hub, "task", "t1", "created")
    await publish(hub, "custom.before")
    sub = await subscribe(hub, receiver.url())
    await record(hub, "task", "t1", "in_progress")
    await publish(hub, "custom.after")

    arrived = await receiver.wait_for(2)
    assert [r.payload["event"] for r in arrived] in (
        ["entity.updated", "custom.after"],
        ["custom.after", "entity.updated"],
    )
    log = await settled_deliveries(hub, sub["id"], 2)
    assert len(log) == 2
    assert before["version"] == 1
    assert all(r.payload["data"].get("version", 2) == 2 for r in arrived)
