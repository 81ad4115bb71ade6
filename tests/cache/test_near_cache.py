"""The near cache (cache/near.py), on by default: every process keeps recently
read and written states in memory and serves them without a database read,
yet never serves a state older than a write it has answered, nor, on
PostgreSQL, older than a write another instance answered more than a moment
ago (the commit feed raises its floors). While its LISTEN connection is down an
instance cannot hear other instances' writes, so it serves nothing from its
near cache until it has reconnected and caught up.

Whether a read came from the near cache is seen from outside: a canary row is
changed behind the service's back (a direct UPDATE: no new revision, no
NOTIFY); an instance that still answers with the old body served it from its
near cache.

SQLite instances only share floors through `serve --workers` (the floors
file): tests/ops/test_workers.py covers that."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, closing
from dataclasses import dataclass
from itertools import count
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from sqlalchemy.engine import make_url

from potok_state.settings import Settings
from tests.conftest import asyncpg_dsn, make_settings
from tests.support.apps import api_client, running_app
from tests.support.polling import eventually

USERS = "/api/v1/states/user"
PROPAGATION_SECONDS = 1.0
RECONNECT_TIMEOUT_SECONDS = 10.0

Json = dict[str, Any]
postgres_only = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


def body(response: httpx.Response, status: int) -> Json:
    assert response.status_code == status, response.text
    parsed: Json = response.json()
    return parsed


async def create(client: httpx.AsyncClient, entity_id: str, **extra: object) -> Json:
    response = await client.post(USERS, json={"entityId": entity_id, "status": "online", **extra})
    return body(response, 201)


async def read(client: httpx.AsyncClient, entity_id: str) -> Json:
    response = await client.get(f"{USERS}/{entity_id}")
    state = body(response, 200)
    assert response.headers["etag"] == f'"{state["version"]}"'
    return state


async def is_gone(client: httpx.AsyncClient, entity_id: str) -> bool:
    response = await client.get(f"{USERS}/{entity_id}")
    assert response.status_code in (200, 404), response.text
    return response.status_code == 404


class Database:
    """Direct access to the service's database, behind its back."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")

    async def tamper(self, entity_id: str, metadata: Json) -> None:
        """Change a state's metadata in place: same version and revision, and
        nobody is told."""
        sql = "UPDATE states SET metadata = {} WHERE entity_type = 'user' AND entity_id = {}"
        value = orjson.dumps(metadata).decode()
        if self.is_sqlite:
            path = make_url(self.url).database
            assert path is not None
            with closing(sqlite3.connect(path, timeout=10)) as connection:
                connection.execute(sql.format("?", "?"), (value, entity_id))
                connection.commit()
            return
        connection = await asyncpg.connect(asyncpg_dsn(self.url))
        try:
            await connection.execute(sql.format("$1::jsonb", "$2"), value, entity_id)
        finally:
            await connection.close()

    async def listening_backends(self) -> set[int]:
        """The PostgreSQL backends of the instances' commit feeds (LISTEN)."""
        connection = await asyncpg.connect(asyncpg_dsn(self.url))
        try:
            rows = await connection.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND query LIKE 'LISTEN %'"
            )
        finally:
            await connection.close()
        return {row["pid"] for row in rows}

    async def terminate(self, pid: int) -> None:
        connection = await asyncpg.connect(asyncpg_dsn(self.url))
        try:
            assert await connection.fetchval("SELECT pg_terminate_backend($1)", pid)
        finally:
            await connection.close()


class NearCacheProbe:
    """Tells whether an instance serves reads from its near cache right now."""

    def __init__(self, database: Database, writer: httpx.AsyncClient, canary: str) -> None:
        self.database = database
        self.writer = writer
        self.canary = canary
        self._marks = count()

    async def setup(self) -> None:
        await create(self.writer, self.canary, metadata={"mark": -1})

    async def serves_from_near_cache(self, client: httpx.AsyncClient) -> bool:
        await read(client, self.canary)  # kept near, when the near cache is in use
        mark = next(self._marks)
        await self.database.tamper(self.canary, {"mark": mark})
        served: Json = await read(client, self.canary)
        return bool(served["metadata"] != {"mark": mark})

    async def serves_only_fresh(self, client: httpx.AsyncClient) -> bool:
        return not await self.serves_from_near_cache(client)


@pytest.fixture
def database(database_url: str) -> Database:
    return Database(database_url)


# -- one instance ---------------------------------------------------------------------


async def test_the_near_cache_is_on_by_default_and_serves_reads(
    settings: Settings, client: httpx.AsyncClient, database: Database
) -> None:
    assert settings.cache.near_size > 0  # the default
    probe = NearCacheProbe(database, client, "canary")
    await probe.setup()
    # (On PostgreSQL, only once the commit feed is following.)
    await eventually(lambda: probe.serves_from_near_cache(client), what="reads from the near cache")


