"""The disable policy (docs/webhooks.md): a failure is a delivery that exhausted
its retries; a subscription is disabled only after WEBHOOK_MAX_CONSECUTIVE_FAILURES
of them in a row that lasted WEBHOOK_DISABLE_AFTER; a success resets both. The
operational events it raises, and what a disabled subscription misses."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.support.hub import (
    Json,
    all_changes,
    deliveries,
    in_process,
    record,
    settled_deliveries,
    subscribe,
    subscription,
    webhook_settings,
)
from tests.support.polling import eventually
from tests.support.receivers import Receiver, Reply
from tests.webhooks.conftest import StartReceiver

SUBSCRIPTIONS = "/api/v1/webhooks/subscriptions"
HubFor = Callable[..., Awaitable[httpx.AsyncClient]]


@pytest.fixture
async def hub_for(database_url: str, receiver: Receiver) -> AsyncIterator[HubFor]:
    """The service with one attempt per delivery (each failure exhausts it) and
    no circuit breaker in the way, plus the policy a test asks for."""
    async with AsyncExitStack() as stack:

        async def start(**policy: object) -> httpx.AsyncClient:
            settings = webhook_settings(
                database_url, max_retries=0, circuit_failures=1000, **policy
            )
            return await stack.enter_async_context(in_process(settings))

        yield start


async def fail_deliveries(client: httpx.AsyncClient, sub_id: str, count: int, start: int) -> None:
    for n in range(start, start + count):
        await record(client, "task", f"t{n}", "created")
    await settled_deliveries(client, sub_id, start + count)


def operational(changes: list[Json]) -> list[Json]:
    return [c for c in changes if c["event"].startswith("subscription.")]


async def test_failures_in_a_row_alone_do_not_disable_until_they_have_lasted(
    hub_for: HubFor, receiver: Receiver
) -> None:
    hub = await hub_for(max_consecutive_failures=3, disable_after=3000)
    receiver.answer(then=Reply(500))
    sub = await subscribe(hub, receiver.url())

    await fail_deliveries(hub, sub["id"], 5, start=0)
    status = await subscription(hub, sub["id"])
    # Five exhausted deliveries, more than the three allowed, but not for 3 s yet.
    assert status["status"] == "active"
    assert status["consecutiveFailures"] == 5
    failing_since = datetime.fromisoformat(status["failingSince"])

    async def lasted() -> bool:
        return datetime.now(UTC) >= failing_since + timedelta(milliseconds=3000)

    await eventually(lasted, timeout=10, what="the failures to have lasted 3 s")
    await fail_deliveries(hub, sub["id"], 1, start=5)
    status = await subscription(hub, sub["id"])
    assert status["status"] == "disabled"
    assert "6 deliveries in a row failed" in status["disabledReason"]


async def test_a_success_resets_the_count_and_the_duration(
    hub_for: HubFor, receiver: Receiver
) -> None:
    hub = await hub_for(max_consecutive_failures=3, disable_after=0)
    receiver.answer(Reply(500), Reply(500), then=Reply(200))
    sub = await subscribe(hub, receiver.url())

    await fail_deliveries(hub, sub["id"], 2, start=0)
    assert (await subscription(hub, sub["id"]))["consecutiveFailures"] == 2
    await record(hub, "task", "ok", "created")
    await settled_deliveries(hub, sub["id"], 3)
    status = await subscription(hub, sub["id"])
    assert (status["consecutiveFailures"], status["failingSince"]) == (0, None)

    receiver.answer(Reply(500), Reply(500), then=Reply(200))
    await fail_deliveries(hub, sub["id"], 2, start=3)
    # Two after the success: still below three, whatever came before it.
    assert (await subscription(hub, sub["id"]))["status"] == "active"


async def test_failing_and_disabled_events_then_missed_events_are_replayed(
    hub_for: HubFor, receiver: Receiver, start_receiver: StartReceiver
) -> None:
    hub = await hub_for(max_consecutive_failures=10, disable_after=0)
    watcher = await start_receiver()
    receiver.answer(then=Reply(500))
    sub = await subscribe(hub, receiver.url(), ["*"])
    monitor = await subscribe(hub, watcher.url(), ["subscription.*"])

    await fail_deliveries(hub, sub["id"], 10, start=0)

    async def disabled() -> Json | None:
        status = await subscription(hub, sub["id"])
        return status if status["status"] == "disabled" else None

    status = await eventually(disabled, what="the subscription to be disabled")
    assert status["consecutiveFailures"] == 10
    assert "10 deliveries in a row failed" in status["disabledReason"]

    # On the change feed, like custom events: at 50 % and 90 % of the policy,
    # then the disabling.
    async def three_notices() -> list[Json] | None:
        found = operational(await all_changes(hub))
        return found if len(found) == 3 else None

    notices = await eventually(three_notices, what="three operational events")
    assert [n["event"] for n in notices] == [
        "subscription.failing",
        "subscription.failing",
        "subscription.disabled",
    ]
    assert [n["data"].get("policyPercent") for n in notices] == [50, 90, None]
    assert [n["data"]["consecutiveFailures"] for n in notices] == [5, 9, 10]
    assert all(n["data"]["subscriptionId"] == sub["id"] for n in notices)
    assert "10 deliveries in a row" in notices[2]["data"]["reason"]
    # And on the watch stream.
    stream = await hub.get("/api/v1/watch", params={"after": 0, "timeout": 0})
    assert stream.text.count("event: subscription.failing") == 2
    assert stream.text.count("event: subscription.disabled") == 1
    # The subscriber that asked for them got them; `*` does not include them.
    arrived = await watcher.wait_for(3)
    assert [r.payload["event"] for r in arrived] == [n["event"] for n in notices]
    assert len(await deliveries(hub, monitor["id"])) == 3
    assert all(not d["event"].startswith("subscription.") for d in await deliveries(hub, sub["id"]))
    metrics = (await hub.get("/metrics")).text
    assert 'potok_webhook_subscription_events_total{event="subscription.failing"} 2.0' in metrics
    assert 'potok_webhook_subscription_events_total{event="subscription.disabled"} 1.0' in metrics

    # While disabled, its events are recorded as skipped, not sent.
    sent_before = len(receiver.requests)
    for entity_id, new_status in (("a", "created"), ("b", "created"), ("a", "in_progress")):
        await record(hub, "task", entity_id, new_status)
    log = await settled_deliveries(hub, sub["id"], 13)
    missed = [d for d in log if d["status"] == "skipped"]
    assert len(missed) == 3
    assert all(d["attempts"] == 0 for d in missed)
    assert len(receiver.requests) == sent_before

    refused = await hub.post(f"{SUBSCRIPTIONS}/{sub['id']}/replay", params={"missing": "true"})
    assert refused.status_code == 409, refused.text
    assert refused.json()["code"] == "subscription_disabled"

    receiver.answer(then=Reply(200))
    enabled = await hub.patch(f"{SUBSCRIPTIONS}/{sub['id']}", json={"active": True})
    assert enabled.status_code == 200, enabled.text
    await watcher.wait_for(4)
    assert watcher.requests[3].payload["event"] == "subscription.enabled"
    assert watcher.requests[3].payload["data"]["subscriptionId"] == sub["id"]

    replayed = await hub.post(f"{SUBSCRIPTIONS}/{sub['id']}/replay", params={"missing": "true"})
    assert replayed.status_code == 202, replayed.text
    assert replayed.json() == {
        "scheduled": 3,
        "fromRevision": missed[0]["revision"],
        "toRevision": missed[-1]["revision"],
    }
    resent = (await receiver.wait_for(sent_before + 3))[sent_before:]
    # Exactly the skipped ones, each entity's in revision order.
    assert sorted(r.event_id for r in resent) == sorted(d["eventId"] for d in missed)
    of_a = [r.payload["data"]["version"] for r in resent if r.payload["data"]["id"] == "a"]
    assert of_a == [1, 2]
    log = await settled_deliveries(hub, sub["id"], 13)
    assert [d["status"] for d in log[-3:]] == ["succeeded"] * 3
    assert [d["status"] for d in log[:10]] == ["failed"] * 10
    again = await hub.post(f"{SUBSCRIPTIONS}/{sub['id']}/replay", params={"missing": "true"})
    assert again.json() == {"scheduled": 0, "fromRevision": None, "toRevision": None}


async def test_replay_needs_exactly_one_source(hub_for: HubFor, receiver: Receiver) -> None:
    hub = await hub_for()
    sub = await subscribe(hub, receiver.url())
    replay = f"{SUBSCRIPTIONS}/{sub['id']}/replay"

    both = await hub.post(replay, params={"missing": "true"}, json={"fromRevision": 1})
    neither = await hub.post(replay)
    assert (both.status_code, neither.status_code) == (422, 422)
    assert both.json()["code"] == neither.json()["code"] == "invalid_replay"


async def test_only_named_operational_events_can_be_subscribed_to(
    hub_for: HubFor, receiver: Receiver
) -> None:
    hub = await hub_for()
    for events in (["subscription.failing", "subscription.enabled"], ["subscription.*"]):
        await subscribe(hub, receiver.url(), events)
    refused = await hub.post(
        SUBSCRIPTIONS, json={"url": receiver.url(), "events": ["subscription.created"]}
    )
    assert refused.status_code == 422


async def test_disabling_and_enabling_through_the_api_are_announced(
    hub_for: HubFor, receiver: Receiver
) -> None:
    hub = await hub_for()
    sub = await subscribe(hub, receiver.url())
    for active in (False, False, True):
        response = await hub.patch(f"{SUBSCRIPTIONS}/{sub['id']}", json={"active": active})
        assert response.status_code == 200

    notices = operational(await all_changes(hub))
    # The second PATCH changed nothing: no event.
    assert [n["event"] for n in notices] == ["subscription.disabled", "subscription.enabled"]
    assert notices[0]["data"] == {
        "subscriptionId": sub["id"],
        "url": receiver.url(),
        "reason": "disabled through the API",
    }


async def test_a_receiver_down_for_two_seconds_loses_nothing(
    database_url: str, receiver: Receiver
) -> None:
    """The deploy of a receiving service: it answers 503 for 2 s while 50 events
    arrive. With the default disable policy the subscription stays active, and
    once the receiver is back every event is delivered, in order per entity."""
    settings = webhook_settings(
        database_url, retry_delay=1000, max_retries=3, circuit_probe_delay=1000
    )
    receiver.answer(then=Reply(503))
    async with in_process(settings) as hub:
        sub = await subscribe(hub, receiver.url(), ["entity.*"])
        down_at = time.monotonic()
        for version in range(10):
            for entity in range(5):
                status = "created" if version == 0 else f"step_{version}"
                await record(hub, "job", f"j{entity}", status)
        assert time.monotonic() - down_at < 2.0
        await asyncio.sleep(max(0.0, 2.0 - (time.monotonic() - down_at)))
        receiver.default = Reply(200)

        log = await settled_deliveries(hub, sub["id"], 50, timeout=30)
        assert [item["status"] for item in log] == ["succeeded"] * 50
        assert (await subscription(hub, sub["id"]))["status"] == "active"

    # The last attempt of each event is the one that succeeded; per entity they
    # came in version order.
    last_attempt = {r.event_id: r for r in receiver.requests}
    assert len(last_attempt) == 50
    for entity in range(5):
        mine = [r for r in last_attempt.values() if r.payload["data"]["id"] == f"j{entity}"]
        mine.sort(key=lambda r: r.arrived)
        assert [r.payload["data"]["version"] for r in mine] == list(range(1, 11))
    assert any(r.arrived - down_at < 2.0 for r in receiver.requests)  # it was tried while down
