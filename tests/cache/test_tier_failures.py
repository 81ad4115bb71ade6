"""Tiers die mid-traffic and come back: no request fails, no data is wrong, and
the tiers are used again without a restart (docs/architecture.md, "Caches")."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import httpx
from fastapi import FastAPI

from tests.support.apps import api_client, running_app
from tests.support.cache import cache_requests, cache_settings
from tests.support.redis_server import RedisServer

RECOVERY_SECONDS = 15.0


class Traffic:
    """Writers that read their own writes back, one entity each, until stopped."""

    def __init__(self, client: httpx.AsyncClient, workers: int = 6) -> None:
        self.client = client
        self.workers = workers
        self.problems: list[str] = []
        self.requests = 0
        self._progress = asyncio.Event()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(f"w{n}")) for n in range(self.workers)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def run_for(self, requests: int) -> None:
        """Let at least `requests` more requests through."""
        target = self.requests + requests
        while self.requests < target and not self.problems:
            self._progress.clear()
            await self._progress.wait()

    async def _run(self, entity_id: str) -> None:
        status = "online"
        while not self._stop.is_set():
            status = "busy" if status == "online" else "online"
            written = await self.client.post(
                "/api/v1/states/user", json={"entityId": entity_id, "status": status}
            )
            read = await self.client.get(f"/api/v1/states/user/{entity_id}")
            page = await self.client.get("/api/v1/states/user", params={"status": status})
            self.requests += 3
            self._progress.set()
            if written.status_code not in (200, 201) or read.status_code != 200:
                self.problems.append(f"{written.status_code} {read.status_code}: {read.text}")
                continue
            if (
                read.json()["status"] != status
                or read.json()["version"] < written.json()["version"]
            ):
                self.problems.append(f"stale read of {entity_id}: {read.json()}")
            if entity_id not in {item["entityId"] for item in page.json()["items"]}:
                self.problems.append(f"{entity_id} missing from the {status} list")


async def _until(check: Callable[[], Awaitable[bool]], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, f"not true within {seconds} s"
        await asyncio.sleep(0.05)


async def test_killing_and_restarting_both_tiers_never_fails_a_request(
    database_url: str, local_redis: RedisServer, global_redis: RedisServer
) -> None:
    settings = cache_settings(database_url, local=local_redis, global_=global_redis)
    async with running_app(settings) as app, api_client(app) as client:
        traffic = Traffic(client)
        traffic.start()
        try:
            await traffic.run_for(60)
            global_redis.kill()
            await traffic.run_for(60)
            local_redis.kill()
            await traffic.run_for(60)
            assert await _health_is(client, "degraded", redis_up=False)

            global_redis.start()
            local_redis.start()
            await _until(lambda: _health_is(client, "ok", redis_up=True), RECOVERY_SECONDS)
            await _until(lambda: _tier_serves(app, client, local_redis, "global"), RECOVERY_SECONDS)
            await _until(lambda: _tier_serves(app, client, None, "local"), RECOVERY_SECONDS)
            await traffic.run_for(60)
        finally:
            await traffic.stop()
        assert not traffic.problems, traffic.problems[:5]


async def _health_is(client: httpx.AsyncClient, status: str, *, redis_up: bool) -> bool:
    health = (await client.get("/health")).json()
    readiness = await client.get("/health/readiness")
    assert readiness.status_code == 200, "a cache tier never makes the service unready"
    assert readiness.json()["ready"] is True
    return bool(health["status"] == status and readiness.json()["redis"] is redis_up)


async def _tier_serves(
    app: FastAPI, client: httpx.AsyncClient, evict_from: RedisServer | None, tier: str
) -> bool:
    """True once a fresh state is written through and then read back from `tier`."""
    entity_id = f"probe-{time.monotonic_ns()}"
    await client.post("/api/v1/states/user", json={"entityId": entity_id, "status": "online"})
    if evict_from is not None:
        with evict_from.client() as local:
            local.delete(f"state:user:{entity_id}")
    hits = cache_requests(app, tier, "hit")
    read = await client.get(f"/api/v1/states/user/{entity_id}")
    assert read.status_code == 200
    return cache_requests(app, tier, "hit") > hits
