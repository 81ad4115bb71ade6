"""Delivery rules: retries with exponential backoff, timeouts, Retry-After, 410
and re-enabling (docs/webhooks.md; the disable policy and the circuit breaker
have their own test files)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from datetime import datetime

import httpx
import pytest

from tests.support.hub import (
    Json,
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

BASE_MS = 50


def spacing(arrivals: list[float]) -> list[float]:
    return [later - earlier for earlier, later in itertools.pairwise(arrivals)]


async def test_a_failing_receiver_gets_one_attempt_plus_the_retries_with_backoff(
    hub: httpx.AsyncClient, receiver: Receiver
) -> None:
    receiver.answer(then=Reply(500))
    sub = await subscribe(hub, receiver.url())
    await record(hub, "task", "t1", "created")

    [delivery] = await settled_deliveries(hub, sub["id"], 1)
    attempts = receiver.requests
    assert len(attempts) == 1 + 3  # WEBHOOK_MAX_RETRIES in FAST_WEBHOOKS
    assert [a.attempt for a in attempts] == [1, 2, 3, 4]
    assert len({a.event_id for a in attempts}) == 1
    assert len({a.body for a in attempts}) == 1
    assert {a.headers["x-webhook-id"] for a in attempts} == {attempts[0].event_id}
    assert delivery["status"] == "failed"
    assert delivery["attempts"] == 4
    assert delivery["lastStatusCode"] == 500
    log = delivery["attemptLog"]
    assert [a["attempt"] for a in log] == [1, 2, 3, 4]
    assert all(a["statusCode"] == 500 and not a["succeeded"] for a in log)
    assert all(a["error"].startswith("HTTP 500") for a in log)
    assert all(a["durationMs"] >= 0 for a in log)
    # Attempts start base, 2×base, 4×base apart (lower bounds; times are in ms).
    starts = [datetime.fromisoformat(a["startedAt"]).timestamp() for a in log]
    gaps = spacing(starts)
    for gap, factor in zip(gaps, (1, 2, 4), strict=True):
        assert gap >= BASE_MS * factor / 1000 - 0.002, gaps
    status = await subscription(hub, sub["id"])
    # One delivery exhausted its retries: one failure for the disable policy.
    assert status["consecutiveFailures"] == 1
    assert status["failingSince"] is not None
    assert status["status"] == "active"
    assert status["lastError"].startswith("HTTP 500")


async def test_a_retry_that_succeeds_resets_the_failure_count(
    hub: httpx.AsyncClient, receiver: Receiver
) -> None:
    receiver.answer(Reply(500), Reply(502))
    sub = await subscribe(hub, receiver.url())
    await record(hub, "task", "t1", "created")

    [delivery] = await settled_deliveries(hub, sub["id"], 1)
    assert delivery["status"] == "succeeded"
    assert [a["statusCode"] for a in delivery["attemptLog"]] == [500, 502, 200]
    assert [r.attempt for r in receiver.requests] == [1, 2, 3]
    status = await subscription(hub, sub["id"])
    assert status["consecutiveFailures"] == 0
    assert status["failingSince"] is None
    assert status["lastError"] is None
    assert status["lastDeliveryAt"] is not None


@pytest.fixture
async def patient_hub(database_url: str, receiver: Receiver) -> AsyncIterator[httpx.AsyncClient]:
    """Short attempt timeout, one retry."""
    settings = webhook_settings(database_url, delivery_timeout=300, max_retries=1)
    async with in_process(settings) as client:
        yield client


async def test_a_hanging_receiver_times_out_and_is_retried(
    patient_hub: httpx.AsyncClient, receiver: Receiver
) -> None:
    receiver.answer(receiver.hang(), receiver.hang())
    sub = await subscribe(patient_hub, receiver.url())
    await record(patient_hub, "task", "t1", "created")

    [delivery] = await settled_deliveries(patient_hub, sub["id"], 1)
    assert delivery["status"] == "failed"
    assert len(delivery["attemptLog"]) == 2
    for attempt in delivery["attemptLog"]:
        assert attempt["statusCode"] is None
        assert "timed out" in attempt["error"]
        assert attempt["durationMs"] >= 290
    assert [r.attempt for r in receiver.requests] == [1, 2]


async def test_retry_after_on_429_and_503_is_honoured(
    hub: httpx.AsyncClient, receiver: Receiver
) -> None:
    receiver.answer(
        Reply(429, headers={"Retry-After": "1"}), Reply(503, headers={"Retry-After": "1"})
    )
    sub = await subscribe(hub, receiver.url())
    await record(hub, "task", "t1", "created")

    [delivery] = await settled_deliveries(hub, sub["id"], 1)
    assert delivery["status"] == "succeeded"
    assert [a["statusCode"] for a in delivery["attemptLog"]] == [429, 503, 200]
    # Without Retry-After the gaps would be 50 and 100 ms.
    assert all(gap >= 0.99 for gap in spacing([r.arrived for r in receiver.requests]))


async def test_410_disables_the_subscription_at_once(
    hub: httpx.AsyncClient, receiver: Receiver
) -> None:
    gone = asyncio.Event()
    receiver.answer(Reply(410, gate=gone), then=Reply(200))
    sub = await subscribe(hub, receiver.url())
    # One entity: its later events wait behind the first (revision order).
    for status in ("created", "in_progress", "completed"):
        await record(hub, "task", "t1", status)
    await receiver.wait_for(1)

    async def queued() -> bool:
        return len(await deliveries(hub, sub["id"])) == 3

    await eventually(queued, what="three queued deliveries")
    gone.set()

    log = await settled_deliveries(hub, sub["id"], 3)
    # What it still had queued was not sent: skipped (replay?missing=true sends it).
    assert [d["status"] for d in log] == ["failed", "skipped", "skipped"]
    assert log[0]["lastStatusCode"] == 410
    assert log[0]["attempts"] == 1
    assert [d["attempts"] for d in log[1:]] == [0, 0]
    assert all("disabled" in d["lastError"] for d in log[1:])
    disabled = await subscription(hub, sub["id"])
    assert disabled["status"] == "disabled"
    assert "410" in disabled["disabledReason"]
    assert len(receiver.requests) == 1


async def test_active_true_re_enables_a_disabled_subscription(
    hub: httpx.AsyncClient, receiver: Receiver
) -> None:
    receiver.answer(Reply(410))
    sub = await subscribe(hub, receiver.url())
    await record(hub, "task", "t1", "created")
    await settled_deliveries(hub, sub["id"], 1)
    assert (await subscription(hub, sub["id"]))["status"] == "disabled"

    patched = await hub.patch(f"/api/v1/webhooks/subscriptions/{sub['id']}", json={"active": True})
    assert patched.status_code == 200, patched.text
    assert patched.json()["status"] == "active"
    assert patched.json()["consecutiveFailures"] == 0
    assert patched.json()["failingSince"] is None
    assert patched.json()["disabledReason"] is None

    await record(hub, "task", "t2", "created")
    later = await receiver.wait_for(2)
    assert later[-1].payload["data"]["id"] == "t2"
    log = await settled_deliveries(hub, sub["id"], 2)
    assert log[-1]["status"] == "succeeded"


async def test_410_stops_attempts_already_in_flight_for_other_entities(
    hub: httpx.AsyncClient, receiver: Receiver
) -> None:
    gone, failing = asyncio.Event(), asyncio.Event()
    receiver.answer(Reply(410, gate=gone), Reply(500, gate=failing), then=Reply(200))
    sub = await subscribe(hub, receiver.url())
    await record(hub, "task", "a", "created")
    await record(hub, "task", "b", "created")
    await receiver.wait_for(2)  # both in flight at once

    gone.set()

    async def disabled() -> bool:
        return bool((await subscription(hub, sub["id"]))["status"] == "disabled")

    await eventually(disabled, what="the subscription to be disabled")
    failing.set()

    async def answered() -> list[Json] | None:
        log = await settled_deliveries(hub, sub["id"], 2)
        return log if all(d["attempts"] == 1 for d in log) else None

    log = await eventually(answered, what="both attempts recorded")
    # The 500 came back after the 410 disabled the subscription: no retry; it
    # did not exhaust its retries, so it is skipped (replay?missing=true).
    by_code = {d["lastStatusCode"]: d["status"] for d in log}
    assert by_code == {410: "failed", 500: "skipped"}
    assert len(receiver.requests) == 2
