"""The embedded default needs no Redis; a configured tier that is down only degrades."""

from __future__ import annotations

from fastapi import FastAPI

from potok_state.app import create_app
from tests.conftest import make_settings
from tests.support.apps import api_client, running_app
from tests.support.cache import cache_settings
from tests.support.ports import free_port


async def test_the_default_service_runs_without_any_redis(database_url: str) -> None:
    settings = make_settings(database_url)
    assert not settings.redis_local.enabled
    assert not settings.redis_global.enabled
    async with running_app(settings) as app:
        assert app.state.cache is None
        await _serves_normally(app)
        async with api_client(app) as client:
            health = (await client.get("/health")).json()
            assert health["status"] == "ok"
            assert set(health["checks"]) == {"storage"}
            readiness = await client.get("/health/readiness")
            assert readiness.status_code == 200
            assert readiness.json()["redis"] == "disabled"


async def test_a_configured_tier_that_is_down_degrades_but_does_not_fail(
    database_url: str,
) -> None:
    nobody = free_port()
    settings = cache_settings(
        database_url,
        redis_local={"enabled": True, "host": "127.0.0.1", "port": nobody},
        redis_global={"enabled": True, "host": "127.0.0.1", "port": nobody},
    )
    async with running_app(settings) as app:
        await _serves_normally(app)
        async with api_client(app) as client:
            health = await client.get("/health")
            assert health.status_code == 200
            body = health.json()
            assert body["status"] == "degraded"
            assert body["checks"]["redisLocal"]["status"] == "down"
            assert body["checks"]["redisGlobal"]["status"] == "down"
            readiness = await client.get("/health/readiness")
            assert readiness.status_code == 200
            assert readiness.json() == {
                "ready": True,
                "storage": True,
                "redis": False,
                "externalDb": "disabled",
            }


def test_create_app_needs_no_redis_to_build(database_url: str) -> None:
    assert isinstance(create_app(make_settings(database_url)), FastAPI)


async def _serves_normally(app: FastAPI) -> None:
    async with api_client(app) as client:
        created = await client.post(
            "/api/v1/states/task", json={"entityId": "n1", "status": "created"}
        )
        assert created.status_code == 201, created.text
        moved = await client.put("/api/v1/states/task/n1", json={"status": "in_progress"})
        assert moved.status_code == 200, moved.text
        assert (await client.get("/api/v1/states/task/n1")).json()["version"] == 2
        page = (await client.get("/api/v1/states/task?status=in_progress")).json()
        assert [item["entityId"] for item in page["items"]] == ["n1"]
