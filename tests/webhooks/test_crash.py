"""No loss on crash: the real server is killed with SIGKILL while deliveries are
queued and failing, or while finished attempts wait to be recorded in a batch,
restarted, and every event still arrives (docs/guarantees.md: at-least-once from the
transactional outbox)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import httpx
from sqlalchemy.engine import make_url

from tests.conftest import asyncpg_dsn
from tests.support.hub import (
    all_changes,
    deliveries,
    http_service,
    remote_client,
    service_env,
    settled_deliveries,
    subscribe,
)
from tests.support.polling import eventually
from tests.support.ports import free_port
from tests.support.receivers import Reply, running_receiver

EVENTS = 200


async def test_kill_9_then_restart_delivers_every_event(database_url: str, tmp_path: Path) -> None:
    receiver_port, api_port = free_port(), free_port()
    env = service_env(
        database_url,
        WEBHOOK_RETRY_DELAY="20",
        WEBHOOK_MAX_RETRIES="20",
        WEBHOOK_DELIVERY_TIMEOUT="1000",
        WEBHOOK_MAX_CONSECUTIVE_FAILURES="1000000",
    )
    async with http_service(api_port, env, tmp_path, "first") as first:
        async with remote_client(api_port) as client:
            # Nothing listens there yet: every attempt is refused.
            sub = await subscribe(client, f"http://127.0.0.1:{receiver_port}/hook")
            batch = await client.post(
                "/api/v1/states/user/batch",
                json={
                    "items": [{"entityId": f"u{n}", "status": "online"} for n in range(EVENTS // 2)]
                },
            )
            assert batch.status_code == 200, batch.text
            published = await asyncio.gather(
                *(
                    client.post("/api/v1/events", json={"type": "custom.crash", "data": {"n": n}})
                    for n in range(EVENTS // 2)
                )
            )
            assert all(p.status_code == 201 for p in published)

            async def retrying() -> bool:
                return any(d["attempts"] > 0 for d in await deliveries(client, sub["id"]))

            # Killed while deliveries are queued, some already retrying.
            await eventually(retrying, what="the first failed attempts")
        await first.kill()
        assert first.process is not None
        assert first.process.returncode == -9

    async with http_service(api_port, env, tmp_path, "second"), remote_client(api_port) as client:
        expected = {change["id"] for change in await all_changes(client)}
        assert len(expected) == EVENTS
        async with running_receiver(receiver_port) as receiver:

            async def all_arrived() -> bool:
                return expected <= {r.event_id for r in receiver.requests}

            await eventually(all_arrived, timeout=60, interval=0.1, what="all events")
            log = await settled_deliveries(client, sub["id"], EVENTS, timeout=30)

        assert {d["eventId"] for d in log} == expected
        assert all(d["status"] == "succeeded" for d in log)
        by_id: dict[str, set[bytes]] = {}
        for request in receiver.requests:
            assert request.headers["x-webhook-id"] == request.event_id
            assert request.payload["id"] == request.event_id
            by_id.setdefault(request.event_id, set()).add(request.body)
        # A repeat (an attempt cut short by the kill) is the same message.
        assert all(len(bodies) == 1 for bodies in by_id.values())


# -- attempts answered, their records not yet committed -------------------------------

IN_FLIGHT = 32
Probe = Callable[[], Awaitable[bool]]


async def publish_events(client: httpx.AsyncClient) -> None:
    """EVENTS events, each its own ordering key, so many can be in flight."""
    batch = await client.post(
        "/api/v1/states/user/batch",
        json={"items": [{"entityId": f"u{n}", "status": "online"} for n in range(EVENTS // 2)]},
    )
    assert batch.status_code == 200, batch.text
    published = await asyncio.gather(
        *(
            client.post("/api/v1/events", json={"type": "custom.crash", "data": {"n": n}})
            for n in range(EVENTS // 2)
        )
    )
    assert all(p.status_code == 201 for p in published)


@asynccontextmanager
async def attempt_records_blocked(database_url: str) -> AsyncIterator[Probe]:
    """Hold a lock the service needs to record attempts (SQLite: the database
    write lock; PostgreSQL: the attempts table), until the block ends. Yields a
    probe: whether a batch of records waits for the lock now (PostgreSQL shows
    it; on SQLite nothing does, and the probe says yes)."""
    if database_url.startswith("sqlite"):
        path = make_url(database_url).database
        assert path is not None
        connection = sqlite3.connect(
            path, timeout=30, isolation_level=None, check_same_thread=False
        )
        try:
            await asyncio.to_thread(connection.execute, "BEGIN IMMEDIATE")

            async def assumed() -> bool:
                return True

            yield assumed
        finally:
            await asyncio.to_thread(connection.execute, "ROLLBACK")
            connection.close()
        return
    postgres = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        transaction = postgres.transaction()
        await transaction.start()
        await postgres.execute("LOCK TABLE webhook_attempts IN SHARE ROW EXCLUSIVE MODE")

        async def waiting() -> bool:
            count = await postgres.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND query LIKE '%INSERT INTO webhook_attempts%'"
            )
            return bool(count)

        yield waiting
        await transaction.rollback()
    finally:
        await postgres.close()


async def test_kill_9_while_finished_attempts_wait_to_be_recorded(
    database_url: str, tmp_path: Path
) -> None:
    """A slow receiver holds many attempts in flight; it answers them all once
    their records cannot commit, and the server is killed while those records
    wait for their batch. After a restart every event is delivered (the
    answered-but-unrecorded ones again), none is lost, and the delivery log
    ends with every delivery succeeded."""
    api_port = free_port()
    env = service_env(
        database_url,
        WEBHOOK_RETRY_DELAY="20",
        WEBHOOK_MAX_RETRIES="20",
        WEBHOOK_DELIVERY_TIMEOUT="2000",
        WEBHOOK_MAX_CONSECUTIVE_FAILURES="1000000",
        WEBHOOK_WORKER_CONCURRENCY="64",
        WEBHOOK_MAX_IN_FLIGHT_PER_SUBSCRIPTION=str(IN_FLIGHT),
    )
    async with running_receiver() as receiver:
        gate = asyncio.Event()
        receiver.answer(then=Reply(gate=gate))  # nothing is answered until the gate opens
        async with http_service(api_port, env, tmp_path, "first") as first:
            async with remote_client(api_port) as client:
                sub = await subscribe(client, receiver.url())
                await publish_events(client)
            await receiver.wait_for(IN_FLIGHT, timeout=30)
            async with attempt_records_blocked(database_url) as records_waiting:
                gate.set()

                async def all_answered() -> bool:
                    return receiver.answered >= len(receiver.requests) >= IN_FLIGHT

                await eventually(all_answered, what="the attempts in flight to be answered")
                await eventually(records_waiting, what="their records waiting for the lock")
                await first.kill()
            assert first.process is not None
            assert first.process.returncode == -9
        answered_before_kill = {request.event_id for request in receiver.requests}
        assert len(answered_before_kill) >= IN_FLIGHT
        before_restart = len(receiver.requests)

        async with (
            http_service(api_port, env, tmp_path, "second"),
            remote_client(api_port) as client,
        ):
            expected = {change["id"] for change in await all_changes(client)}
            assert len(expected) == EVENTS

            async def all_arrived() -> bool:
                return expected <= {r.event_id for r in receiver.requests}

            await eventually(all_arrived, timeout=60, interval=0.1, what="all events")
            log = await settled_deliveries(client, sub["id"], EVENTS, timeout=60)

    assert len(log) == EVENTS
    assert {d["eventId"] for d in log} == expected
    assert all(d["status"] == "succeeded" for d in log), [
        d for d in log if d["status"] != "succeeded"
    ]
    # Answered before the kill, never recorded: sent again after the restart.
    sent_again = {request.event_id for request in receiver.requests[before_restart:]}
    assert answered_before_kill <= sent_again
    by_id: dict[str, set[bytes]] = {}
    for request in receiver.requests:
        by_id.setdefault(request.event_id, set()).add(request.body)
    assert all(len(bodies) == 1 for bodies in by_id.values())  # a repeat is the same message
