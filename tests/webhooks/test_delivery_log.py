"""The delivery log, manual retry, replay and the test ping (docs/data-model.md)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone

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
from tests.support.polling import eventually
from tests.support.receivers import Receiver, Reply
from tests.webhooks.test_signing import PLAIN_SECRET, assert_delivery_headers


@pytest.fixture
async def no_retries(database_url: str, receiver: Receiver) -> AsyncIterator[httpx.AsyncClient]:
    async with in_process(webhook_settings(database_url, max_retries=0)) as client:
        yield client


async def test_the_log_shows_each_attempt_and_a_failed_delivery_can_be_retried(
    no_retries: httpx.AsyncClient, receiver: Receiver
) -> None:
    hub = no_retries
    receiver.answer(Reply(500))
    sub = await subscribe(hub, receiver.url(), secret=PLAIN_SECRET)
    state = await record(hub, "task", "t1", "created")

    [failed] = await settled_deliveries(hub, sub["id"], 1)
    assert failed["status"] == "failed"
    assert failed["subscriptionId"] == sub["id"]
    assert failed["event"] == "entity.created"
    assert failed["eventId"] == receiver.requests[0].event_id
    assert failed["revision"] == state["revision"]
    assert failed["nextAttemptAt"] is None
    [attempt] = failed["attemptLog"]
    assert attempt["statusCode"] == 500
    assert attempt["error"].startswith("HTTP 500")
    assert attempt["durationMs"] >= 0
    assert datetime.fromisoformat(attempt["startedAt"]) <= datetime.fromisoformat(
        failed["updatedAt"]
    )

    retried = await hub.post(f"/api/v1/webhooks/deliveries/{failed['id']}/retry")
    assert retried.status_code == 200, retried.text
    assert retried.json()["id"] == failed["id"]

    async def delivered() -> bool:
        [item] = await settled_deliveries(hub, sub["id"], 1)
        return bool(item["status"] == "succeeded")

    await eventually(delivered, what="the retried delivery to succeed")
    [done] = await settled_deliveries(hub, sub["id"], 1)
    assert [a["statusCode"] for a in done["attemptLog"]] == [500, 200]
    assert [a["attempt"] for a in done["attemptLog"]] == [1, 2]
    first, second = receiver.requests
    assert second.event_id == first.event_id
    assert second.body == first.body
    assert (first.attempt, second.attempt) == (1, 2)
    assert_delivery_headers(second, PLAIN_SECRET)

    again = await hub.post(f"/api/v1/webhooks/deliveries/{failed['id']}/retry")
    assert again.status_code == 409
    assert again.json()["code"] == "delivery_not_failed"
    missing = await hub.post("/api/v1/webhooks/deliveries/999999/retry")
    assert missing.status_code == 404
    assert missing.json()["code"] == "delivery_not_found"


async def test_pending_deliveries_cannot_be_retried(
    hub: httpx.AsyncClient, receiver: Receiver
) -> None:
    receiver.answer(receiver.hang())
    sub = await subscribe(hub, receiver.url())
    await record(hub, "task", "t1", "created")
    await receiver.wait_for(1)
    [pending] = (await hub.get(f"/api/v1/webhooks/subscriptions/{sub['id']}/deliveries")).json()[
        "items"
    ]
    assert pending["status"] == "pending"
    response = await hub.post(f"/api/v1/webhooks/deliveries/{pending['id']}/retry")
    assert response.status_code == 409
    assert response.json()["details"]["status"] == "pending"


async def test_the_log_pages_newest_first(hub: httpx.AsyncClient, receiver: Receiver) -> None:
    sub = await subscribe(hub, receiver.url())
    for n in range(5):
        await publish(hub, "custom.page", {"n": n})
    await settled_deliveries(hub, sub["id"], 5)
    url = f"/api/v1/webhooks/subscriptions/{sub['id']}/deliveries"
    first = (await hub.get(url, params={"limit": 3})).json()
    assert len(first["items"]) == 3
    second = (await hub.get(url, params={"limit": 3, "before": first["nextCursor"]})).json()
    assert second["nextCursor"] is None
    revisions = [d["revision"] for d in first["items"] + second["items"]]
    assert revisions == sorted(revisions, reverse=True)
    assert len(set(revisions)) == 5


async def test_replay_from_a_revision_and_since_a_time(
    hub: httpx.AsyncClient, receiver: Receiver
) -> None:
    await publish(hub, "custom.before-subscribing")
    sub = await subscribe(hub, receiver.url(), ["custom.*"])
    published = [await publish(hub, "custom.replayed", {"n": n}) for n in range(3)]
    await record(hub, "task", "not-matched", "created")
    originals = await receiver.wait_for(3)
    await settled_deliveries(hub, sub["id"], 3)
    replay = f"/api/v1/webhooks/subscriptions/{sub['id']}/replay"

    response = await hub.post(replay, json={"fromRevision": published[1]["revision"]})
    assert response.status_code == 202, response.text
    assert response.json()["scheduled"] == 2
    assert response.json()["fromRevision"] == published[1]["revision"]
    again = await receiver.wait_for(5)
    assert [r.event_id for r in again[3:]] == [p["id"] for p in published[1:]]
    by_id = {r.event_id: r.body for r in originals}
    assert all(by_id[r.event_id] == r.body for r in again[3:])

    # `since` reaches before the subscription existed: replay re-sends what it
    # matches from then on, including the event before it subscribed.
    response = await hub.post(replay, json={"since": "2000-01-01T00:00:00Z"})
    assert response.status_code == 202, response.text
    assert response.json()["scheduled"] == 4
    replayed = (await receiver.wait_for(9))[5:]
    assert sorted(r.payload["event"] for r in replayed) == [
        "custom.before-subscribing",
        *["custom.replayed"] * 3,
    ]
    since_last = await hub.post(replay, json={"since": published[2]["timestamp"]})
    assert since_last.json()["scheduled"] >= 1
    await settled_deliveries(hub, sub["id"], 9 + since_last.json()["scheduled"])

    # The same instant in another offset means the same thing (on SQLite too).
    last = datetime.fromisoformat(published[2]["timestamp"].replace("Z", "+00:00"))
    east = timezone(timedelta(hours=5))
    west = timezone(timedelta(hours=-5))
    for since, scheduled in (
        ((last - timedelta(minutes=30)).astimezone(east), 4),
        ((last + timedelta(minutes=30)).astimezone(west), 0),
    ):
        response = await hub.post(replay, json={"since": since.isoformat()})
        assert response.json()["scheduled"] == scheduled, since
    await settled_deliveries(hub, sub["id"], 13 + since_last.json()["scheduled"])

    for body in ({}, {"fromRevision": 1, "since": "2000-01-01T00:00:00Z"}, {"fromRevision": -1}):
        assert (await hub.post(replay, json=body)).status_code == 422, body


@pytest.fixture
async def replay_max_3(database_url: str, receiver: Receiver) -> AsyncIterator[httpx.AsyncClient]:
    async with in_process(webhook_settings(database_url, replay_max=3)) as client:
        yield client


async def test_a_replay_over_webhook_replay_max_is_refused_whole(
    replay_max_3: httpx.AsyncClient, receiver: Receiver
) -> None:
    hub = replay_max_3
    sub = await subscribe(hub, receiver.url(), ["custom.*"])
    published = [await publish(hub, "custom.counted", {"n": n}) for n in range(5)]
    unmatched = await record(hub, "task", "not-matched", "created")
    await settled_deliveries(hub, sub["id"], 5)
    replay = f"/api/v1/webhooks/subscriptions/{sub['id']}/replay"
    revisions = [event["revision"] for event in published]

    refused = await hub.post(replay, json={"fromRevision": revisions[0]})
    assert refused.status_code == 422, refused.text
    assert refused.json()["code"] == "replay_too_large"
    assert refused.json()["details"] == {
        "count": 5,
        "countIsAtLeast": False,
        "limit": 3,
        "lastRevisionWithinLimit": revisions[2],
    }
    assert "would queue 5 deliveries" in refused.json()["message"]
    # Nothing was queued: the log still holds the five first deliveries only.
    assert len(await settled_deliveries(hub, sub["id"], 5)) == 5

    # In parts that fit, as the answer suggests: up to a revision, then on.
    first = await hub.post(replay, json={"fromRevision": revisions[0], "toRevision": revisions[2]})
    assert first.status_code == 202, first.text
    assert first.json() == {
        "scheduled": 3,
        "fromRevision": revisions[0],
        "toRevision": revisions[2],
    }
    rest = await hub.post(replay, json={"fromRevision": revisions[2] + 1})
    assert rest.status_code == 202, rest.text
    assert rest.json() == {
        "scheduled": 2,
        "fromRevision": revisions[3],
        "toRevision": unmatched["revision"],
    }
    replayed = (await receiver.wait_for(10))[5:]
    assert sorted(r.payload["revision"] for r in replayed) == revisions


async def test_the_ping_is_sent_now_and_reports_the_answer(
    hub: httpx.AsyncClient, receiver: Receiver
) -> None:
    sub = await subscribe(hub, receiver.url(), ["custom.*"], secret=PLAIN_SECRET)
    ping = await hub.post(f"/api/v1/webhooks/subscriptions/{sub['id']}/test")
    assert ping.status_code == 200, ping.text
    assert ping.json()["succeeded"] is True
    assert ping.json()["statusCode"] == 200
    assert ping.json()["error"] is None
    [request] = receiver.requests
    assert request.payload["event"] == "webhook.test"
    assert request.payload["data"] == {"subscriptionId": sub["id"]}
    assert_delivery_headers(request, PLAIN_SECRET)

    receiver.answer(Reply(503))
    failing = await hub.post(f"/api/v1/webhooks/subscriptions/{sub['id']}/test")
    assert failing.json()["succeeded"] is False
    assert failing.json()["statusCode"] == 503
    assert failing.json()["error"].startswith("HTTP 503")
