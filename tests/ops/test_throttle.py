"""Rate limiting per API key (THROTTLE_LIMIT per THROTTLE_TTL): the 429 body and
Retry-After, one budget per key, shared by replicas through the global Redis,
and local counting when that Redis is gone."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from fastapi import FastAPI

from potok_state.app import create_app
from potok_state.settings import Settings
from tests.conftest import API_KEY, make_settings
from tests.support.hub import http_service, remote_client, service_env
from tests.support.polling import eventually
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer

THROTTLED = "/api/v1/states/task"


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


def client_for(app: FastAPI, key: str = API_KEY) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://potok.test",
        headers={"x-api-key": key},
    )


def global_redis(server: RedisServer) -> dict[str, object]:
    return {"enabled": True, "host": "127.0.0.1", "port": server.port}


def assert_rate_limited(response: httpx.Response, window: int) -> None:
    assert response.status_code == 429, response.text
    retry_after = int(response.headers["retry-after"])
    assert 1 <= retry_after <= window
    body = response.json()
    assert body["statusCode"] == 429
    assert body["error"] == "Too Many Requests"
    assert body["code"] == "rate_limited"
    assert body["requestId"] == response.headers["x-request-id"]
    assert body["details"]["retryAfterSeconds"] == retry_after


async def test_each_key_has_its_own_budget(database_url: str) -> None:
    settings = make_settings(database_url, throttle={"limit": 3, "ttl": 60})
    async with (
        running(settings) as app,
        client_for(app) as gateway,
        client_for(app, "admin-key") as admin,
    ):
        for _ in range(3):
            assert (await gateway.get(THROTTLED)).status_code == 200
        assert_rate_limited(await gateway.get(THROTTLED), 60)
        assert_rate_limited(await gateway.post(THROTTLED, json={}), 60)

        assert (await admin.get(THROTTLED)).status_code == 200
        # Unauthenticated operations endpoints are not counted against any key.
        for path in ("/health/liveness", "/metrics"):
            assert (await gateway.get(path)).status_code == 200


async def test_the_window_reopens(tmp_path: Path) -> None:
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path}/db.sqlite", throttle={"limit": 1, "ttl": 1}
    )
    async with running(settings) as app, client_for(app) as client:
        assert (await client.get(THROTTLED)).status_code == 200
        assert_rate_limited(await client.get(THROTTLED), 1)

        async def reopened() -> bool:
            return (await client.get(THROTTLED)).status_code == 200

        await eventually(reopened, timeout=5, interval=0.1, what="the next window")


async def test_limit_zero_disables_throttling(tmp_path: Path) -> None:
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path}/db.sqlite", throttle={"limit": 0})
    async with running(settings) as app, client_for(app) as client:
        for _ in range(20):
            assert (await client.get(THROTTLED)).status_code == 200


async def test_two_service_processes_share_the_limit_through_global_redis(
    tmp_path: Path, redis_servers: Callable[[], RedisServer]
) -> None:
    shared = redis_servers()
    limit = 6
    env = {
        "THROTTLE_LIMIT": str(limit),
        "THROTTLE_TTL": "60",
        "REDIS_GLOBAL_ENABLED": "true",
        "REDIS_GLOBAL_HOST": "127.0.0.1",
        "REDIS_GLOBAL_PORT": str(shared.port),
    }
    ports = free_port(), free_port()
    workdirs = tmp_path / "a", tmp_path / "b"
    for workdir in workdirs:
        workdir.mkdir()
    async with (
        http_service(
            ports[0], service_env(f"sqlite+aiosqlite:///{workdirs[0]}/db", **env), workdirs[0]
        ),
        http_service(
            ports[1], service_env(f"sqlite+aiosqlite:///{workdirs[1]}/db", **env), workdirs[1]
        ),
        remote_client(ports[0]) as first,
        remote_client(ports[1]) as second,
    ):
        statuses = []
        for index in range(limit):
            replica = first if index % 2 == 0 else second
            statuses.append((await replica.get(THROTTLED)).status_code)
        assert statuses == [200] * limit  # three on each replica, six in all

        assert_rate_limited(await first.get(THROTTLED), 60)
        assert_rate_limited(await second.get(THROTTLED), 60)


async def test_counts_locally_while_global_redis_is_down(
    tmp_path: Path, redis_servers: Callable[[], RedisServer]
) -> None:
    server = redis_servers()
    server.db = 1  # REDIS_GLOBAL_DB
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path}/db.sqlite",
        throttle={"limit": 3, "ttl": 60},
        redis_global=global_redis(server),
    )
    async with running(settings) as app, client_for(app) as client:
        assert (await client.get(THROTTLED)).status_code == 200
        with server.client() as probe:
            counters = probe.keys("potok-state:throttle:*")
        assert counters == [b"potok-state:throttle:gateway"]

        server.kill()
        # The local window starts empty: the full limit again, then 429, never a 5xx.
        statuses = [(await client.get(THROTTLED)).status_code for _ in range(3)]
        assert statuses == [200, 200, 200]
        assert_rate_limited(await client.get(THROTTLED), 60)


async def test_failed_authentication_is_limited_per_address(database_url: str) -> None:
    """After THROTTLE_AUTH_FAILURES wrong or missing keys, the address gets 429
    for every request until its window ends, even with a right key, so a right
    guess looks like every wrong one."""
    settings = make_settings(database_url, throttle={"limit": 0, "auth_failures": 5, "ttl": 60})
    async with (
        running(settings) as app,
        client_for(app, "wrong-key") as guesser,
        client_for(app) as gateway,
    ):
        assert (await gateway.get(THROTTLED)).status_code == 200
        for _ in range(3):
            assert (await guesser.get(THROTTLED)).status_code == 401
        assert (await guesser.get(THROTTLED, headers={"x-api-key": ""})).status_code == 401
        assert (await guesser.get(THROTTLED)).status_code == 401
        assert_rate_limited(await guesser.get(THROTTLED), 60)
        # The same address (the test client's), now even with the right key.
        assert_rate_limited(await gateway.get(THROTTLED), 60)
        # Public endpoints are not behind the key check.
        assert (await gateway.get("/health/liveness")).status_code == 200


async def test_failed_authentication_counts_are_shared_through_global_redis(
    tmp_path: Path, redis_servers: Callable[[], RedisServer]
) -> None:
    server = redis_servers()
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path}/db.sqlite",
        throttle={"limit": 0, "auth_failures": 4, "ttl": 60},
        redis_global=global_redis(server),
    )
    async with (
        running(settings) as first,
        running(settings) as second,
        client_for(first, "wrong") as a,
        client_for(second, "wrong") as b,
    ):
        for client in (a, b, a, b):
            assert (await client.get(THROTTLED)).status_code == 401
        assert_rate_limited(await a.get(THROTTLED), 60)
        assert_rate_limited(await b.get(THROTTLED), 60)
