"""Read-your-writes on one replica under concurrency (docs/architecture.md, "Caches").

Twenty workers write and read the same few entities while an evictor keeps
deleting the cached copies, so reads keep missing and refilling the tiers while
other writers commit: exactly the window in which a naive cache stores a value
read before a commit and serves it after."""

from __future__ import annotations

import asyncio
import random

import httpx
import redis

from tests.support.apps import api_client, running_app
from tests.support.cache import cache_settings
from tests.support.redis_server import RedisServer

WORKERS = 20
ROUNDS = 12
ENTITIES = ["u1", "u2", "u3"]


async def test_no_worker_ever_reads_a_state_older_than_its_own_last_write(
    database_url: str, local_redis: RedisServer, global_redis: RedisServer
) -> None:
    settings = cache_settings(database_url, local=local_redis, global_=global_redis)
    stale: list[str] = []
    done = asyncio.Event()

    async def worker(number: int, client: httpx.AsyncClient) -> None:
        rng = random.Random(number)
        for round_ in range(ROUNDS):
            entity_id = rng.choice(ENTITIES)
            status = rng.choice(["online", "offline", "busy"])
            written = await client.post(
                "/api/v1/states/user",
                json={"entityId": entity_id, "status": status, "metadata": {"w": number}},
            )
            assert written.status_code in (200, 201), written.text
            revision = written.json()["revision"]

            one = await client.get(f"/api/v1/states/user/{entity_id}")
            assert one.status_code == 200, one.text
            if one.json()["revision"] < revision:
                stale.append(f"worker {number} round {round_}: GET {entity_id} {one.json()}")

            page = await client.get("/api/v1/states/user", params={"limit": 500})
            assert page.status_code == 200, page.text
            listed = {item["entityId"]: item["revision"] for item in page.json()["items"]}
            if listed.get(entity_id, 0) < revision:
                stale.append(f"worker {number} round {round_}: list {entity_id} {listed}")

    async def evictor() -> None:
        # Forces misses and refills while writers commit; never sleeps past the test.
        clients = [local_redis.client(), global_redis.client()]
        try:
            while not done.is_set():
                for tier in clients:
                    await asyncio.to_thread(
                        tier.delete, *(f"state:user:{entity}" for entity in ENTITIES)
                    )
                await asyncio.sleep(0.002)
        finally:
            for tier in clients:
                tier.close()

    async with running_app(settings) as app, api_client(app) as client:
        evicting = asyncio.create_task(evictor())
        try:
            await asyncio.gather(*(worker(n, client) for n in range(WORKERS)))
        finally:
            done.set()
            await evicting
    assert not stale, "\n".join(stale[:10])


async def test_a_stale_fill_after_a_write_is_refused_by_the_tier(
    local_redis: RedisServer,
) -> None:
    """The compare-and-set the service fills with: an older revision never
    replaces a newer one, whatever order the two arrive in."""
    from potok_state.cache.tier import _CAS_SET, encode_value

    with local_redis.client() as tier:
        cas = tier.register_script(_CAS_SET)
        assert cas(keys=["state:x:1"], args=[6, encode_value(6, 1, b"new"), 60]) == 1
        assert cas(keys=["state:x:1"], args=[5, encode_value(5, 2, b"old"), 60]) == 0
        assert tier.get("state:x:1") == encode_value(6, 1, b"new")
        assert cas(keys=["state:x:1"], args=[7, encode_value(7, 3, b"newer"), 60]) == 1
        assert isinstance(tier, redis.Redis)
