"""Reads go local → global → store and fill the tiers on the way back
(docs/architecture.md, "Caches")."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from fastapi import FastAPI

from potok_state.settings import Settings
from tests.support.apps import api_client, running_app
from tests.support.cache import cache_requests, cache_settings
from tests.support.redis_server import RedisServer


@pytest.fixture
def settings(database_url: str, local_redis: RedisServer, global_redis: RedisServer) -> Settings:
    return cache_settings(
        database_url,
        local=local_redis,
        global_=global_redis,
        cache={"state_ttl": 120, "list_ttl": 30, "timeout": 500, "retry_delay": 200},
    )


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    async with running_app(settings) as application:
        yield application


async def test_a_read_fills_the_local_tier_and_the_next_read_is_a_hit(
    app: FastAPI, local_redis: RedisServer, global_redis: RedisServer
) -> None:
    async with api_client(app) as client:
        created = await client.post(
            "/api/v1/states/task", json={"entityId": "t1", "status": "created"}
        )
        assert created.status_code == 201, created.text
        # As if the cached copies had expired: the next read must go to the store.
        for server in (local_redis, global_redis):
            with server.client() as tier:
                tier.delete("state:task:t1")

        first = await client.get("/api/v1/states/task/t1")
        assert first.status_code == 200
        with local_redis.client() as local:
            ttl = local.ttl("state:task:t1")
            assert 0 < ttl <= 120
            assert b'"entityId":"t1"' in (local.get("state:task:t1") or b"")
        hits = cache_requests(app, "local", "hit")

        second = await client.get("/api/v1/states/task/t1")
        assert second.json() == first.json()
        assert second.headers["etag"] == '"1"'
        assert cache_requests(app, "local", "hit") == hits + 1


async def test_a_global_hit_is_copied_into_the_local_tier(
    app: FastAPI, local_redis: RedisServer
) -> None:
    async with api_client(app) as client:
        await client.post("/api/v1/states/task", json={"entityId": "t2", "status": "created"})
        with local_redis.client() as local:
            local.delete("state:task:t2")
        global_hits = cache_requests(app, "global", "hit")

        read = await client.get("/api/v1/states/task/t2")
        assert read.json()["status"] == "created"
        assert cache_requests(app, "global", "hit") == global_hits + 1
        with local_redis.client() as local:
            assert local.exists("state:task:t2")


async def test_a_write_replaces_the_cached_state_in_both_tiers(
    app: FastAPI, local_redis: RedisServer, global_redis: RedisServer
) -> None:
    async with api_client(app) as client:
        await client.post("/api/v1/states/task", json={"entityId": "t3", "status": "created"})
        assert (await client.get("/api/v1/states/task/t3")).json()["version"] == 1
        updated = await client.put("/api/v1/states/task/t3", json={"status": "in_progress"})
        assert updated.status_code == 200

        read = await client.get("/api/v1/states/task/t3")
        assert read.json()["status"] == "in_progress"
        for server in (local_redis, global_redis):
            with server.client() as tier:
                assert b'"status":"in_progress"' in (tier.get("state:task:t3") or b"")

        assert (await client.delete("/api/v1/states/task/t3")).status_code == 204
        assert (await client.get("/api/v1/states/task/t3")).status_code == 404


async def test_query_results_are_cached_per_type_and_dropped_on_a_write(
    app: FastAPI, local_redis: RedisServer
) -> None:
    async with api_client(app) as client:
        await client.post("/api/v1/states/task", json={"entityId": "q1", "status": "created"})
        query = "/api/v1/states/task?status=created&sort=entityId"
        first = await client.get(query)
        assert [item["entityId"] for item in first.json()["items"]] == ["q1"]
        with local_redis.client() as local:
            keys = list(local.scan_iter(match="state:list:task:*"))
            assert len(keys) == 1
            assert 0 < local.ttl(keys[0]) <= 30
        hits = cache_requests(app, "local", "hit")
        assert (await client.get(query)).json() == first.json()
        assert cache_requests(app, "local", "hit") == hits + 1

        await client.post("/api/v1/states/task", json={"entityId": "q2", "status": "created"})
        after = await client.get(query)
        assert [item["entityId"] for item in after.json()["items"]] == ["q1", "q2"]
