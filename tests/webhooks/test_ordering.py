"""Events of one entity reach a subscriber in revision order, whatever another
subscriber does (docs/guarantees.md, "Webhook delivery")."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.support.hub import (
    deliveries,
    in_process,
    record,
    settled_deliveries,
    subscribe,
    webhook_settings,
)
from tests.support.receivers import Receiver, Reply
from tests.webhooks.conftest import StartReceiver

UPDATES = 100


@pytest.fixture
async def receivers(start_receiver: StartReceiver) -> tuple[Receiver, Receiver]:
    return await start_receiver(), await start_receiver()


@pytest.fixture
async def ordered_hub(
    database_url: str, receivers: tuple[Receiver, Receiver]
) -> AsyncIterator[httpx.AsyncClient]:
    settings = webhook_settings(database_url, delivery_timeout=250, max_retries=1)
    async with in_process(settings) as client:
        yield client


async def test_one_entity_arrives_in_revision_order_while_another_receiver_hangs(
    ordered_hub: httpx.AsyncClient, receivers: tuple[Receiver, Receiver]
) -> None:
    hub = ordered_hub
    steady, stuck = receivers
    stuck.answer(then=stuck.hang())
    # A few failures on the way: a retried event still holds back the later ones.
    steady.answer(*[Reply(200)] * 10, Reply(500), *[Reply(200)] * 40, Reply(503))
    steady_sub = await subscribe(hub, steady.url())
    stuck_sub = await subscribe(hub, stuck.url())

    await record(hub, "user", "u1", "online", metadata={"n": 0})
    for n in range(1, UPDATES):
        response = await hub.patch(
            "/api/v1/states/user/u1",
            json={"status": "busy" if n % 2 else "online", "metadata": {"n": n}},
        )
        assert response.status_code == 200, response.text

    arrived = await steady.wait_for(UPDATES + 2, timeout=30)
    # Never out of order; a failed event is retried before the next one goes.
    revisions = [r.payload["revision"] for r in arrived]
    assert revisions == sorted(revisions)
    assert len(set(revisions)) == UPDATES
    versions = [r.payload["data"]["version"] for r in arrived]
    assert list(dict.fromkeys(versions)) == list(range(1, UPDATES + 1))
    assert [r.payload["data"]["metadata"]["n"] for r in arrived][-1] == UPDATES - 1
    assert [r.attempt for r in arrived].count(2) == 2
    steady_log = await settled_deliveries(hub, steady_sub["id"], UPDATES)
    assert all(d["status"] == "succeeded" for d in steady_log)

    # Meanwhile the stuck receiver got the same entity one attempt at a time.
    stuck_log = await deliveries(hub, stuck_sub["id"])
    timed_out = [a for d in stuck_log for a in d["attemptLog"]]
    assert timed_out, "the stuck receiver was attempted"
    assert all("timed out" in a["error"] for a in timed_out)
    stuck_revisions = [r.payload["revision"] for r in stuck.requests]
    assert stuck_revisions == sorted(stuck_revisions)
    assert len(stuck.requests) < len(arrived)
