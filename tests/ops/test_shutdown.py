"""SIGTERM under load, against the real `potok-state serve` process: the server
stops accepting, every request it accepted completes with its normal answer,
every write it confirmed is in the database after a restart — and nothing it did
not confirm is there — and every confirmed write's webhook reaches the receiver
(attempts in flight at SIGTERM finish or are sent again after the restart)."""

from __future__ import annotations

import asyncio
import itertools
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from tests.conftest import API_KEY
from tests.support.hub import (
    ServiceProcess,
    http_service,
    remote_client,
    service_env,
    subscribe,
    wait_ready,
)
from tests.support.polling import eventually
from tests.support.ports import free_port
from tests.support.receivers import Receiver

WRITERS = 200
CONFIRMED_BEFORE_SIGTERM = 200


async def test_sigterm_under_load_loses_no_accepted_write(
    database_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    port = free_port()
    env = service_env(
        database_url,
        THROTTLE_LIMIT="0",
        LOG_LEVEL="info",
        WEBHOOK_RETRY_DELAY="100",
        WEBHOOK_DELIVERY_TIMEOUT="2000",
    )
    server = ServiceProcess(
        ["serve", "--host", "127.0.0.1", "--port", str(port)], env, tmp_path, "a"
    )
    await server.start()
    await wait_ready(server, port)
    assert server.process is not None
    async with remote_client(port) as client:
        await subscribe(client, receiver.url(), ["entity.created"], entityTypes=["task"])

    confirmed: set[str] = set()
    unanswered: set[str] = set()
    failed: list[tuple[str, int, str]] = []
    errors_before_sigterm: list[str] = []
    confirmed_after_sigterm = 0
    sigterm = asyncio.Event()
    ids = itertools.count()
    # A fresh connection per request: an idle keep-alive connection closed by the
    # shutdown would make a request fail that the server never accepted.
    limits = httpx.Limits(max_connections=WRITERS, max_keepalive_connections=0)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}",
        headers={"x-api-key": API_KEY, "connection": "close"},
        limits=limits,
        timeout=60,
    ) as http:

        async def writer() -> None:
            nonlocal confirmed_after_sigterm
            while True:
                entity_id = f"load-{next(ids)}"
                try:
                    response = await http.post(
                        "/api/v1/states/task", json={"entityId": entity_id, "status": "created"}
                    )
                except httpx.TransportError as exc:
                    unanswered.add(entity_id)
                    if not sigterm.is_set():
                        errors_before_sigterm.append(repr(exc))
                    return  # the server stopped accepting
                if response.status_code != 201:
                    failed.append((entity_id, response.status_code, response.text))
                    return
                confirmed.add(entity_id)
                if sigterm.is_set():
                    confirmed_after_sigterm += 1

        async def slow_writer() -> None:
            """A write the server accepted before SIGTERM whose body only ends after
            it: at least one request is in flight at SIGTERM, however fast the
            others are answered."""
            nonlocal confirmed_after_sigterm
            entity_id = "load-slow"
            body = b'{"entityId":"load-slow","status":"created"}'

            async def chunks() -> AsyncIterator[bytes]:
                yield body[:10]
                await sigterm.wait()
                yield body[10:]

            response = await http.post(
                "/api/v1/states/task",
                content=chunks(),
                headers={"content-type": "application/json"},
            )
            if response.status_code != 201:
                failed.append((entity_id, response.status_code, response.text))
                return
            confirmed.add(entity_id)
            confirmed_after_sigterm += 1

        slow = asyncio.create_task(slow_writer())
        writers = [asyncio.create_task(writer()) for _ in range(WRITERS)]

        async def loaded() -> bool:
            return len(confirmed) >= CONFIRMED_BEFORE_SIGTERM or all(w.done() for w in writers)

        await eventually(loaded, timeout=60, what="the service to be under load")
        server.process.send_signal(signal.SIGTERM)
        sigterm.set()
        await asyncio.wait_for(asyncio.gather(slow, *writers), 120)

    returncode = await asyncio.wait_for(server.process.wait(), 60)
    log = server.log
    assert returncode in (0, -signal.SIGTERM), log[-3000:]
    assert failed == []
    assert errors_before_sigterm == []
    assert confirmed_after_sigterm > 0, "SIGTERM came when no request was in flight"
    assert "service.stopped" in log  # the lifespan ran to the end: pools closed

    restart_port = free_port()
    async with (
        http_service(restart_port, env, tmp_path, "b"),
        remote_client(restart_port) as client,
    ):
        stored = await stored_task_ids(client)
        assert stored == confirmed
        assert not stored & unanswered

        async def every_write_delivered() -> bool:
            delivered = {request.payload["data"]["id"] for request in receiver.requests}
            return confirmed <= delivered

        await eventually(every_write_delivered, timeout=60, what="a webhook per confirmed write")


async def stored_task_ids(client: httpx.AsyncClient) -> set[str]:
    ids: set[str] = set()
    cursor: str | None = None
    while True:
        params: dict[str, str | int] = {"limit": 500, "sort": "entityId"}
        if cursor is not None:
            params["cursor"] = cursor
        response = await client.get("/api/v1/states/task", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        ids.update(item["entityId"] for item in page["items"])
        cursor = page["nextCursor"]
        if cursor is None:
            return ids
