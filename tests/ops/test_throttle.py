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
from potok_state.kit.throttle import LocalWindows, failure_subject
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


async def test_wrong_guesses_never_lock_out_the_right_key(database_url: str) -> None:
    """The attack of the hostile-clients review: 40 wrong keys from one address
    (every service behind the Gateway shares it). Guessing is throttled past
    THROTTLE_AUTH_FAILURES, yet the right key from the same address works at
    once, and keeps working while the guesser is refused."""
    settings = make_settings(database_url, throttle={"limit": 0, "auth_failures": 20, "ttl": 60})
    async with (
        running(settings) as app,
        client_for(app, "wrong-key") as guesser,
        client_for(app) as gateway,
    ):
        statuses = []
        for attempt in range(40):
            key = "" if attempt == 3 else f"guess-{attempt}"
            statuses.append((await guesser.get(THROTTLED, headers={"x-api-key": key})).status_code)
        assert statuses == [401] * 20 + [429] * 20
        assert_rate_limited(await guesser.get(THROTTLED), 60)

        assert (await gateway.get(THROTTLED)).status_code == 200
        assert (
            await gateway.post(THROTTLED, json={"entityId": "t1", "status": "created"})
        ).status_code == 201
        assert_rate_limited(await guesser.get(THROTTLED), 60)
        # Public endpoints are not behind the key check.
        assert (await guesser.get("/health/liveness")).status_code == 200


def test_failure_counts_stay_bounded_and_recent_addresses_keep_theirs() -> None:
    """Past the table's size the least recently failing address is forgotten,
    one at a time (no rebuild of the table per failure)."""
    windows = LocalWindows(60, max_windows=1_000)
    for address in range(5_000):
        windows.hit(f"10.0.{address // 256}.{address % 256}")
        assert len(windows) <= 1_000
    assert windows.hit("10.0.19.135").count == 2  # the newest address kept its count
    assert windows.hit("10.0.0.0").count == 1  # the oldest one was forgotten


def test_an_ipv6_host_counts_its_failures_under_its_64() -> None:
    assert failure_subject("2001:db8:1:2:aaaa::1") == failure_subject("2001:db8:1:2::ffff")
    assert failure_subject("2001:db8:1:3::1") != failure_subject("2001:db8:1:2::1")
    assert failure_subject("::ffff:192.0.2.7") == "192.0.2.7"
    assert failure_subject("192.0.2.7") == "192.0.2.7"


async def test_a_rotated_x_forwarded_for_does_not_escape_the_limit(tmp_path: Path) -> None:
    """By default no proxy is trusted: X-Forwarded-For is ignored, so a guesser
    cannot pose as a new address per request."""
    port = free_port()
    env = service_env(
        f"sqlite+aiosqlite:///{tmp_path}/db", THROTTLE_LIMIT="0", THROTTLE_AUTH_FAILURES="5"
    )
    async with http_service(port, env, tmp_path), remote_client(port) as client:
        statuses = [
            (
                await client.get(
                    THROTTLED,
                    headers={"x-api-key": "guess", "x-forwarded-for": f"203.0.113.{index}"},
                )
            ).status_code
            for index in range(10)
        ]
        assert statuses == [401] * 5 + [429] * 5


async def test_a_trusted_proxy_names_the_client(tmp_path: Path) -> None:
    """With the proxy in FORWARDED_ALLOW_IPS, each forwarded client has its own
    failure budget (and the proxy's own address none of theirs)."""
    port = free_port()
    env = service_env(
        f"sqlite+aiosqlite:///{tmp_path}/db",
        THROTTLE_LIMIT="0",
        THROTTLE_AUTH_FAILURES="2",
        FORWARDED_ALLOW_IPS="127.0.0.1",
    )
    async with http_service(port, env, tmp_path), remote_client(port) as client:

        async def status_from(address: str) -> int:
            headers = {"x-api-key": "guess", "x-forwarded-for": address}
            return (await client.get(THROTTLED, headers=headers)).status_code

        assert [await status_from("203.0.113.1") for _ in range(3)] == [401, 401, 429]
        assert [await status_from("203.0.113.2") for _ in range(2)] == [401, 401]


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
