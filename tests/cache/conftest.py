"""Private `redis-server` processes for the cache tests: one per tier, on free
ports, killed at teardown. Tests stop and restart them to prove the tiers fail
and recover without the service noticing."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import redis
from fastapi import FastAPI

from potok_state.app import create_app
from potok_state.settings import Settings
from tests.conftest import API_KEY, make_settings

START_TIMEOUT_SECONDS = 10.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class RedisServer:
    """One private redis-server; `kill` is SIGKILL, `start` reuses the same port."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.db = 0  # the database the service uses on it (REDIS_GLOBAL_DB defaults to 1)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            try:
                with self.client() as probe:
                    probe.ping()
                return
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on {self.port}") from None
                time.sleep(0.02)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, db=self.db, socket_timeout=2)


@pytest.fixture
def redis_servers(tmp_path: Path) -> Iterator[Callable[[], RedisServer]]:
    started: list[RedisServer] = []

    def start() -> RedisServer:
        workdir = tmp_path / f"redis-{len(started)}"
        workdir.mkdir()
        server = RedisServer(workdir)
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.kill()


@pytest.fixture
def local_redis(redis_servers: Callable[[], RedisServer]) -> RedisServer:
    return redis_servers()


@pytest.fixture
def global_redis(redis_servers: Callable[[], RedisServer]) -> RedisServer:
    server = redis_servers()
    server.db = 1
    return server


def cache_settings(
    database_url: str,
    *,
    local: RedisServer | None = None,
    global_: RedisServer | None = None,
    **overrides: object,
) -> Settings:
    values: dict[str, object] = {
        # Generous for a shared 2-core machine; the circuit retries quickly. These
        # tests exercise the Redis tiers, so the near cache in front of them is off
        # (tests/cache/test_near_cache.py covers it).
        "cache": {"timeout": 500, "retry_delay": 200, "near_size": 0},
        "redis_local": {"enabled": local is not None},
        "redis_global": {"enabled": global_ is not None},
    }
    if local is not None:
        values["redis_local"] = {"enabled": True, "host": "127.0.0.1", "port": local.port}
    if global_ is not None:
        values["redis_global"] = {"enabled": True, "host": "127.0.0.1", "port": global_.port}
    values.update(overrides)
    values["cache"] = {"near_size": 0, **values["cache"]}  # type: ignore[dict-item]
    return make_settings(database_url, **values)


@asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


def api_client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://potok.test",
        headers={"x-api-key": API_KEY},
    )


def cache_requests(app: FastAPI, tier: str, result: str) -> float:
    value = app.state.metrics.registry.get_sample_value(
        "potok_cache_requests_total", {"tier": tier, "result": result}
    )
    return float(value or 0.0)
