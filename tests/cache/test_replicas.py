"""Two real service processes sharing PostgreSQL and the global Redis, each with
its own local Redis: a write on one is visible on the other within a second."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import API_KEY, TEST_API_KEYS, reset_postgres, run_in_thread
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer

PROPAGATION_SECONDS = 1.0
START_TIMEOUT_SECONDS = 60.0


class Replica:
    def __init__(self, process: subprocess.Popen[bytes], port: int, local: RedisServer) -> None:
        self.process = process
        self.local = local
        self.base_url = f"http://127.0.0.1:{port}"


@pytest.fixture
def replicas(
    postgres_url: str,
    redis_servers: Callable[[], RedisServer],
    global_redis: RedisServer,
    tmp_path: Path,
) -> Iterator[list[Replica]]:
    run_in_thread(reset_postgres(postgres_url))
    started: list[Replica] = []
    try:
        for number in range(2):
            local = redis_servers()
            port = free_port()
            env = {
                **os.environ,
                "DATABASE_URL": postgres_url,
                "API_KEYS": TEST_API_KEYS,
                "LOG_FORMAT": "json",
                "LOG_LEVEL": "warning",
                "REDIS_LOCAL_ENABLED": "true",
                "REDIS_LOCAL_HOST": "127.0.0.1",
                "REDIS_LOCAL_PORT": str(local.port),
                "REDIS_GLOBAL_ENABLED": "true",
                "REDIS_GLOBAL_HOST": "127.0.0.1",
                "REDIS_GLOBAL_PORT": str(global_redis.port),
                "CACHE_TIMEOUT": "500",
                "CACHE_RETRY_DELAY": "200",
            }
            workdir = tmp_path / f"replica-{number}"
            workdir.mkdir()
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "potok_state.cli",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                env=env,
                cwd=workdir,  # no stray .env
                stdout=subprocess.DEVNULL,
                stderr=(workdir / "stderr.log").open("wb"),
            )
            started.append(Replica(process, port, local))
        yield started
    finally:
        for replica in started:
            replica.process.terminate()
        for replica in started:
            try:
                replica.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                replica.process.kill()
                replica.process.wait()


@pytest.fixture
async def clients(
    replicas: list[Replica], global_redis: RedisServer
) -> AsyncIterator[list[httpx.AsyncClient]]:
    opened = [
        httpx.AsyncClient(base_url=r.base_url, headers={"x-api-key": API_KEY}, timeout=10)
        for r in replicas
    ]
    try:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        for replica, client in zip(replicas, opened, strict=True):
            while True:
                assert replica.process.poll() is None, "a replica exited at startup"
                try:
                    if (await client.get("/health/readiness")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "a replica did not become ready"
                await asyncio.sleep(0.1)
        # Both invalidation listeners are subscribed before the test starts.
        with global_redis.client() as tier:
            while True:
                channels = dict(tier.pubsub_numsub(b"potok-state:cache-invalidations"))
                if channels.get(b"potok-state:cache-invalidations", 0) >= 2:
                    break
                assert time.monotonic() < deadline, "the replicas never subscribed"
                await asyncio.sleep(0.05)
        yield opened
    finally:
        for client in opened:
            await client.aclose()


async def _until(check: Callable[[], Awaitable[bool]], seconds: float) -> float:
    """Poll an async check until it returns True; the time it took."""
    started = time.monotonic()
    while True:
        if await check():
            return time.monotonic() - started
        assert time.monotonic() - started < seconds, f"not visible within {seconds} s"
        await asyncio.sleep(0.01)


async def test_a_write_on_one_replica_is_seen_by_the_other_within_a_second(
    replicas: list[Replica], clients: list[httpx.AsyncClient]
) -> None:
    a, b = clients
    created = await a.post("/api/v1/states/task", json={"entityId": "x1", "status": "created"})
    assert created.status_code == 201, created.text
    # B reads it twice: cached in its own local tier and in its list cache.
    for _ in range(2):
        assert (await b.get("/api/v1/states/task/x1")).json()["status"] == "created"
        page = (await b.get("/api/v1/states/task?status=created")).json()
        assert [item["entityId"] for item in page["items"]] == ["x1"]
    with replicas[1].local.client() as b_local:
        assert b_local.exists("state:task:x1")

    moved = await a.put("/api/v1/states/task/x1", json={"status": "in_progress"})
    assert moved.status_code == 200, moved.text

    async def b_sees_it() -> bool:
        state = (await b.get("/api/v1/states/task/x1")).json()
        return bool(state["status"] == "in_progress")

    async def b_lists_it() -> bool:
        page = (await b.get("/api/v1/states/task?status=created")).json()
        return not page["items"]

    await _until(b_sees_it, PROPAGATION_SECONDS)
    await _until(b_lists_it, PROPAGATION_SECONDS)

    # And the other way round, including a deletion.
    assert (await a.get("/api/v1/states/task/x1")).json()["version"] == 2
    assert (await b.delete("/api/v1/states/task/x1")).status_code == 204

    async def a_sees_deletion() -> bool:
        return (await a.get("/api/v1/states/task/x1")).status_code == 404

    await _until(a_sees_deletion, PROPAGATION_SECONDS)
