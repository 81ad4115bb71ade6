"""Watch streams against the real server (`potok-state serve`) on SQLite and
PostgreSQL, read by a real SSE client: live order, filters, resume with no gap
and no duplicate, list-then-watch, resets, limits, other processes' commits,
SIGTERM."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import asyncpg
import httpx
import pytest

from tests.conftest import asyncpg_dsn
from tests.support.connections import RawConnection, decode_chunked, watch_request
from tests.support.hub import (
    ServiceProcess,
    http_service,
    remote_client,
    service_env,
    wait_ready,
)
from tests.support.polling import eventually
from tests.support.ports import free_port
from tests.support.sse import SseEvent, SseParser, watch

USERS = "/api/v1/states/user"


@asynccontextmanager
async def server(
    database_url: str, workdir: Path, name: str = "serve", **env: str
) -> AsyncIterator[tuple[ServiceProcess, httpx.AsyncClient]]:
    port = free_port()
    async with (
        http_service(port, service_env(database_url, **env), workdir, name) as process,
        remote_client(port) as client,
    ):
        yield process, client


async def put(client: httpx.AsyncClient, entity_id: str, status: str, **extra: Any) -> int:
    response = await client.post(USERS, json={"entityId": entity_id, "status": status, **extra})
    assert response.status_code in (200, 201), response.text
    revision: int = response.json()["revision"]
    return revision


def revisions(events: list[SseEvent]) -> list[int]:
    return [event.revision for event in events]


async def test_live_events_arrive_in_revision_order_with_filters(
    database_url: str, tmp_path: Path
) -> None:
    async with (
        server(database_url, tmp_path) as (_, client),
        watch(client) as everything,
        watch(client, f"{USERS}/watch", params={"status": "online"}) as online,
        watch(client, params={"entityId": "u1"}) as u1,
        watch(client, params={"event": "custom.*"}) as custom,
        watch(client, "/api/v1/states/task/watch") as tasks,
    ):
        written = [
            await put(client, "u1", "online"),
            await put(client, "u2", "online"),
            await put(client, "u1", "busy"),
            await put(client, "u10", "offline"),
        ]
        published = await client.post(
            "/api/v1/events", json={"type": "custom.deploy", "data": {"v": 2}}
        )
        assert published.status_code == 201
        deleted = await client.delete(f"{USERS}/u2")
        assert deleted.status_code == 204
        task = await client.post(
            "/api/v1/states/task", json={"entityId": "t1", "status": "in_progress"}
        )
        last = task.json()["revision"]

        seen = await everything.take(7)
        assert revisions(seen) == [*written, written[-1] + 1, written[-1] + 2, last]
        assert [event.event for event in seen] == [
            "entity.created",
            "entity.created",
            "entity.updated",
            "entity.created",
            "custom.deploy",
            "entity.deleted",
            "entity.created",
        ]
        first = seen[0].json
        assert first["revision"] == written[0]
        assert first["data"]["id"] == "u1"
        assert first["data"]["newStatus"] == "online"
        assert everything.retry == 2000

        # Into or out of "online": u1 and u2 created online, u1 left it, u2
        # deleted while online.
        into_or_out = await online.take(4)
        assert revisions(into_or_out) == [written[0], written[1], written[2], written[-1] + 2]
        assert revisions(await u1.take(3)) == [written[0], written[2], written[3]]
        assert [event.json["data"] for event in await custom.take(1)] == [{"v": 2}]
        assert revisions(await tasks.take(1)) == [last]

        # The same JSON as the change feed.
        feed = await client.get("/api/v1/changes", params={"after": 0, "limit": 10})
        assert [event.json for event in seen] == feed.json()["items"]


async def test_resume_after_a_disconnect_replays_exactly_what_was_missed(
    database_url: str, tmp_path: Path
) -> None:
    async with server(database_url, tmp_path) as (_, client):
        first = await put(client, "u0", "online")
        writes = asyncio.create_task(_write_many(client, [f"r{i}" for i in range(60)], pause=0.002))
        async with watch(client, params={"after": first - 1}) as stream:
            seen = await stream.take(17)
        # Disconnected mid-flow; the writes go on.
        written = await writes
        more = [await put(client, f"late{i}", "online") for i in range(3)]
        last_id = seen[-1].id
        async with watch(client, headers={"Last-Event-ID": str(last_id)}) as resumed:
            replayed = await resumed.take(len(written) + len(more) + 1 - len(seen))
            live = await put(client, "live", "online")
            after_seam = await resumed.take(1)
        everything = revisions(seen) + revisions(replayed) + revisions(after_seam)
        assert everything == [first, *written, *more, live]


async def _write_many(client: httpx.AsyncClient, ids: list[str], pause: float) -> list[int]:
    written = []
    for entity_id in ids:
        written.append(await put(client, entity_id, "online"))
        await asyncio.sleep(pause)
    return written


async def test_list_then_watch_misses_nothing(database_url: str, tmp_path: Path) -> None:
    async with server(database_url, tmp_path) as (_, client):
        for i in range(5):
            await put(client, f"u{i}", "online")
        await client.post("/api/v1/states/task", json={"entityId": "t1", "status": "in_progress"})
        page = await client.get(USERS, params={"status": "online"})
        listed_at = int(page.headers["x-potok-revision"])
        assert listed_at == 6
        assert {item["entityId"] for item in page.json()["items"]} == {f"u{i}" for i in range(5)}
        changed = await put(client, "u1", "busy")
        async with watch(client, f"{USERS}/watch", params={"after": listed_at}) as stream:
            assert revisions(await stream.take(1)) == [changed]

        empty = await client.get("/api/v1/states/nothing")
        assert empty.json()["items"] == []
        assert int(empty.headers["x-potok-revision"]) == changed


async def test_a_revision_no_longer_kept_gets_a_reset(database_url: str, tmp_path: Path) -> None:
    async with server(database_url, tmp_path) as (_, client):
        for i in range(6):
            await put(client, f"u{i}", "online")
        await _prune_outbox(database_url, below=4)  # as retention would

        async with watch(client, params={"after": 1}) as stream:
            events = await stream.rest()
        assert [(e.event, e.id) for e in events] == [("reset", None)]
        assert events[0].json == {"reason": "revision_too_old", "oldestRevision": 4, "revision": 6}

        async with watch(client, params={"after": 3, "timeout": 0}) as stream:
            assert revisions(await stream.rest()) == [4, 5, 6]

        async with watch(client, headers={"Last-Event-ID": "99"}) as stream:
            events = await stream.rest()
        assert events[0].json["reason"] == "revision_unknown"

        metrics = (await client.get("/metrics")).text
        assert 'potok_watch_cut_off_total{reason="revision_too_old"} 1.0' in metrics


async def _prune_outbox(database_url: str, below: int) -> None:
    if database_url.startswith("sqlite"):
        import sqlite3

        path = database_url.split("///", 1)[1]
        with sqlite3.connect(path) as connection:
            connection.execute("DELETE FROM outbox WHERE revision < ?", (below,))
        return
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await connection.execute("DELETE FROM outbox WHERE revision < $1", below)
    finally:
        await connection.close()


async def test_bad_requests_limits_and_reserved_ids(database_url: str, tmp_path: Path) -> None:
    async with server(database_url, tmp_path, WATCH_MAX_CLIENTS="2") as (_, client):
        anonymous = await client.get("/api/v1/watch", headers={"x-api-key": ""})
        assert anonymous.status_code == 401
        for bad in (b"abc", b"-1", b"\xb2", b"1" * 30):
            answer = await client.get("/api/v1/watch", headers={b"Last-Event-ID": bad})
            assert answer.status_code == 400, (bad, answer.text)
        for params in ({"event": "entity.moved"}, {"status": "Not A Status"}, {"after": -1}):
            answer = await client.get("/api/v1/watch", params=params)
            assert answer.status_code == 422, (params, answer.text)

        async with watch(client), watch(client):
            third = await client.get("/api/v1/watch")
            assert third.status_code == 429
            assert third.json()["details"] == {"limit": 2}
            metrics = (await client.get("/metrics")).text
            assert "potok_watch_clients 2.0" in metrics

        async def released() -> bool:
            return "potok_watch_clients 0.0" in (await client.get("/metrics")).text

        await eventually(released, what="the streams to be released")

        reserved = await client.post(USERS, json={"entityId": "watch", "status": "online"})
        assert reserved.status_code == 422
        assert reserved.json()["code"] == "reserved_id"


async def test_a_client_that_never_reads_is_cut_off_and_writers_go_on(
    database_url: str, tmp_path: Path
) -> None:
    env = {"WATCH_MAX_BUFFER_BYTES": "65536"}
    async with server(database_url, tmp_path, **env) as (_, client):
        assert client.base_url.port is not None
        # A raw connection with a small receive window that never reads.
        silent = await RawConnection.open(client.base_url.port, receive_buffer=4096)
        await silent.send(watch_request())

        async def watching() -> bool:
            return "potok_watch_clients 1.0" in (await client.get("/metrics")).text

        await eventually(watching, what="the stream to open")

        async with watch(client, params={"entityId": "big"}) as healthy:
            reading = asyncio.create_task(healthy.take(300, timeout=30))
            padding = "x" * 30_000
            started = time.monotonic()
            written = [
                await put(client, f"big{i}", "online", metadata={"pad": padding})
                for i in range(300)
            ]
            elapsed = time.monotonic() - started
            assert revisions(await reading) == written

        async def cut() -> bool:
            text = (await client.get("/metrics")).text
            return 'potok_watch_cut_off_total{reason="too_slow"} 1.0' in text

        await eventually(cut, what="the silent client to be cut off")
        assert elapsed < 60, elapsed  # the writers were never held up for the reader
        silent.close()


async def test_a_change_on_another_process_reaches_watchers_within_a_second(
    database_url: str, tmp_path: Path
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with (
        server(database_url, tmp_path / "a", "a") as (_, replica_a),
        server(database_url, tmp_path / "b", "b") as (_, replica_b),
        watch(replica_b) as stream,
    ):
        for i in range(5):
            started = time.monotonic()
            revision = await put(replica_a, f"far{i}", "online")
            event = await stream.next(timeout=5)
            assert event is not None
            assert event.revision == revision
            assert time.monotonic() - started < 1.0


async def test_sigterm_ends_streams_and_clients_resume_on_the_restarted_server(
    database_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = service_env(database_url)
    async with http_service(port, env, tmp_path, "first") as process, remote_client(port) as client:
        first = await put(client, "s1", "online")
        async with watch(client, params={"after": 0}) as stream:
            assert revisions(await stream.take(1)) == [first]
            started = time.monotonic()
            await process.stop()  # SIGTERM
            assert await stream.rest() == []
            assert time.monotonic() - started < 5  # not the 30 s grace period
        last_seen = first

    async with http_service(port, env, tmp_path, "second"), remote_client(port) as client:
        later = [await put(client, f"s{i}", "online") for i in range(2, 5)]
        async with watch(client, headers={"Last-Event-ID": str(last_seen)}) as stream:
            assert revisions(await stream.take(3)) == later


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_workers_on_sqlite_hear_each_other(database_url: str, tmp_path: Path) -> None:
    """`serve --workers 2`: whichever process holds the stream hears the other's writes."""
    port = free_port()
    process = ServiceProcess(
        ["serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
        service_env(database_url),
        tmp_path,
        "workers",
    )
    await process.start()
    try:
        await wait_ready(process, port)
        async with remote_client(port) as watcher_client, watch(watcher_client) as stream:
            # Fresh connections land on either worker.
            for i in range(10):
                async with remote_client(port) as writer:
                    started = time.monotonic()
                    revision = await put(writer, f"w{i}", "online")
                event = await stream.next(timeout=5)
                assert event is not None
                assert event.revision == revision
                assert time.monotonic() - started < 1.0
    finally:
        await process.stop()


async def test_heartbeats_and_batches_larger_than_the_buffer(
    database_url: str, tmp_path: Path
) -> None:
    env = {"WATCH_HEARTBEAT": "200", "WATCH_MAX_BUFFER_BYTES": "16384"}
    padding = "x" * 2000
    async with server(database_url, tmp_path, **env) as (_, client):
        async with watch(client) as stream:
            items = [
                {"entityId": f"b{i}", "status": "online", "metadata": {"pad": padding}}
                for i in range(50)
            ]
            response = await client.post(f"{USERS}/batch", json={"items": items})
            assert response.status_code == 200, response.text
            # One change set of 50 events, six times the stream's buffer: a reader
            # that keeps up is never cut off for it.
            assert revisions(await stream.take(50)) == list(range(1, 51))
            await asyncio.sleep(0.7)
            later = await put(client, "after-idle", "online")
            assert revisions(await stream.take(1)) == [later]
            assert stream.heartbeats >= 2
        metrics = (await client.get("/metrics")).text
        assert "potok_watch_cut_off_total{" not in metrics


async def test_no_block_without_data_reaches_an_httpx_sse_client(
    database_url: str, tmp_path: Path
) -> None:
    """httpx-sse hands a block without data over as an empty message (a lone
    `retry:` block before anything else; after the first event, any blank line).
    The stream sends none: `retry:` goes with the first event, heartbeats are bare
    comment lines."""
    async with server(database_url, tmp_path, WATCH_HEARTBEAT="200") as (_, client):
        assert client.base_url.port is not None
        raw = await RawConnection.open(client.base_url.port)
        await raw.send(watch_request("/api/v1/watch?timeout=1.5"))

        async def opened() -> bool:
            return "potok_watch_clients 1.0" in (await client.get("/metrics")).text

        await eventually(opened, what="the stream to open")
        written = await put(client, "c1", "online")
        answer = await raw.read_until_closed(timeout=10)  # the stream ends after 1.5 s
        raw.close()
        events, decoder = _decode(answer)
        assert [(event.event, event.revision) for event in events] == [("entity.created", written)]
        assert events[0].json["data"]["id"] == "c1"
        assert decoder.retry == 2000
        assert decoder.heartbeats >= 2

        for params in ({"after": 0, "timeout": 0}, {"after": 99}):
            raw = await RawConnection.open(client.base_url.port)
            await raw.send(watch_request("/api/v1/watch?" + urlencode(params)))
            events, decoder = _decode(await raw.read_until_closed(timeout=10))
            raw.close()
            assert decoder.retry == 2000
            assert [event.event for event in events] == (
                ["entity.created"] if params["after"] == 0 else ["reset"]
            ), events
            assert all(event.json for event in events)


def _decode(answer: bytes) -> tuple[list[SseEvent], SseParser]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    lines = decode_chunked(body).decode().split("\n")
    assert lines.pop() == ""  # what follows the last line break: no line at all
    decoder = SseParser()
    events = [event for line in lines if (event := decoder.line(line)) is not None]
    return events, decoder


async def test_under_another_asgi_server_the_stream_goes_through_send(
    client: httpx.AsyncClient,
) -> None:
    """A server that does not hand its transport over (here httpx's in-process ASGI
    transport) still gets the stream, through ASGI `send`."""
    written = [await put(client, f"a{i}", "online") for i in range(3)]
    answer = await client.get("/api/v1/watch", params={"after": 0, "timeout": 0})
    assert answer.status_code == 200
    lines = answer.text.split("\n")
    assert lines.pop() == ""
    decoder = SseParser()
    events = [event for line in lines if (event := decoder.line(line)) is not None]
    assert revisions(events) == written
    assert decoder.retry == 2000
