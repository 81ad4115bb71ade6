"""The circuit breaker (docs/webhooks.md): a subscription whose receiver keeps
failing holds its deliveries without burning their attempts, tests the
receiver with one probe per growing interval, and resumes on a success; other
subscriptions are not slowed by it."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

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
from tests.webhooks.conftest import StartReceiver

PROBE_MS = 200
MAX_PROBE_MS = 800
HELD = 5


@pytest.fixture
async def breaker_hub(database_url: str, receiver: Receiver) -> AsyncIterator[httpx.AsyncClient]:
    """Three failed attempts open a circuit; probes 200, 400, 800 ms apart;
    plenty of quick retries and no disabling."""
    settings = webhook_settings(
        database_url,
        circuit_failures=3,
        circuit_probe_delay=PROBE_MS,
        circuit_max_probe_delay=MAX_PROBE_MS,
        max_retries=20,
        retry_delay=10,
        max_consecutive_failures=1000,
    )
    async with in_process(settings) as client:
        yield client


async def test_an_open_circuit_holds_deliveries_probes_and_resumes(
    breaker_hub: httpx.AsyncClient, receiver: Receiver, start_receiver: StartReceiver
) -> None:
    hub = breaker_hub
    healthy = await start_receiver()
    receiver.answer(then=Reply(500))
    failing = await subscribe(hub, receiver.url(), entityTypes=["task"])
    other = await subscribe(hub, healthy.url(), entityTypes=["user"])
    # One entity: one attempt in flight at a time, so none is under way when
    # the third failure opens the circuit.
    for new_status in ("created", "in_progress", "failed", "in_progress", "completed"):
        await record(hub, "task", "t1", new_status)

    async def opened() -> Json | None:
        status = await subscription(hub, failing["id"])
        return status if status["circuitOpenUntil"] is not None else None

    await eventually(opened, what="the circuit to open")
    # Three failed attempts opened it; from then on only probes go, ever further apart.
    requests = await receiver.wait_for(3 + 3, timeout=15)
    gaps = [b.arrived - a.arrived for a, b in itertools.pairwise(requests[2:])]
    assert gaps[0] >= PROBE_MS / 1000 - 0.01, gaps
    assert gaps[1] >= 2 * PROBE_MS / 1000 - 0.01, gaps
    assert gaps[2] >= MAX_PROBE_MS / 1000 - 0.01, gaps
    assert {r.payload["data"]["version"] for r in requests} == {1}

    # The held deliveries burnt no attempts meanwhile: the probes were the first one's.
    log = await deliveries(hub, failing["id"])
    assert all(d["status"] == "pending" for d in log)
    assert [d["attempts"] for d in log[1:]] == [0] * (HELD - 1)

    # Another subscription is not held by it.
    for n in range(3):
        await record(hub, "user", f"u{n}", "online")
    assert len(await settled_deliveries(hub, other["id"], 3)) == 3
    assert all(d["attempts"] == 1 for d in await deliveries(hub, other["id"]))

    receiver.answer(then=Reply(200))
    log = await settled_deliveries(hub, failing["id"], HELD, timeout=15)
    assert [d["status"] for d in log] == ["succeeded"] * HELD
    status = await subscription(hub, failing["id"])
    assert (status["circuitOpenUntil"], status["consecutiveFailures"]) == (None, 0)
    metrics = (await hub.get("/metrics")).text
    assert "potok_webhook_circuits_opened_total 1.0" in metrics


async def test_two_workers_probe_an_open_circuit_one_at_a_time(
    database_url: str, receiver: Receiver
) -> None:
    settings = webhook_settings(
        database_url,
        circuit_failures=3,
        circuit_probe_delay=PROBE_MS,
        circuit_max_probe_delay=PROBE_MS,
        max_retries=20,
        retry_delay=10,
        max_consecutive_failures=1000,
    )
    receiver.answer(then=Reply(500))
    async with AsyncExitStack() as stack:
        hub = await stack.enter_async_context(in_process(settings))
        await stack.enter_async_context(in_process(settings))  # a second worker
        failing = await subscribe(hub, receiver.url())
        # Several entities: several deliveries could be probed at once.
        for n in range(HELD):
            await record(hub, "task", f"t{n}", "created")

        async def opened() -> Json | None:
            status = await subscription(hub, failing["id"])
            return status if status["circuitOpenUntil"] is not None else None

        await eventually(opened, what="the circuit to open")
        # Attempts claimed before it opened may still arrive; skip a few.
        sent = len(receiver.requests) + 3
        probes = (await receiver.wait_for(sent + 4, timeout=15))[sent:]
        gaps = [b.arrived - a.arrived for a, b in itertools.pairwise(probes)]
        assert all(gap >= PROBE_MS / 1000 - 0.01 for gap in gaps), gaps
