"""Concurrent writers on one entity: versions and revisions never skip, repeat or
go backwards (docs/data-model.md), on SQLite and PostgreSQL.

The requests run in-process but truly concurrently: each is its own task on the
loop, and on PostgreSQL each transaction holds its own pooled connection (pool
of 16), so the row lock and the unique key are what serialize them.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import httpx

STATES = "/api/v1/states"
Json = dict[str, Any]
CLIENTS = 16
WRITES_PER_CLIENT = 3


async def history_of(client: httpx.AsyncClient, entity: str, entity_id: str) -> list[Json]:
    entries: list[Json] = []
    cursor: str | None = None
    while True:
        params: dict[str, str | int] = {"limit": 500}
        if cursor is not None:
            params["cursor"] = cursor
        page = await client.get(f"{STATES}/{entity}/{entity_id}/history", params=params)
        assert page.status_code == 200, page.text
        body = page.json()
        entries.extend(body["items"])
        cursor = body["nextCursor"]
        if cursor is None:
            return entries


async def all_changes(client: httpx.AsyncClient) -> list[Json]:
    items: list[Json] = []
    after = 0
    while True:
        page = await client.get("/api/v1/changes", params={"after": after, "limit": 1000})
        assert page.status_code == 200, page.text
        body = page.json()
        if not body["items"]:
            return items
        items.extend(body["items"])
        after = body["nextAfter"]


def assert_gapless(history: list[Json], versions: int) -> None:
    assert [entry["version"] for entry in history] == list(range(1, versions + 1))
    revisions = [entry["revision"] for entry in history]
    assert all(a < b for a, b in itertools.pairwise(revisions)), revisions


async def test_conditional_updates_race_without_lost_or_duplicate_versions(
    client: httpx.AsyncClient,
) -> None:
    created = await client.post(
        f"{STATES}/user", json={"entityId": "u1", "status": "online", "metadata": {"n": 0}}
    )
    assert created.status_code == 201, created.text
    # Every client reads version 1 before any of them writes, so the first round
    # is a guaranteed 16-way conflict: one write wins, fifteen get 412 and retry.
    first_round = asyncio.Barrier(CLIENTS)
    statuses = ("online", "offline", "busy")
    conflicts = 0

    async def writer(number: int) -> list[int]:
        nonlocal conflicts
        written: list[int] = []
        waited = False
        while len(written) < WRITES_PER_CLIENT:
            current = await client.get(f"{STATES}/user/u1")
            assert current.status_code == 200, current.text
            version = current.json()["version"]
            assert current.headers["etag"] == f'"{version}"'
            if not waited:
                await first_round.wait()
                waited = True
            response = await client.put(
                f"{STATES}/user/u1",
                json={
                    "status": statuses[(number + len(written)) % 3],
                    "metadata": {"writer": number, "write": len(written)},
                },
                headers={"If-Match": f'"{version}"'},
            )
            if response.status_code == 412:
                body = response.json()
                assert body["code"] == "version_mismatch", body
                assert body["details"]["expectedVersion"] == version
                conflicts += 1
                continue
            assert response.status_code == 200, response.text
            assert response.json()["version"] == version + 1
            written.append(version + 1)
        return written

    results = await asyncio.gather(*(writer(number) for number in range(CLIENTS)))

    successful = CLIENTS * WRITES_PER_CLIENT
    won = sorted(version for versions in results for version in versions)
    assert won == list(range(2, successful + 2)), "each version was won by exactly one writer"
    assert conflicts >= CLIENTS - 1
    final = await client.get(f"{STATES}/user/u1")
    assert final.json()["version"] == 1 + successful
    assert final.headers["etag"] == f'"{1 + successful}"'
    history = await history_of(client, "user", "u1")
    assert_gapless(history, 1 + successful)
    # The change feed holds exactly these changes, in the same revision order.
    changes = await all_changes(client)
    assert [change["revision"] for change in changes] == [e["revision"] for e in history]
    assert [change["data"]["version"] for change in changes] == list(range(1, successful + 2))


async def test_concurrent_creates_of_one_new_entity_make_one_201_and_fifteen_updates(
    client: httpx.AsyncClient,
) -> None:
    async def record(number: int) -> httpx.Response:
        return await client.post(
            f"{STATES}/user",
            json={"entityId": "fresh", "status": "online", "metadata": {"writer": number}},
        )

    responses = await asyncio.gather(*(record(number) for number in range(CLIENTS)))

    codes = sorted(response.status_code for response in responses)
    assert codes == [200] * (CLIENTS - 1) + [201], [r.text for r in responses]
    created = next(response for response in responses if response.status_code == 201)
    assert created.json()["version"] == 1
    assert sorted(response.json()["version"] for response in responses) == list(
        range(1, CLIENTS + 1)
    )
    history = await history_of(client, "user", "fresh")
    assert_gapless(history, CLIENTS)
    assert [entry["event"] for entry in history] == ["entity.created"] + ["entity.updated"] * (
        CLIENTS - 1
    )
    final = await client.get(f"{STATES}/user/fresh")
    assert final.json()["version"] == CLIENTS


async def test_concurrent_changes_take_every_revision_exactly_once(
    client: httpx.AsyncClient,
) -> None:
    count = 64

    async def record(number: int) -> httpx.Response:
        return await client.post(
            f"{STATES}/process", json={"entityId": f"p{number}", "status": "pending"}
        )

    responses = await asyncio.gather(*(record(number) for number in range(count)))

    assert all(response.status_code == 201 for response in responses)
    assert sorted(response.json()["revision"] for response in responses) == list(
        range(1, count + 1)
    )
    changes = await all_changes(client)
    assert [change["revision"] for change in changes] == list(range(1, count + 1))
