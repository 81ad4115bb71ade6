"""The service under test, in this process (ASGI) or as real `potok-state`
processes, and small calls to its webhook API."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from potok_state.app import create_app
from potok_state.settings import Settings
from tests.conftest import API_KEY, TEST_API_KEYS, make_settings
from tests.support.polling import eventually

POTOK_STATE = Path(sys.executable).with_name("potok-state")
# Fast delivery for tests: a 50 ms backoff base and short per-attempt timeouts.
FAST_WEBHOOKS: dict[str, object] = {"retry_delay": 50, "delivery_timeout": 1000, "max_retries": 3}

Json = dict[str, Any]


def webhook_settings(database_url: str, **webhooks: object) -> Settings:
    return make_settings(database_url, webhooks={**FAST_WEBHOOKS, **webhooks})


@asynccontextmanager
async def in_process(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its embedded delivery worker, in the test loop."""
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://potok.test", headers={"x-api-key": API_KEY}
        ) as client:
            yield client


async def subscribe(
    client: httpx.AsyncClient, url: str, events: list[str] | None = None, **extra: object
) -> Json:
    response = await client.post(
        "/api/v1/webhooks/subscriptions", json={"url": url, "events": events or ["*"], **extra}
    )
    assert response.status_code == 201, response.text
    created: Json = response.json()
    return created


async def subscription(client: httpx.AsyncClient, subscription_id: str) -> Json:
    response = await client.get(f"/api/v1/webhooks/subscriptions/{subscription_id}")
    assert response.status_code == 200, response.text
    found: Json = response.json()
    return found


async def deliveries(client: httpx.AsyncClient, subscription_id: str) -> list[Json]:
    """The whole delivery log, oldest first."""
    items: list[Json] = []
    before: int | None = None
    while True:
        params: dict[str, int] = {"limit": 500}
        if before is not None:
            params["before"] = before
        response = await client.get(
            f"/api/v1/webhooks/subscriptions/{subscription_id}/deliveries", params=params
        )
        assert response.status_code == 200, response.text
        page: Json = response.json()
        items.extend(page["items"])
        if page["nextCursor"] is None:
            return items[::-1]
        before = page["nextCursor"]


async def settled_deliveries(
    client: httpx.AsyncClient,
    subscription_id: str,
    count: int,
    *,
    timeout: float = 10.0,  # noqa: ASYNC109
) -> list[Json]:
    """The delivery log once it holds `count` deliveries and none is pending."""

    async def settled() -> list[Json] | None:
        log = await deliveries(client, subscription_id)
        done = len(log) >= count and all(item["status"] != "pending" for item in log)
        return log if done else None

    return await eventually(settled, timeout=timeout, what=f"{count} settled deliveries")


async def record(
    client: httpx.AsyncClient, entity: str, entity_id: str, status: str, **extra: object
) -> Json:
    response = await client.post(
        f"/api/v1/states/{entity}", json={"entityId": entity_id, "status": status, **extra}
    )
    assert response.status_code in (200, 201), response.text
    state: Json = response.json()
    return state


async def publish(client: httpx.AsyncClient, event: str, data: Json | None = None) -> Json:
    response = await client.post("/api/v1/events", json={"type": event, "data": data or {}})
    assert response.status_code == 201, response.text
    published: Json = response.json()
    return published


async def all_changes(client: httpx.AsyncClient) -> list[Json]:
    items: list[Json] = []
    after = 0
    while True:
        response = await client.get("/api/v1/changes", params={"after": after, "limit": 1000})
        assert response.status_code == 200, response.text
        page: Json = response.json()
        if not page["items"]:
            return items
        items.extend(page["items"])
        after = page["nextAfter"]


class ServiceProcess:
    """`potok-state serve|worker` as a real process; its output goes to a log file."""

    def __init__(self, args: list[str], env: dict[str, str], workdir: Path, name: str) -> None:
        self.args = args
        self.env = {**os.environ, **env}
        self.workdir = workdir
        self.log_path = workdir / f"{name}.log"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                str(POTOK_STATE),
                *self.args,
                env=self.env,
                cwd=self.workdir,  # no stray .env is read
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), 15)
        except TimeoutError:
            await self.kill()


def service_env(database_url: str, **extra: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "API_KEYS": TEST_API_KEYS,
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "warning",
        "APP_ENV": "test",
        "WEBHOOK_ALLOW_PRIVATE_TARGETS": "true",
        **extra,
    }


@asynccontextmanager
async def http_service(
    port: int, env: dict[str, str], workdir: Path, name: str = "serve"
) -> AsyncIterator[ServiceProcess]:
    """`potok-state serve --port N`, ready to answer once entered."""
    server = ServiceProcess(
        ["serve", "--host", "127.0.0.1", "--port", str(port)], env, workdir, name
    )
    await server.start()
    try:
        await wait_ready(server, port)
        yield server
    finally:
        await server.stop()


async def wait_ready(server: ServiceProcess, port: int, timeout: float = 30.0) -> None:  # noqa: ASYNC109
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:

        async def ready() -> bool:
            assert server.process is not None
            if server.process.returncode is not None:
                raise AssertionError(f"the service exited early:\n{server.log}")
            try:
                response = await http.get("/health/liveness")
            except httpx.TransportError:
                return False
            return response.status_code == 200

        await eventually(ready, timeout=timeout, interval=0.1, what="the service to start")


@asynccontextmanager
async def remote_client(port: int) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", headers={"x-api-key": API_KEY}, timeout=30
    ) as client:
        yield client
