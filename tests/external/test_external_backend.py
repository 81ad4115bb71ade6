"""The service with STORAGE_BACKEND=external: every accepted change reaches the
Admin Service in order with its history, through outages, refusals and
crashes, and the service says how far behind it is (docs/external.md)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from potok_state.settings import Settings
from tests.conftest import make_settings
from tests.support.admin_service import AdminService, external_backend
from tests.support.hub import (
    http_service,
    in_process,
    record,
    remote_client,
    service_env,
    settled_deliveries,
    subscribe,
    webhook_settings,
)
from tests.support.polling import eventually
from tests.support.ports import free_port
from tests.support.receivers import running_receiver

Json = dict[str, Any]
OUTAGE_SECONDS = 10.0


def external_settings(database_url: str, admin: AdminService, **overrides: Any) -> Settings:
    external_db = overrides.pop("external_db", {})
    return make_settings(database_url, **external_backend(admin, **external_db), **overrides)


def collections(settings: Settings) -> tuple[str, str]:
    return settings.external_db.states_collection, settings.external_db.history_collection


async def synced(client: httpx.AsyncClient, timeout: float = 20.0) -> Json:  # noqa: ASYNC109
    """/health once nothing waits for the Admin Service."""

    async def empty() -> Json | None:
        health: Json = (await client.get("/health")).json()
        external = health["checks"]["externalDb"]
        return health if external["backlog"] == 0 else None

    return await eventually(empty, timeout=timeout, what="an empty backlog")


async def test_changes_reach_the_admin_service_in_order(
    database_url: str, admin_service: AdminService
) -> None:
    settings = external_settings(database_url, admin_service)
    states, history = collections(settings)
    async with in_process(settings) as client:
        await record(client, "job", "task_123", "pending", metadata={"priority": "high"})
        await record(client, "job", "task_123", "in_progress")
        await record(client, "job", "task_9", "pending")
        assert (await client.delete("/api/v1/states/job/task_9")).status_code == 204
        await record(client, "job", "task_123", "completed", metadata={"result": "ok"})
        health = await synced(client)
        assert health["checks"]["externalDb"]["status"] == "up"
        local = (await client.get("/api/v1/states/job/task_123")).json()

    documents = await admin_service.documents(states)
    assert len(documents) == 1
    stored = documents[0]
    assert stored["id"] == "job:task_123"
    assert stored["entityType"] == local["entity"] == "job"
    fields = ("entityId", "status", "metadata", "version", "revision")
    assert {k: stored[k] for k in fields} == {k: local[k] for k in fields}
    assert stored["createdAt"] == local["createdAt"]
    assert stored["updatedAt"] == local["updatedAt"]
    records = await admin_service.documents(history)
    for entity_id in ("task_123", "task_9"):  # each entity's records arrived in order
        revisions = [r["revision"] for r in records if r["entityId"] == entity_id]
        assert revisions == sorted(revisions)
    records.sort(key=lambda r: int(r["revision"]))
    assert [(r["entityId"], r["newStatus"]) for r in records] == [
        ("task_123", "pending"),
        ("task_123", "in_progress"),
        ("task_9", "pending"),
        ("task_9", None),
        ("task_123", "completed"),
    ]
    assert records[0]["metadata"] == {"priority": "high"}
    assert records[0]["actor"] == "gateway"


async def test_health_readiness_and_metrics_report_the_admin_service(
    database_url: str, admin_service: AdminService
) -> None:
    settings = external_settings(database_url, admin_service)
    async with in_process(settings) as client:
        ready = await client.get("/health/readiness")
        assert ready.status_code == 200
        assert ready.json()["externalDb"] is True
        await record(client, "job", "t1", "pending")
        await synced(client)
        metrics = (await client.get("/metrics")).text
        assert "potok_external_backlog 0.0" in metrics
        assert 'potok_external_requests_total{outcome="ok"}' in metrics

        await admin_service.kill()
        ready = await client.get("/health/readiness")
        assert ready.status_code == 200  # writes are still accepted
        assert ready.json() == {
            "ready": True,
            "storage": True,
            "redis": "disabled",
            "externalDb": False,
        }
        await record(client, "job", "t1", "in_progress")
        health = (await client.get("/health")).json()
        assert health["status"] == "degraded"
        external = health["checks"]["externalDb"]
        assert external["status"] == "down"
        assert external["backlog"] == 1
        assert external["oldestUnsyncedSeconds"] >= 0


async def test_an_outage_loses_nothing_and_keeps_order(
    database_url: str, admin_service: AdminService
) -> None:
    """The Admin Service is away while 500 writes are accepted; when it
    returns, every change is there in order, and webhooks went out once each."""
    settings = external_settings(
        database_url, admin_service, webhooks=webhook_settings(database_url).webhooks
    )
    async with running_receiver() as hooks, in_process(settings) as client:
        subscription = await subscribe(client, hooks.url(), ["entity.*"])
        await admin_service.kill()
        gone = time.monotonic()
        for n in range(500):
            await record(client, "job", f"t{n % 50}", "pending" if n < 50 else "in_progress")
        health = (await client.get("/health")).json()
        assert health["checks"]["externalDb"]["backlog"] == 500
        await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - gone)))
        await admin_service.start()
        await synced(client, timeout=60)
        await settled_deliveries(client, subscription["id"], 500, timeout=30)
        states, history = collections(settings)

    records = await admin_service.documents(history)
    assert len(records) == 500
    for n in range(50):  # each entity's records arrived in order
        mine = [r for r in records if r["entityId"] == f"t{n}"]
        assert [r["version"] for r in mine] == list(range(1, 11))
    documents = await admin_service.documents(states)
    assert len(documents) == 50
    assert {d["version"] for d in documents} == {10}
    assert len(hooks.requests) == len({r.event_id for r in hooks.requests}) == 500


async def test_a_full_backlog_refuses_writes_until_the_admin_service_returns(
    database_url: str, admin_service: AdminService
) -> None:
    settings = external_settings(database_url, admin_service, external_db={"max_backlog": 5})
    async with in_process(settings) as client:
        await admin_service.kill()
        for n in range(5):
            await record(client, "job", f"t{n}", "pending")
        refused = await client.post(
            "/api/v1/states/job", json={"entityId": "t9", "status": "pending"}
        )
        assert refused.status_code == 503
        assert refused.json()["code"] == "external_backlog_full"
        assert refused.headers["retry-after"] == "5"
        assert (await client.get("/api/v1/states/job/t9")).status_code == 404  # nothing written
        assert (await client.get("/api/v1/states/job/t1")).status_code == 200  # reads go on
        ready = await client.get("/health/readiness")
        assert ready.status_code == 503
        assert ready.json()["ready"] is False

        await admin_service.start()
        await synced(client)
        await record(client, "job", "t9", "pending")
        assert (await client.get("/health/readiness")).status_code == 200


async def test_a_refusal_is_reported_not_retried_and_redriven_after_the_fix(
    database_url: str, admin_service: AdminService
) -> None:
    settings = external_settings(database_url, admin_service)
    _, history = collections(settings)
    async with in_process(settings) as client:
        await admin_service.faults({"status": 400, "times": 1, "method": "POST", "path": history})
        await record(client, "job", "t1", "pending")

        async def reported() -> Json | None:
            external: Json = (await client.get("/health")).json()["checks"]["externalDb"]
            return external if external["syncError"] else None

        external = await eventually(reported, what="the refusal in /health")
        assert "AdminServiceRejected: 400: injected fault: 400" in external["syncError"]
        assert external["backlog"] == 1
        assert len(await admin_service.requests("POST", history)) == 1  # no retry burst
        await synced(client)  # re-driven after a pause; the fault answered once
    assert len(await admin_service.documents(history)) == 1


async def test_a_crash_between_journal_and_admin_service_is_redriven(
    tmp_path: Path, admin_service: AdminService
) -> None:
    """kill -9 while the change is on its way to the Admin Service: after the
    restart it is written there."""
    database_url = f"sqlite+aiosqlite:///{tmp_path}/journal.db"
    settings = external_settings(database_url, admin_service)
    states, _ = collections(settings)
    env = service_env(
        database_url,
        STORAGE_BACKEND="external",
        EXTERNAL_DB_URL=admin_service.url,
        EXTERNAL_DB_API_KEY=admin_service.api_key,
        EXTERNAL_DB_STATES_COLLECTION=states,
        EXTERNAL_DB_HISTORY_COLLECTION=settings.external_db.history_collection,
        DB_CONNECTION_TIMEOUT="30000",
    )
    port = free_port()
    await admin_service.faults({"hang": 30, "times": 1, "method": "POST"})
    async with http_service(port, env, tmp_path) as server, remote_client(port) as client:
        await record(client, "job", "t1", "pending")

        async def in_flight() -> bool:  # the POST to the Admin Service is hanging
            health: Json = (await client.get("/health")).json()
            return bool(health["checks"]["externalDb"]["backlog"] == 1)

        await eventually(in_flight)
        await server.kill()
    assert await admin_service.documents(states) == []
    await admin_service.faults()
    async with http_service(port, env, tmp_path, "serve-again"), remote_client(port) as client:
        await synced(client)
    (document,) = await admin_service.documents(states)
    assert (document["id"], document["status"]) == ("job:t1", "pending")


async def test_writes_invalidate_the_caches(
    database_url: str, admin_service: AdminService, redis_servers: Any
) -> None:
    local, shared = redis_servers(), redis_servers()
    settings = external_settings(
        database_url,
        admin_service,
        redis_local={"enabled": True, "host": "127.0.0.1", "port": local.port},
        redis_global={"enabled": True, "host": "127.0.0.1", "port": shared.port},
    )
    async with in_process(settings) as client:
        await record(client, "job", "t1", "pending")
        for _ in range(2):
            assert (await client.get("/api/v1/states/job/t1")).json()["status"] == "pending"
        await record(client, "job", "t1", "in_progress")
        assert (await client.get("/api/v1/states/job/t1")).json()["status"] == "in_progress"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"storage_backend": "external"}, "STORAGE_BACKEND=external needs EXTERNAL_DB_URL"),
        (
            {
                "storage_backend": "external",
                "external_db": {"url": "http://admin:3000"},
                "app_env": "production",
                "api_keys": "gateway:0123456789abcdef",
                "webhooks": {"secret_key": "0123456789abcdef-secret"},
            },
            "EXTERNAL_DB_API_KEY must be set in production",
        ),
    ],
)
def test_the_external_backend_needs_its_settings(overrides: Json, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings.model_validate({"database_url": "sqlite+aiosqlite:///x.db", **overrides})
