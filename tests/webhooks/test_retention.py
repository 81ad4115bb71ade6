"""Retention (docs/operations.md, "Retention"): succeeded deliveries, their
attempts, the outbox and expired idempotency keys are pruned in the background;
history only when HISTORY_RETENTION is set; pruned revisions answer 410."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from tests.conftest import asyncpg_dsn, make_settings
from tests.support.hub import (
    FAST_WEBHOOKS,
    Json,
    deliveries,
    in_process,
    record,
    subscribe,
)
from tests.support.polling import eventually
from tests.support.receivers import Receiver, Reply
from tests.webhooks.conftest import StartReceiver

PRUNE_AT_ONCE: dict[str, object] = {
    "deliveries_ttl": 0,
    "outbox_ttl": 0,
    "delay": 20,
    "batch": 2,  # several batches per round
}


async def count_rows(database_url: str, table: str) -> int:
    if database_url.startswith("sqlite"):
        with sqlite3.connect(database_url.split("///", 1)[1]) as connection:
            return int(connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        return int(await connection.fetchval(f"SELECT count(*) FROM {table}"))
    finally:
        await connection.close()


@pytest.fixture
async def pruning_hub(database_url: str, receiver: Receiver) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(
        database_url, webhooks=FAST_WEBHOOKS, retention=PRUNE_AT_ONCE, idempotency_ttl=1
    )
    async with in_process(settings) as client:
        yield client


async def test_delivered_work_is_pruned_and_old_revisions_answer_410(
    pruning_hub: httpx.AsyncClient, receiver: Receiver, database_url: str
) -> None:
    hub = pruning_hub
    sub = await subscribe(hub, receiver.url())
    for entity_id, status in (("a", "created"), ("b", "created"), ("a", "in_progress")):
        await record(hub, "task", entity_id, status)
    response = await hub.post(
        "/api/v1/states/task",
        json={"entityId": "c", "status": "created"},
        headers={"Idempotency-Key": "k1"},
    )
    assert response.status_code == 201
    await receiver.wait_for(4)

    async def pruned() -> bool:
        return (
            not await deliveries(hub, sub["id"])
            and (await hub.get("/api/v1/changes", params={"after": 0})).status_code == 410
        )

    await eventually(pruned, what="deliveries and the change feed to be pruned")
    assert await count_rows(database_url, "webhook_attempts") == 0

    gone = await hub.get("/api/v1/changes", params={"after": 0})
    assert gone.json()["code"] == "revision_pruned"
    assert gone.json()["details"]["revision"] == 4
    latest = await hub.get("/api/v1/changes", params={"after": 4})
    assert latest.status_code == 200
    assert latest.json() == {"items": [], "nextAfter": 4}
    replay = await hub.post(
        f"/api/v1/webhooks/subscriptions/{sub['id']}/replay", json={"fromRevision": 1}
    )
    assert replay.status_code == 410, replay.text
    assert replay.json()["code"] == "revision_pruned"
    # History is kept without HISTORY_RETENTION.
    history = await hub.get("/api/v1/states/task/a/history")
    assert [item["newStatus"] for item in history.json()["items"]] == ["created", "in_progress"]

    async def keys_expired() -> bool:
        return await count_rows(database_url, "idempotency_keys") == 0

    await eventually(keys_expired, timeout=10, what="the idempotency key to expire")


async def test_events_still_to_be_delivered_are_kept(
    database_url: str, receiver: Receiver, start_receiver: StartReceiver
) -> None:
    healthy = await start_receiver()
    receiver.answer(then=Reply(500))
    settings = make_settings(
        database_url,
        webhooks={**FAST_WEBHOOKS, "retry_delay": 60_000},
        retention=PRUNE_AT_ONCE,
    )
    async with in_process(settings) as hub:
        waiting = await subscribe(hub, receiver.url())
        done = await subscribe(hub, healthy.url())
        await record(hub, "task", "t1", "created")
        await receiver.wait_for(1)
        await healthy.wait_for(1)

        async def done_pruned() -> bool:
            return not await deliveries(hub, done["id"])

        await eventually(done_pruned, what="the succeeded delivery to be pruned")
        [pending] = await deliveries(hub, waiting["id"])
        assert pending["status"] == "pending"
        changes = await hub.get("/api/v1/changes", params={"after": 0})
        assert changes.status_code == 200
        assert [item["revision"] for item in changes.json()["items"]] == [1]


async def test_history_retention_prunes_history(database_url: str) -> None:
    settings = make_settings(database_url, retention={**PRUNE_AT_ONCE, "history_ttl": 0})
    async with in_process(settings) as hub:
        await record(hub, "task", "t1", "created")
        await record(hub, "task", "t1", "in_progress")

        async def history_gone() -> bool:
            response = await hub.get("/api/v1/states/task/t1/history")
            # A state whose every history row was pruned shows an empty history.
            assert response.status_code == 200, response.text
            return bool(response.json()["items"] == [])

        await eventually(history_gone, what="the history to be pruned")
        state = await hub.get("/api/v1/states/task/t1")
        assert state.json()["status"] == "in_progress"
        assert await count_rows(database_url, "state_history") == 0


async def test_deliveries_whose_events_are_pruned_go_too(
    pruning_hub: httpx.AsyncClient, receiver: Receiver
) -> None:
    hub = pruning_hub
    sub = await subscribe(hub, receiver.url())
    paused = await hub.patch(f"/api/v1/webhooks/subscriptions/{sub['id']}", json={"active": False})
    assert paused.status_code == 200
    await record(hub, "task", "t1", "created")

    async def pruned() -> bool:
        changes = await hub.get("/api/v1/changes", params={"after": 0})
        return changes.status_code == 410 and not await deliveries(hub, sub["id"])

    # Skipped while paused; once its event is pruned it could never be sent: gone.
    await eventually(pruned, what="the event and its skipped delivery to be pruned")
    assert receiver.requests == []


@pytest.fixture
async def feed_pruning_hub(
    database_url: str, receiver: Receiver
) -> AsyncIterator[httpx.AsyncClient]:
    """Prunes the change feed at once, but keeps deliveries for an hour."""
    retention = {**PRUNE_AT_ONCE, "deliveries_ttl": 3600}
    settings = make_settings(database_url, webhooks=FAST_WEBHOOKS, retention=retention)
    async with in_process(settings) as client:
        yield client


async def test_a_paused_subscription_does_not_hold_the_feed(
    feed_pruning_hub: httpx.AsyncClient, receiver: Receiver
) -> None:
    hub = feed_pruning_hub
    receiver.answer(Reply(503, headers={"Retry-After": "1"}))
    sub = await subscribe(hub, receiver.url())
    await record(hub, "task", "t1", "created")
    await receiver.wait_for(1)

    async def waiting_for_retry() -> bool:
        [delivery] = await deliveries(hub, sub["id"])
        return bool(delivery["attempts"] == 1 and delivery["status"] == "pending")

    await eventually(waiting_for_retry, what="the first attempt to be recorded")
    await hub.patch(f"/api/v1/webhooks/subscriptions/{sub['id']}", json={"active": False})

    async def feed_pruned() -> bool:
        return (await hub.get("/api/v1/changes", params={"after": 0})).status_code == 410

    await eventually(feed_pruned, what="the event to be pruned despite the paused delivery")
    await hub.patch(f"/api/v1/webhooks/subscriptions/{sub['id']}", json={"active": True})

    async def failed() -> Json | None:
        log = await deliveries(hub, sub["id"])
        return log[0] if log and log[0]["status"] == "failed" else None

    delivery = await eventually(failed, what="the delivery to fail: its event is gone")
    assert "no longer kept" in delivery["lastError"]
    assert len(receiver.requests) == 1
