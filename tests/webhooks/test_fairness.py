"""Slots of the delivery worker: receivers that hang hold only their own share,
so a healthy subscription's deliveries are as fast as without them."""

from __future__ import annotations

import asyncio
import time

from tests.support.hub import in_process, record, subscribe, webhook_settings
from tests.support.polling import eventually
from tests.webhooks.conftest import StartReceiver

HANGING = 9
CHANGES = 20


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


async def test_hanging_receivers_do_not_slow_a_healthy_one(
    database_url: str, start_receiver: StartReceiver
) -> None:
    hanging = await start_receiver()
    hanging.answer(then=hanging.hang())
    healthy = await start_receiver()
    settings = webhook_settings(
        database_url, worker_concurrency=16, delivery_timeout=2000, max_retries=0
    )
    async with in_process(settings) as client:
        for n in range(HANGING):
            await subscribe(client, hanging.url(f"/hang/{n}"), ["*"], entityTypes=["noise"])
        await subscribe(client, healthy.url(), ["*"], entityTypes=["task"])

        async def latencies(prefix: str) -> list[float]:
            written: dict[str, float] = {}
            for i in range(CHANGES):
                await record(client, "task", f"{prefix}{i}", "created")
                written[f"{prefix}{i}"] = time.monotonic()
                await asyncio.sleep(0.02)

            async def arrived() -> dict[str, float] | None:
                seen = {
                    r.payload["data"]["id"]: r.arrived
                    for r in healthy.requests
                    if r.payload["data"]["id"] in written
                }
                return seen if len(seen) == CHANGES else None

            seen = await eventually(arrived, timeout=20, what="the healthy deliveries")
            return [seen[key] - written[key] for key in written]

        baseline = await latencies("calm")
        # Every hanging subscription gets far more work than the worker has slots.
        for i in range(40):
            await record(client, "noise", f"n{i}", "on")
        await eventually(lambda: _hung(hanging, HANGING), what="every hanging receiver to be hit")
        loaded = await latencies("busy")
        assert p99(loaded) - p99(baseline) < 0.1, (p99(baseline), p99(loaded))


async def _hung(receiver: object, count: int) -> bool:
    paths = {request.path for request in receiver.requests}  # type: ignore[attr-defined]
    return len(paths) >= count
