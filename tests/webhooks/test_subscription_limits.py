"""Per-subscription `rateLimit`, `timeoutMs` and `maxAttempts`, and redirects
(a 3xx is a failure and is never followed) (docs/webhooks.md)."""

from __future__ import annotations

import httpx

from tests.support.hub import record, settled_deliveries, subscribe
from tests.support.receivers import Receiver, Reply
from tests.webhooks.conftest import StartReceiver

SUBSCRIPTIONS = "/api/v1/webhooks/subscriptions"


async def test_max_attempts_overrides_the_retries(
    hub: httpx.AsyncClient, receiver: Receiver
) -> None:
    receiver.answer(then=Reply(500))
    sub = await subscribe(hub, receiver.url(), maxAttempts=2)
    assert sub["maxAttempts"] == 2
    await record(hub, "task", "t1", "created")

    [delivery] = await settled_deliveries(hub, sub["id"], 1)
    assert (delivery["status"], delivery["attempts"]) == ("failed", 2)
    assert len(receiver.requests) == 2


async def test_timeout_ms_overrides_the_delivery_timeout(
    hub: httpx.AsyncClient, receiver: Receiver
) -> None:
    receiver.answer(receiver.hang())
    sub = await subscribe(hub, receiver.url(), timeoutMs=200, maxAttempts=1)
    await record(hub, "task", "t1", "created")

    [delivery] = await settled_deliveries(hub, sub["id"], 1)
    [attempt] = delivery["attemptLog"]
    assert attempt["error"] == "timed out after 0.2 s"
    # WEBHOOK_DELIVERY_TIMEOUT is 1 s in these tests.
    assert 190 <= attempt["durationMs"] < 900

    too_long = await hub.patch(f"{SUBSCRIPTIONS}/{sub['id']}", json={"timeoutMs": 5000})
    assert too_long.status_code == 422
    assert too_long.json()["code"] == "invalid_subscription_limit"
    cleared = await hub.patch(f"{SUBSCRIPTIONS}/{sub['id']}", json={"timeoutMs": None})
    assert cleared.json()["timeoutMs"] is None


async def test_rate_limit_spreads_deliveries_without_slowing_others(
    hub: httpx.AsyncClient, receiver: Receiver, start_receiver: StartReceiver
) -> None:
    other = await start_receiver()
    limited = await subscribe(hub, receiver.url(), rateLimit=5)
    free = await subscribe(hub, other.url())
    for n in range(15):
        await record(hub, "task", f"t{n}", "created")

    unlimited = await other.wait_for(15)
    arrivals = [r.arrived for r in await receiver.wait_for(15, timeout=15)]
    # At most a burst of one second's worth (5), then 5 a second: in any stretch
    # of t seconds no more than 5 + 5t (the last ≥ 2 s after the first).
    assert arrivals[-1] - arrivals[0] >= 1.9
    for i, first in enumerate(arrivals):
        for j in range(i, len(arrivals)):
            assert j - i + 1 <= 5 + 5 * (arrivals[j] - first) + 0.5, (i, j, arrivals)
    assert unlimited[-1].arrived - unlimited[0].arrived < 1.0
    log = await settled_deliveries(hub, limited["id"], 15)
    assert all(d["status"] == "succeeded" and d["attempts"] == 1 for d in log)
    assert len(await settled_deliveries(hub, free["id"], 15)) == 15


async def test_a_redirect_is_a_failure_and_is_not_followed(
    hub: httpx.AsyncClient, receiver: Receiver
) -> None:
    receiver.answer(then=Reply(302, headers={"Location": receiver.url("/elsewhere")}))
    sub = await subscribe(hub, receiver.url("/hook"), maxAttempts=1)
    await record(hub, "task", "t1", "created")

    [delivery] = await settled_deliveries(hub, sub["id"], 1)
    assert (delivery["status"], delivery["lastStatusCode"]) == ("failed", 302)
    assert receiver.at("/elsewhere") == []


async def test_limits_are_checked(hub: httpx.AsyncClient, receiver: Receiver) -> None:
    for bad in ({"rateLimit": 0}, {"timeoutMs": 10}, {"maxAttempts": 0}, {"maxAttempts": 22}):
        response = await hub.post(
            SUBSCRIPTIONS, json={"url": receiver.url(), "events": ["*"], **bad}
        )
        assert response.status_code == 422, bad
