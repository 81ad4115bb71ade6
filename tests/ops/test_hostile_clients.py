"""The hostile clients of the security review, replayed against the real server
(`potok-state serve`), scaled to run fast: watch clients that never read,
requests that never finish their head, more connections than a process serves.
Each must cost the server little and never lock others out (docs/operations.md,
"Limits")."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import orjson
import pytest

from tests.support.connections import (
    RawConnection,
    decode_chunked,
    resident_bytes,
    server_sockets,
    watch_request,
)
from tests.support.hub import ServiceProcess, http_service, remote_client, service_env, wait_ready
from tests.support.polling import eventually
from tests.support.ports import free_port
from tests.support.sse import watch

USERS = "/api/v1/states/user"
UNFINISHED_RESPONSE = "ASGI callable returned without completing response"
# The review's figures: 10 watchers over a 90 MB backlog of 60 KB events grew the
# server by 2.3 GB; bounded, they may add at most 300 MB. Here a third of it.
BACKLOG_EVENTS = 500
PADDING = "x" * 60_000
SILENT_WATCHERS = 10
RSS_GROWTH_LIMIT = 100 * 1024 * 1024


@asynccontextmanager
async def serving(
    database_url: str, workdir: Path, **env: str
) -> AsyncIterator[tuple[ServiceProcess, httpx.AsyncClient, int]]:
    port = free_port()
    async with (
        http_service(port, service_env(database_url, **env), workdir) as process,
        remote_client(port) as client,
    ):
        yield process, client, port


async def metric(client: httpx.AsyncClient, line: str) -> float:
    """The value of one /metrics sample (0 when absent)."""
    for sample in (await client.get("/metrics")).text.splitlines():
        name, _, value = sample.rpartition(" ")
        if name == line:
            return float(value)
    return 0.0


async def silent_watchers(port: int, count: int, path: str) -> list[RawConnection]:
    """Watch streams whose clients send the request and never read."""
    connections = []
    for _ in range(count):
        connection = await RawConnection.open(port, receive_buffer=4096)
        await connection.send(watch_request(path))
        connections.append(connection)
    return connections


# -- watch streams ------------------------------------------------------------------


async def test_watchers_that_never_read_a_large_backlog_hold_little_memory(
    database_url: str, tmp_path: Path
) -> None:
    env = {"WATCH_HEARTBEAT": "1000", "THROTTLE_LIMIT": "0"}
    async with serving(database_url, tmp_path, **env) as (process, client, port):
        for start in range(0, BACKLOG_EVENTS, 100):
            items = [
                {"entityId": f"big{i}", "status": "online", "metadata": {"pad": PADDING}}
                for i in range(start, start + 100)
            ]
            written = await client.post(f"{USERS}/batch", json={"items": items}, timeout=60)
            assert written.status_code == 200, written.text
        assert process.process is not None
        pid = process.process.pid
        before = peak = resident_bytes(pid)

        silent = await silent_watchers(port, SILENT_WATCHERS, "/api/v1/watch?after=0")

        async def all_closed() -> bool:
            nonlocal peak
            peak = max(peak, resident_bytes(pid))
            health = await client.get("/health/liveness")
            assert health.status_code == 200
            cut = await metric(client, 'potok_watch_cut_off_total{reason="too_slow"}')
            return cut == SILENT_WATCHERS and await metric(client, "potok_watch_clients") == 0

        await eventually(all_closed, timeout=30, interval=0.05, what="the silent streams to close")
        assert peak - before < RSS_GROWTH_LIMIT, (before, peak)
        assert not server_sockets(port) & {c.local_port for c in silent}
        for connection in silent:
            connection.close()
    assert UNFINISHED_RESPONSE not in process.log


async def test_cut_off_streams_take_their_sockets_with_them(
    database_url: str, tmp_path: Path
) -> None:
    """Four rounds of five non-reading streams, each cut off: the server never holds
    more watch sockets than WATCH_MAX_CLIENTS, and `potok_watch_clients` counts them."""
    limit = 5
    env = {
        "WATCH_MAX_CLIENTS": str(limit),
        "WATCH_MAX_BUFFER_BYTES": "16384",
        "WATCH_HEARTBEAT": "1000",
        "THROTTLE_LIMIT": "0",
    }
    padding = "x" * 30_000
    async with serving(database_url, tmp_path, **env) as (process, client, port):
        for round_number in range(4):
            silent = await silent_watchers(port, limit, "/api/v1/watch")
            ports = {c.local_port for c in silent}

            async def opened() -> bool:
                return await metric(client, "potok_watch_clients") == limit

            await eventually(opened, what="the streams to open")
            assert len(server_sockets(port) & ports) == limit
            cut_before = await metric(client, 'potok_watch_cut_off_total{reason="too_slow"}')
            for i in range(400):
                answer = await client.post(
                    USERS,
                    json={
                        "entityId": f"r{round_number}-{i}",
                        "status": "online",
                        "metadata": {"pad": padding},
                    },
                )
                assert answer.status_code == 201, answer.text
                if i % 20 == 19:
                    cut = await metric(client, 'potok_watch_cut_off_total{reason="too_slow"}')
                    if cut - cut_before == limit:
                        break

            async def released(ports: set[int] = ports) -> bool:
                watching = await metric(client, "potok_watch_clients")
                held = len(server_sockets(port) & ports)
                assert held <= limit
                return watching == 0 and held == 0

            await eventually(released, what="the cut-off streams to release slot and socket")
            for connection in silent:
                connection.close()
        total = await metric(client, 'potok_watch_cut_off_total{reason="too_slow"}')
        assert total == 4 * limit
    assert UNFINISHED_RESPONSE not in process.log


async def test_a_slow_reader_gets_the_reset_after_what_it_was_sent(
    database_url: str, tmp_path: Path
) -> None:
    """A client that stops reading for a moment and then reads on gets every event
    written to it, in order, then `reset` `too_slow` naming the last of them."""
    env = {"WATCH_MAX_BUFFER_BYTES": "16384", "WATCH_HEARTBEAT": "20000"}
    async with serving(database_url, tmp_path, **env) as (_, client, port):
        paused = await RawConnection.open(port, receive_buffer=4096)
        await paused.send(watch_request())

        async def opened() -> bool:
            return await metric(client, "potok_watch_clients") == 1

        await eventually(opened, what="the stream to open")
        padding = "x" * 30_000
        for i in range(400):
            answer = await client.post(
                USERS, json={"entityId": f"s{i}", "status": "online", "metadata": {"pad": padding}}
            )
            assert answer.status_code == 201
            if i % 20 == 19 and await metric(
                client, 'potok_watch_cut_off_total{reason="too_slow"}'
            ):
                break
        received = await paused.read_until_closed(timeout=20)
        paused.close()
    body = decode_chunked(received.split(b"\r\n\r\n", 1)[1])
    blocks = [block for block in body.split(b"\n\n") if block.strip()]
    ids = [
        int(line[4:]) for block in blocks for line in block.split(b"\n") if line.startswith(b"id: ")
    ]
    assert ids == list(range(1, len(ids) + 1))
    reset = blocks[-1].split(b"\n")
    assert reset[0] == b"event: reset"
    assert orjson.loads(reset[1].removeprefix(b"data: ")) == {
        "reason": "too_slow",
        "resumeAfter": ids[-1],
    }


async def test_over_the_process_budget_the_streams_holding_most_are_closed(
    database_url: str, tmp_path: Path
) -> None:
    """WATCH_MEMORY_BUDGET bounds what all streams hold together: past it, the ones
    holding most are closed at once, while a stream that keeps up is untouched."""
    env = {"WATCH_MEMORY_BUDGET": "65536", "WATCH_HEARTBEAT": "20000", "THROTTLE_LIMIT": "0"}
    padding = "x" * 30_000
    async with serving(database_url, tmp_path, **env) as (process, client, port):
        async with watch(client) as reader:
            silent = await silent_watchers(port, 4, "/api/v1/watch")

            async def opened() -> bool:
                return await metric(client, "potok_watch_clients") == 5

            await eventually(opened, what="the streams to open")
            written = []
            for i in range(400):
                written.append(await put(client, f"m{i}", metadata={"pad": padding}))
                if i % 10 == 9 and await metric(
                    client, 'potok_watch_cut_off_total{reason="too_slow"}'
                ) == len(silent):
                    break
            received = await reader.take(len(written), timeout=30)
            assert [event.revision for event in received] == written

            async def closed() -> bool:
                return await metric(client, "potok_watch_clients") == 1

            await eventually(closed, what="the silent streams to be closed")
            assert not server_sockets(port) & {c.local_port for c in silent}
            for connection in silent:
                connection.close()
        assert await metric(client, 'potok_watch_cut_off_total{reason="too_slow"}') == len(silent)
    assert process.log.count('"why": "memory_budget"') == len(silent)
    assert UNFINISHED_RESPONSE not in process.log


async def put(client: httpx.AsyncClient, entity_id: str, **extra: object) -> int:
    answer = await client.post(USERS, json={"entityId": entity_id, "status": "online", **extra})
    assert answer.status_code == 201, answer.text
    revision: int = answer.json()["revision"]
    return revision


# -- connections --------------------------------------------------------------------

HALF_SENT = b"GET /api/v1/state-machines HTTP/1.1\r\nHost: x\r\n"
OVERFLOW = 32
"""Connections past MAX_CONNECTIONS still read for health probes (kit/server.py)."""
HALF_SENT_CONNECTIONS = 50


@pytest.mark.parametrize("workers", [1, 2])
async def test_half_sent_requests_and_idle_connections_are_closed(
    tmp_path: Path, workers: int
) -> None:
    port = free_port()
    env = service_env(
        f"sqlite+aiosqlite:///{tmp_path}/db.sqlite",
        REQUEST_HEADER_TIMEOUT="1000",
        KEEP_ALIVE_TIMEOUT="500",
    )
    process = ServiceProcess(
        ["serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)],
        env,
        tmp_path,
        "serve",
    )
    await process.start()
    try:
        await wait_ready(process, port)
        started = time.monotonic()
        half_sent = [await RawConnection.open(port) for _ in range(HALF_SENT_CONNECTIONS)]
        for connection in half_sent:
            await connection.send(HALF_SENT)
        silent = await RawConnection.open(port)
        async with remote_client(port) as client:
            assert (await client.get("/api/v1/state-machines")).status_code == 200
        answers = await asyncio.gather(
            *(c.read_until_closed(timeout=1 + 2) for c in [*half_sent, silent])
        )
        assert time.monotonic() - started < 1 + 2
        for answer in answers[:-1]:
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 408 "), answer
            assert orjson.loads(body)["code"] == "request_header_timeout"
        assert answers[-1] == b""  # nothing asked, nothing answered

        kept = await RawConnection.open(port)
        await kept.send(b"GET /health/liveness HTTP/1.1\r\nHost: x\r\n\r\n")
        idle_from = time.monotonic()
        answer = await kept.read_until_closed(timeout=3)
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert 0.4 < time.monotonic() - idle_from < 2.5  # KEEP_ALIVE_TIMEOUT, then closed

        # A later request on a kept-alive connection has the same deadline.
        kept = await RawConnection.open(port)
        await kept.send(b"GET /health/liveness HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await kept.read_response()).startswith(b"HTTP/1.1 200 ")
        await kept.send(HALF_SENT)
        answer = await kept.read_until_closed(timeout=1 + 2)
        assert answer.startswith(b"HTTP/1.1 408 "), answer
    finally:
        await process.stop()


async def test_connections_beyond_the_limit_are_refused_while_health_answers(
    tmp_path: Path,
) -> None:
    limit = 20
    port = free_port()
    env = service_env(
        f"sqlite+aiosqlite:///{tmp_path}/db.sqlite",
        MAX_CONNECTIONS=str(limit),
        REQUEST_HEADER_TIMEOUT="60000",
    )
    process = ServiceProcess(
        ["serve", "--host", "127.0.0.1", "--port", str(port)], env, tmp_path, "serve"
    )
    await process.start()
    try:
        await wait_ready(process, port)
        held = [await RawConnection.open(port) for _ in range(limit)]
        for connection in held:
            await connection.send(HALF_SENT)

        async def all_held() -> bool:
            return len(server_sockets(port) & {c.local_port for c in held}) == limit

        await eventually(all_held, what="the server to hold every connection")

        refused = await RawConnection.open(port)
        started = time.monotonic()
        await refused.send(HALF_SENT + b"x-api-key: gateway-service-key\r\n\r\n")
        answer = await refused.read_until_closed(timeout=5)
        assert time.monotonic() - started < 1
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 "), answer
        assert b"retry-after: 1" in head.lower()
        assert orjson.loads(body)["code"] == "too_many_connections"

        for path in (b"/health", b"/health/liveness", b"/health/readiness"):
            probe = await RawConnection.open(port)
            await probe.send(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path)
            answer = await probe.read_until_closed(timeout=5)
            assert answer.startswith(b"HTTP/1.1 200 "), answer

        # Past the overflow connections, a connection is closed as it arrives.
        overflow = [await RawConnection.open(port) for _ in range(OVERFLOW + 1)]
        beyond = await RawConnection.open(port)
        started = time.monotonic()
        assert await beyond.read_until_closed(timeout=5) == b""
        assert time.monotonic() - started < 0.5
        # An overflow connection gets a second for its head, then is closed.
        assert await overflow[0].read_until_closed(timeout=5) == b""
        for connection in [*held, *overflow, beyond]:
            connection.close()
        async with remote_client(port) as client:

            async def served() -> bool:
                return (await client.get("/api/v1/state-machines")).status_code == 200

            await eventually(served, what="requests to be served again")
    finally:
        await process.stop()
