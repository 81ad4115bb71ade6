"""Leases on SQLite and PostgreSQL: a lapse is one ordinary change, exactly
once, also after a crash and with several processes; heartbeats and writes
renew; the heartbeat route's answers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.hub import (
    ServiceProcess,
    all_changes,
    http_service,
    in_process,
    record,
    remote_client,
    service_env,
    settled_deliveries,
    subscribe,
    wait_ready,
    webhook_settings,
)
from tests.support.polling import eventually
from tests.support.ports import free_port
from tests.support.receivers import Receiver

SERVICES = "/api/v1/states/service"
Json = dict[str, Any]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    started = Receiver()
    await started.start()
    yield started
    await started.stop()


async def state(client: httpx.AsyncClient, entity: str, entity_id: str) -> Json | None:
    response = await client.get(f"/api/v1/states/{entity}/{entity_id}")
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    found: Json = response.json()
    return found


async def history(client: httpx.AsyncClient, entity: str, entity_id: str) -> list[Json]:
    response = await client.get(f"/api/v1/states/{entity}/{entity_id}/history")
    assert response.status_code == 200, response.text
    items: list[Json] = response.json()["items"]
    return items


async def until_status(
    client: httpx.AsyncClient,
    entity_id: str,
    status: str,
    timeout: float = 10,  # noqa: ASYNC109
) -> Json:
    async def reached() -> Json | None:
        found = await state(client, "service", entity_id)
        return found if found is not None and found["status"] == status else None

    return await eventually(reached, timeout=timeout, what=f"{entity_id} to be {status}")


def lapses(items: list[Json]) -> list[Json]:
    return [item for item in items if item["actor"] == "system:lease"]


async def test_a_lapsed_lease_is_one_change_with_one_webhook(
    database_url: str, receiver: Receiver
) -> None:
    async with in_process(webhook_settings(database_url)) as client:
        subscription = await subscribe(client, receiver.url(), ["entity.*"])
        created = await record(
            client, "service", "billing-1", "up", metadata={"url": "http://10.0.0.5"}, ttl=1
        )
        assert created["lease"]["ttl"] == 1
        expires = datetime.fromisoformat(created["lease"]["expiresAt"])
        assert expires > datetime.fromisoformat(created["updatedAt"])

        down = await until_status(client, "billing-1", "down")
        assert "lease" not in down
        assert down["metadata"] == {"url": "http://10.0.0.5"}
        lapsed = lapses(await history(client, "service", "billing-1"))
        assert [(h["previousStatus"], h["newStatus"], h["reason"]) for h in lapsed] == [
            ("up", "down", "lease expired")
        ]
        log = await settled_deliveries(client, subscription["id"], 2)
        assert [item["event"] for item in log] == ["entity.created", "entity.updated"]
        # Nothing more happens later.
        await asyncio.sleep(0.6)
        assert len(await history(client, "service", "billing-1")) == 2
        changes = await all_changes(client)
        assert [c["data"]["reason"] for c in changes] == [None, "lease expired"]


async def test_heartbeats_and_writes_renew_and_ttl_zero_drops(database_url: str) -> None:
    async with in_process(webhook_settings(database_url)) as client:
        first = await record(client, "service", "beating", "up", ttl=1)
        await record(client, "service", "written", "up", ttl=1)
        await record(client, "service", "dropped", "up", ttl=1)
        dropped = await client.patch(f"{SERVICES}/dropped", json={"ttl": 0})
        assert dropped.status_code == 200
        assert "lease" not in dropped.json()

        latest = first["lease"]["expiresAt"]
        for _ in range(6):
            await asyncio.sleep(0.3)
            beat = await client.post(f"{SERVICES}/beating/heartbeat")
            assert beat.status_code == 200, beat.text
            assert beat.json()["ttl"] == 1
            assert beat.json()["expiresAt"] > latest
            latest = beat.json()["expiresAt"]
            written = await client.patch(f"{SERVICES}/written", json={"metadata": {"n": 1}})
            assert written.status_code == 200, written.text
        seen = await state(client, "service", "beating")
        assert seen is not None
        assert seen["status"] == "up"
        assert seen["lease"]["expiresAt"] == latest  # read fresh, not from a cache
        assert seen["version"] == 1  # heartbeats write no revision
        assert (await state(client, "service", "written"))["status"] == "up"  # type: ignore[index]

        await until_status(client, "beating", "down")
        await until_status(client, "written", "down")
        await asyncio.sleep(0.3)
        assert (await state(client, "service", "dropped"))["status"] == "up"  # type: ignore[index]


async def test_a_user_goes_offline_and_an_untyped_state_is_deleted(database_url: str) -> None:
    async with in_process(webhook_settings(database_url)) as client:
        unleased = await record(client, "user", "u0", "online")
        assert "lease" not in unleased  # a user holds a lease only when a write asks
        await record(client, "user", "u1", "online", ttl=1)
        await record(client, "session", "s1", "open", ttl=1)  # no table: deleted on lapse

        async def lapsed() -> Json | None:
            user = await state(client, "user", "u1")
            gone = await state(client, "session", "s1") is None
            return user if gone and user is not None and user["status"] == "offline" else None

        user = await eventually(lapsed, timeout=10, what="the leases to lapse")
        assert "lease" not in user
        assert [h["actor"] for h in lapses(await history(client, "user", "u1"))] == ["system:lease"]
        changes = [c for c in await all_changes(client) if c["data"].get("reason")]
        by_id = {c["data"]["id"]: c for c in changes if c["data"]["reason"] == "lease expired"}
        assert by_id["u1"]["event"] == "entity.updated"
        assert by_id["u1"]["data"]["newStatus"] == "offline"
        assert by_id["s1"]["event"] == "entity.deleted"
        assert (await state(client, "user", "u0")) == unleased  # never leased: untouched


async def test_heartbeat_answers_and_bad_ttls(database_url: str) -> None:
    async with in_process(webhook_settings(database_url)) as client:
        await record(client, "service", "leased", "up", ttl=60)
        await record(client, "task", "plain", "created")

        missing = await client.post(f"{SERVICES}/nobody/heartbeat")
        assert missing.status_code == 404
        assert missing.json()["code"] == "state_not_found"
        no_lease = await client.post("/api/v1/states/task/plain/heartbeat")
        assert no_lease.status_code == 409
        assert no_lease.json()["code"] == "no_lease"
        longer = await client.post(f"{SERVICES}/leased/heartbeat", json={"ttl": 120})
        assert longer.status_code == 200
        assert longer.json()["ttl"] == 120

        for bad in (-1, 0, 10**9, "soon", 1.5):
            answer = await client.post(f"{SERVICES}/leased/heartbeat", json={"ttl": bad})
            assert answer.status_code == 422, (bad, answer.text)
        for bad in (-1, 10**9, "soon"):
            answer = await client.post(SERVICES, json={"entityId": "x", "status": "up", "ttl": bad})
            assert answer.status_code == 422, (bad, answer.text)

        many = await client.post(
            f"{SERVICES}/heartbeat", json={"ids": ["leased", "nobody", "leased"], "ttl": 30}
        )
        assert many.status_code == 200, many.text
        body = many.json()
        assert (body["renewed"], body["failed"]) == (2, 1)
        assert [(i["entityId"], i["ok"], i["error"]) for i in body["items"]] == [
            ("leased", True, None),
            ("nobody", False, "state_not_found"),
            ("leased", True, None),
        ]
        assert body["items"][0]["lease"]["ttl"] == 30

        # A built-in type's default lease: a new service holds one without asking.
        registered = await record(client, "service", "default", "starting")
        assert registered["lease"]["ttl"] == 15
        listed = await client.get(SERVICES, params={"status": "starting"})
        assert listed.json()["items"][0]["lease"]["ttl"] == 15

        metrics = (await client.get("/metrics")).text
        assert 'potok_lease_heartbeats_total{outcome="renewed"} 3.0' in metrics
        assert 'potok_lease_heartbeats_total{outcome="refused"} 3.0' in metrics


async def test_a_lease_still_lapses_once_after_kill_9(database_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = service_env(database_url)
    server = ServiceProcess(
        ["serve", "--host", "127.0.0.1", "--port", str(port)], env, tmp_path, "first"
    )
    await server.start()
    await wait_ready(server, port)
    async with remote_client(port) as client:
        await record(client, "service", "crashy", "up", ttl=1)
    await server.kill()
    await asyncio.sleep(1.5)  # the deadline passes while nothing runs

    async with http_service(port, env, tmp_path, "second"), remote_client(port) as client:
        await until_status(client, "crashy", "down")
        await asyncio.sleep(0.6)
        assert len(lapses(await history(client, "service", "crashy"))) == 1


async def test_two_processes_expire_each_lease_once(database_url: str, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    env = service_env(database_url)
    port_a, port_b = free_port(), free_port()
    async with (
        http_service(port_a, env, tmp_path / "a", "a"),
        http_service(port_b, env, tmp_path / "b", "b"),
        remote_client(port_a) as client,
    ):
        ids = [f"inst-{i}" for i in range(40)]
        response = await client.post(
            f"{SERVICES}/batch",
            json={"items": [{"entityId": i, "status": "up", "ttl": 1} for i in ids]},
        )
        assert response.status_code == 200, response.text
        started = time.monotonic()

        async def all_down() -> bool:
            listed = await client.get(SERVICES, params={"status": "down", "limit": 100})
            return len(listed.json()["items"]) == len(ids)

        await eventually(all_down, timeout=15, what="every lease to lapse")
        assert time.monotonic() - started < 1 + 2  # the deadline, plus polling and the writes
        await asyncio.sleep(0.6)
        for entity_id in ids:
            assert len(lapses(await history(client, "service", entity_id))) == 1, entity_id
