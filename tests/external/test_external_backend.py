"""The service with STORAGE_BACKEND=external: every accepted change reaches the
Admin Service in order with its history, through outages, refusals and
crashes, and the service says how far behind it is (docs/external.md)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from potok_state.app import rebuild_external_journal
from potok_state.external.rebuild import JournalNotEmpty
from potok_state.settings import Settings
from tests.conftest import make_settings, reset_postgres
from tests.support.admin_service import AdminService, external_backend
from tests.support.hub import (
    POTOK_STATE,
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


async def test_a_lost_journal_is_rebuilt_from_the_admin_service(
    tmp_path: Path, admin_service: AdminService
) -> None:
    """The local database is gone: `potok-state rebuild-journal` fills a new one
    from the Admin Service, and the service goes on from the revision it had."""
    journal = tmp_path / "journal.db"
    settings = external_settings(f"sqlite+aiosqlite:///{journal}", admin_service)
    states, history = collections(settings)
    env = service_env(
        f"sqlite+aiosqlite:///{journal}",
        STORAGE_BACKEND="external",
        EXTERNAL_DB_URL=admin_service.url,
        EXTERNAL_DB_API_KEY=admin_service.api_key,
        EXTERNAL_DB_STATES_COLLECTION=states,
        EXTERNAL_DB_HISTORY_COLLECTION=history,
    )
    port = free_port()
    async with http_service(port, env, tmp_path), remote_client(port) as client:
        await record(client, "job", "j1", "pending", metadata={"owner": "ana"})
        await record(client, "job", "j1", "running")
        await record(client, "job", "j2", "pending")
        assert (await client.delete("/api/v1/states/job/j2")).status_code == 204
        await record(client, "job", "j3", "pending")
        await synced(client)
        before = {
            entity_id: (await client.get(f"/api/v1/states/job/{entity_id}")).json()
            for entity_id in ("j1", "j3")
        }
        history_before = (await client.get("/api/v1/states/job/j1/history")).json()["items"]

    lose(journal)
    code, output = await potok_state("rebuild-journal", env=env, cwd=tmp_path)
    assert code == 0, output
    assert "2 states, 5 history records, up to revision 5" in output

    async with http_service(port, env, tmp_path, "serve-again"), remote_client(port) as client:
        for entity_id, state in before.items():
            assert (await client.get(f"/api/v1/states/job/{entity_id}")).json() == state
        assert (await client.get("/api/v1/states/job/j2")).status_code == 404
        history_after = (await client.get("/api/v1/states/job/j1/history")).json()["items"]
        assert history_after == history_before
        changed = await record(client, "job", "j1", "done")
        assert (changed["version"], changed["revision"]) == (3, 6)
        await synced(client)
    records = await admin_service.documents(history)
    assert sorted(int(r["revision"]) for r in records) == [1, 2, 3, 4, 5, 6]  # none twice

    code, refused = await potok_state("rebuild-journal", env=env, cwd=tmp_path)
    assert code != 0
    assert "already holds states or history" in refused


def lose(database: Path) -> None:
    for leftover in database.parent.glob(database.name + "*"):  # with its -wal and -shm
        leftover.unlink()


async def potok_state(*args: str, env: dict[str, str], cwd: Path) -> tuple[int | None, str]:
    process = await asyncio.create_subprocess_exec(
        str(POTOK_STATE),
        *args,
        env={**os.environ, **env},
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output = (await process.communicate())[0].decode()
    return process.returncode, output


async def test_rebuilding_writes_the_same_journal_on_either_database(
    database_url: str, admin_service: AdminService, tmp_path: Path
) -> None:
    settings = external_settings(database_url, admin_service)
    async with in_process(settings) as client:
        await record(client, "job", "j1", "pending", metadata={"owner": "ana", "n": 1})
        await record(client, "job", "j1", "running", reason="picked up")
        await record(client, "job", "j2", "pending")
        await synced(client)
        before = (await client.get("/api/v1/states/job?sort=entityId")).json()["items"]
        history = (await client.get("/api/v1/states/job/j1/history")).json()["items"]

    if database_url.startswith("sqlite"):
        rebuilt_url = f"sqlite+aiosqlite:///{tmp_path}/rebuilt.db"
    else:
        await reset_postgres(database_url)  # every table emptied: the journal is lost
        rebuilt_url = database_url
    rebuilt_settings = settings.model_copy(update={"database_url": rebuilt_url})
    rebuilt = await rebuild_external_journal(rebuilt_settings)
    assert (rebuilt.states, rebuilt.history, rebuilt.revision) == (2, 3, 3)

    async with in_process(rebuilt_settings) as client:
        assert (await client.get("/api/v1/states/job?sort=entityId")).json()["items"] == before
        assert (await client.get("/api/v1/states/job/j1/history")).json()["items"] == history
        assert (await record(client, "job", "j2", "running"))["revision"] == 4
    with pytest.raises(JournalNotEmpty):
        await rebuild_external_journal(rebuilt_settings)