async def test_read_your_writes_through_the_near_cache(
    client: httpx.AsyncClient, database: Database
) -> None:
    probe = NearCacheProbe(database, client, "canary")
    await probe.setup()
    await eventually(lambda: probe.serves_from_near_cache(client), what="reads from the near cache")

    created = await create(client, "ryw", metadata={"a": 1})
    assert await read(client, "ryw") == created  # now kept near

    put = body(await client.put(f"{USERS}/ryw", json={"status": "busy", "metadata": {"b": 2}}), 200)
    assert put["version"] == 2
    assert await read(client, "ryw") == put

    patched = body(await client.patch(f"{USERS}/ryw", json={"metadata": {"c": 3}}), 200)
    assert patched["version"] == 3
    assert patched["metadata"] == {"b": 2, "c": 3}
    assert await read(client, "ryw") == patched

    moved = body(await client.post(USERS, json={"entityId": "ryw", "status": "offline"}), 200)
    assert moved["version"] == 4
    assert await read(client, "ryw") == moved

    deleted = await client.delete(f"{USERS}/ryw")
    assert deleted.status_code == 204, deleted.text
    for _ in range(2):  # the second one from the near cache's record of the deletion
        assert await is_gone(client, "ryw")
    listed = body(await client.get(USERS, params={"limit": 100}), 200)
    assert "ryw" not in {item["entityId"] for item in listed["items"]}
    refused = await client.patch(f"{USERS}/ryw", json={"metadata": {"d": 4}})
    assert refused.status_code == 404, refused.text

    again = await create(client, "ryw")
    assert again["metadata"] == {}
    assert await read(client, "ryw") == again


# -- two instances on PostgreSQL, no Redis --------------------------------------------


@dataclass(slots=True)
class Pair:
    a: httpx.AsyncClient
    b: httpx.AsyncClient
    a_listener: int
    b_listener: int
    probe: NearCacheProbe


@pytest.fixture
async def pair(database_url: str, database: Database) -> AsyncIterator[Pair]:
    """Instances A and B (create_app twice) on one PostgreSQL database, each
    with its own near cache; B's near cache is in use once this is entered."""
    settings = make_settings(database_url)
    assert not settings.redis_local.enabled
    assert not settings.redis_global.enabled
    async with AsyncExitStack() as stack:
        app_a = await stack.enter_async_context(running_app(settings))
        a = await stack.enter_async_context(api_client(app_a))

        async def one_listener() -> set[int] | None:
            found = await database.listening_backends()
            return found if len(found) == 1 else None

        (a_listener,) = await eventually(one_listener, what="A's LISTEN connection")
        app_b = await stack.enter_async_context(running_app(settings))
        b = await stack.enter_async_context(api_client(app_b))

        async def b_listens() -> set[int] | None:
            found = await database.listening_backends() - {a_listener}
            return found or None

        (b_listener,) = await eventually(b_listens, what="B's LISTEN connection")
        probe = NearCacheProbe(database, a, "canary")
        await probe.setup()
        await eventually(lambda: probe.serves_from_near_cache(b), what="B's near cache in use")
        yield Pair(a, b, a_listener, b_listener, probe)


async def sees_version(client: httpx.AsyncClient, entity_id: str, version: int) -> Json:
    """The state once `client` serves `version` of it (or a later one), within
    the propagation time; never an older version after a newer one. (Absent,
    404, counts as older than any version, for a state created again.)"""
    seen = 0

    async def caught_up() -> Json | None:
        nonlocal seen
        response = await client.get(f"{USERS}/{entity_id}")
        if response.status_code == 404:
            assert seen == 0, "a read went back in time"
            return None
        state = body(response, 200)
        assert state["version"] >= seen, "a read went back in time"
        seen = state["version"]
        return state if state["version"] >= version else None

    return await eventually(
        caught_up, timeout=PROPAGATION_SECONDS, what=f"version {version} of {entity_id}"
    )


@postgres_only
async def test_a_write_on_one_instance_reaches_the_others_near_cache(pair: Pair) -> None:
    created = await create(pair.a, "shared", metadata={"v": 1})
    assert await read(pair.b, "shared") == created  # B keeps version 1 near

    patched = body(await pair.a.patch(f"{USERS}/shared", json={"metadata": {"v": 2}}), 200)
    assert await read(pair.a, "shared") == patched
    assert await sees_version(pair.b, "shared", 2) == patched

    # B writes on top: B reads its own write at once, A within the moment.
    put = body(await pair.b.put(f"{USERS}/shared", json={"status": "busy"}), 200)
    assert put["version"] == 3
    assert put["metadata"] == {"v": 2}  # decided on A's write, not on an older copy
    assert await read(pair.b, "shared") == put
    assert await sees_version(pair.a, "shared", 3) == put


