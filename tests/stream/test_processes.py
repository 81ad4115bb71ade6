"""The publisher as real `potok-state serve` processes: killed with SIGKILL in the
middle of publishing, and two processes where one publishes and the other takes
over when it dies (docs/stream.md, "One publisher")."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import time
from pathlib import Path

import httpx

from tests.support.hub import (
    POTOK_STATE,
    ServiceProcess,
    all_changes,
    http_service,
    remote_client,
    service_env,
)
from tests.support.nats_server import NatsServer, stream_count, stream_messages
from tests.support.polling import eventually
from tests.support.ports import free_port

STREAM = "POTOK_TEST"
TAKEOVER_SECONDS = 10.0


def stream_env(database_url: str, nats: NatsServer) -> dict[str, str]:
    return service_env(
        database_url, NATS_URL=nats.url, NATS_STREAM=STREAM, NATS_PUBLISH_TIMEOUT="500"
    )


async def write_until_stopped(client: httpx.AsyncClient, stop: asyncio.Event) -> int:
    """Batches of 20 changes, one after another, until told to stop; returns how
    many batches were accepted (a batch cut off by a kill may or may not be)."""
    batches = 0
    while not stop.is_set():
        items = [
            {"entityId": f"u{n}", "status": ("online", "busy")[batches % 2]} for n in range(20)
        ]
        try:
            response = await client.post("/api/v1/states/user/batch", json={"items": items})
        except httpx.TransportError:
            return batches
        if response.status_code == 200:
            batches += 1
    return batches


async def test_kill_9_mid_publish_leaves_no_gap_and_no_duplicate(
    database_url: str, nats_server: NatsServer, tmp_path: Path
) -> None:
    port = free_port()
    env = stream_env(database_url, nats_server)
    async with http_service(port, env, tmp_path, "first") as first:
        async with remote_client(port) as client:
            stop = asyncio.Event()
            writer = asyncio.create_task(write_until_stopped(client, stop))

            async def publishing() -> bool:
                return await stream_count(nats_server.url, STREAM) >= 400

            await eventually(publishing, timeout=30, what="400 messages in the stream")
            await first.kill()
            stop.set()
            await writer
        assert first.process is not None
        assert first.process.returncode == -9

    async with http_service(port, env, tmp_path, "second"), remote_client(port) as client:
        feed = await all_changes(client)

        async def all_published() -> bool:
            return await stream_count(nats_server.url, STREAM) >= len(feed)

        await eventually(all_published, timeout=30, what="the whole feed in the stream")
        stored = await stream_messages(nats_server.url, STREAM)

    assert [m.headers["Nats-Msg-Id"] for m in stored] == [item["id"] for item in feed]
    assert [int(m.headers["Potok-Revision"]) for m in stored] == list(range(1, len(feed) + 1))


async def test_one_of_two_processes_publishes_and_the_other_takes_over(
    database_url: str, nats_server: NatsServer, tmp_path: Path
) -> None:
    env = stream_env(database_url, nats_server)
    ports = {"a": free_port(), "b": free_port()}
    async with contextlib.AsyncExitStack() as stack:
        servers = {
            name: await stack.enter_async_context(http_service(port, env, tmp_path, name))
            for name, port in ports.items()
        }
        clients = {
            name: await stack.enter_async_context(remote_client(port))
            for name, port in ports.items()
        }
        response = await clients["a"].post(
            "/api/v1/states/user", json={"entityId": "u1", "status": "online"}
        )
        assert response.status_code == 201

        async def publisher() -> str | None:
            stream = (await clients["b"].get("/health")).json()["stream"]
            return stream["publisher"] if stream["backlog"] == 0 else None

        holder = await eventually(publisher, what="a publisher that caught up")
        leading = [name for name, server in servers.items() if f":{pid(server)}:" in holder]
        assert len(leading) == 1, holder
        [leader] = leading
        [survivor] = [name for name in servers if name != leader]
        assert await publisher_gauge(clients[leader]) == 1
        assert await publisher_gauge(clients[survivor]) == 0
        assert (await clients[survivor].get("/health")).json()["stream"]["publisher"] == holder

        await servers[leader].kill()
        killed_at = time.monotonic()
        response = await clients[survivor].post(
            "/api/v1/states/user", json={"entityId": "u2", "status": "online"}
        )
        assert response.status_code == 201

        async def published() -> bool:
            return await stream_count(nats_server.url, STREAM) == 2

        await eventually(published, timeout=TAKEOVER_SECONDS, what="the survivor to publish")
        assert time.monotonic() - killed_at < TAKEOVER_SECONDS
        new_holder = await eventually(publisher, what="the new publisher")
        assert f":{pid(servers[survivor])}:" in new_holder
        assert await publisher_gauge(clients[survivor]) == 1
        feed = await all_changes(clients[survivor])

    stored = await stream_messages(nats_server.url, STREAM)
    assert [m.headers["Nats-Msg-Id"] for m in stored] == [item["id"] for item in feed]

    position = show_stream_position(env, tmp_path)
    assert position["revision"] == 2
    assert position["backlog"] == 0
    assert position["enabled"] is True
    assert position["stream"] == STREAM


def pid(server: ServiceProcess) -> int:
    assert server.process is not None
    return server.process.pid


async def publisher_gauge(client: httpx.AsyncClient) -> float:
    text = (await client.get("/metrics")).text
    [line] = [line for line in text.splitlines() if line.startswith("potok_stream_publisher ")]
    return float(line.split()[1])


def show_stream_position(env: dict[str, str], workdir: Path) -> dict[str, object]:
    """`potok-state stream`, as an operator runs it."""
    shown = subprocess.run(
        [str(POTOK_STATE), "stream"],
        env={**os.environ, **env},
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    report: dict[str, object] = json.loads(shown.stdout)
    return report
