"""`watch()`: the change feed live, resuming from the last revision it handed out
when the server restarts (no gap, no duplicate), and `WatchReset` when its
position is no longer kept."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from pathlib import Path

import pytest

from potok_state.client import AsyncPotokClient, PotokClient, RetryPolicy, WatchReset
from potok_state.client.models import Event
from tests.client.conftest import Service
from tests.support.hub import http_service, service_env
from tests.support.polling import eventually
from tests.support.ports import free_port

QUICK = RetryPolicy(attempts=4, backoff=0.05, max_backoff=0.3)


async def test_watch_resumes_after_the_server_restarts(database_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = service_env(database_url)
    url = f"http://127.0.0.1:{port}"
    seen: list[Event] = []
    async with http_service(port, env, tmp_path, "first") as first:
        async with AsyncPotokClient(url, "gateway-service-key") as writer:
            before = [(await writer.record("user", f"u{i}", "online")).revision for i in range(3)]
        watcher = AsyncPotokClient(url, "gateway-service-key", retry=QUICK)

        async def follow() -> None:
            async for event in watcher.watch("user", after=before[0]):
                seen.append(event)

        following = asyncio.create_task(follow())
        await eventually(lambda: _has(seen, 2), what="the stored changes")
        await first.stop()  # SIGTERM ends every stream; the watcher keeps reconnecting

    async with http_service(port, env, tmp_path, "second"):
        async with AsyncPotokClient(url, "gateway-service-key") as writer:
            after = [(await writer.record("user", f"v{i}", "busy")).revision for i in range(3)]
            custom = await writer.emit("custom.not-a-user")
            last = (await writer.record("user", "u0", "offline")).revision
        await eventually(lambda: _has(seen, 6), what="the changes after the restart")
        await _stop(following)
        await watcher.aclose()

    assert [event.revision for event in seen] == [*before[1:], *after, last]
    assert custom.revision not in {event.revision for event in seen}  # the user stream only
    assert seen[-1].data["newStatus"] == "offline"


async def _has(seen: list[Event], count: int) -> bool:
    return len(seen) >= count


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_filters(service: Service) -> None:
    entity = f"w{uuid.uuid4().hex[:6]}"
    got: list[Event] = []
    async with AsyncPotokClient(service.url, service.api_key) as client:
        await client.record(entity, "api-0", "up")  # before `after`: not seen
        start = await client.head_revision()

        async def follow() -> None:
            async for event in client.watch(
                entity, after=start, status=["up"], entity_id_prefix="api-"
            ):
                got.append(event)

        following = asyncio.create_task(follow())
        await client.record(entity, "api-1", "up")
        await client.record(entity, "web-1", "up")
        await client.record(entity, "api-1", "down")
        await client.record(entity, "api-2", "idle")
        await eventually(lambda: _has(got, 2), what="two events")
        await _stop(following)
    assert [(e.data["id"], e.data["newStatus"]) for e in got] == [
        ("api-1", "up"),
        ("api-1", "down"),
    ]


async def test_a_position_no_longer_kept_raises_watch_reset(service: Service) -> None:
    async with AsyncPotokClient(service.url, service.api_key) as client:
        head = await client.head_revision()
        with pytest.raises(WatchReset) as reset:
            async for _ in client.watch(after=head + 1000):
                pass
    assert reset.value.reason == "revision_unknown"


async def test_the_sync_client_watches_too(service: Service) -> None:
    entity = f"s{uuid.uuid4().hex[:6]}"
    got: list[Event] = []
    with PotokClient(service.url, service.api_key) as client:
        start = client.head_revision()
        for i in range(3):
            client.record(entity, f"e{i}", "on")

        def follow() -> None:
            for event in client.watch(entity, after=start):
                got.append(event)
                if len(got) == 3:
                    return

        thread = threading.Thread(target=follow)
        thread.start()
        await asyncio.to_thread(thread.join, 10)
    assert [event.data["id"] for event in got] == ["e0", "e1", "e2"]