@postgres_only
async def test_writes_on_both_instances_at_once_lose_nothing(pair: Pair) -> None:
    """Each instance decides a write on what its near cache holds, which may be
    a moment old; a write decided on an older version is decided again, so no
    update is lost, whether the instances write one after the other or at once."""
    await create(pair.a, "merged")
    for number in range(20):
        on_a = body(await pair.a.patch(f"{USERS}/merged", json={"metadata": {"a": number}}), 200)
        # At once on B, which may not have heard of A's write yet.
        on_b = body(await pair.b.patch(f"{USERS}/merged", json={"metadata": {"b": number}}), 200)
        assert on_b["version"] == on_a["version"] + 1
        assert on_b["metadata"] == {"a": number, "b": number}

    async def patches(client: httpx.AsyncClient, key: str) -> None:
        for number in range(20):
            update = {"metadata": {f"{key}{number}": number}}
            body(await client.patch(f"{USERS}/merged", json=update), 200)

    await asyncio.gather(patches(pair.a, "x"), patches(pair.b, "y"))
    expected = {"a": 19, "b": 19} | {f"{k}{n}": n for k in "xy" for n in range(20)}
    final = await sees_version(pair.b, "merged", 1 + 2 * 20 + 2 * 20)
    assert final["metadata"] == expected
    assert await read(pair.a, "merged") == final


@postgres_only
async def test_a_state_deleted_on_one_instance_is_gone_on_the_other(pair: Pair) -> None:
    await create(pair.a, "doomed")
    assert (await read(pair.b, "doomed"))["version"] == 1  # B keeps it near

    deleted = await pair.a.delete(f"{USERS}/doomed")
    assert deleted.status_code == 204, deleted.text
    assert await is_gone(pair.a, "doomed")
    await eventually(
        lambda: is_gone(pair.b, "doomed"), timeout=PROPAGATION_SECONDS, what="B to forget it"
    )
    assert await is_gone(pair.b, "doomed")

    # Created again on B: both serve the new state.
    again = await create(pair.b, "doomed", status="busy")
    assert await read(pair.b, "doomed") == again
    assert await sees_version(pair.a, "doomed", again["version"]) == again


@postgres_only
async def test_an_instance_that_cannot_hear_serves_nothing_stale(
    pair: Pair, database: Database
) -> None:
    versions: dict[str, int] = {}
    for entity_id in ("k1", "k2", "k3"):
        versions[entity_id] = (await create(pair.a, entity_id))["version"]
        assert (await read(pair.b, entity_id))["version"] == versions[entity_id]  # kept near

    await database.terminate(pair.b_listener)

    async def terminated() -> bool:
        return pair.b_listener not in await database.listening_backends()

    await eventually(terminated, what="B's LISTEN backend to end")
    # B notices at once and stops serving from its near cache...
    await eventually(
        lambda: pair.probe.serves_only_fresh(pair.b), what="B to stop trusting its near cache"
    )
    # ...so every write answered on A is read on B right away.
    for round_ in range(3):
        for entity_id in ("k1", "k2"):
            patch = {"metadata": {"round": round_}}
            written = body(await pair.a.patch(f"{USERS}/{entity_id}", json=patch), 200)
            versions[entity_id] = written["version"]
            assert await read(pair.b, entity_id) == written, "B served a stale state"
    deleted = await pair.a.delete(f"{USERS}/k3")
    assert deleted.status_code == 204, deleted.text
    assert await is_gone(pair.b, "k3"), "B served a deleted state"

    # B reconnects, catches up and uses its near cache again...
    async def b_listens_again() -> set[int] | None:
        found = await database.listening_backends() - {pair.a_listener, pair.b_listener}
        return found or None

    await eventually(b_listens_again, timeout=RECONNECT_TIMEOUT_SECONDS, what="B to reconnect")
    await eventually(
        lambda: pair.probe.serves_from_near_cache(pair.b),
        timeout=RECONNECT_TIMEOUT_SECONDS,
        what="B to trust its near cache again",
    )
    # ...what was written while it could not hear is served as written...
    for entity_id in ("k1", "k2"):
        assert (await read(pair.b, entity_id))["version"] == versions[entity_id]
    assert await is_gone(pair.b, "k3")
    # ...and it follows other instances' writes again.
    written = body(await pair.a.patch(f"{USERS}/k1", json={"metadata": {"after": True}}), 200)
    assert await sees_version(pair.b, "k1", written["version"]) == written
