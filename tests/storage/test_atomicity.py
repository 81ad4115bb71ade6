"""A change is all or nothing (DESIGN.md §2): a failure after the state row is
written (here: a real database trigger refusing the history row of entity
`boom`) leaves no state, no history, no outbox event and no spent revision."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable, Coroutine

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import asyncpg_dsn

STATES = "/api/v1/states"
MARKED = "boom"

SQLITE_TRIGGER = f"""
CREATE TRIGGER refuse_marked_history BEFORE INSERT ON state_history
WHEN NEW.entity_id = '{MARKED}'
BEGIN SELECT RAISE(ABORT, 'forced failure'); END
"""
POSTGRES_TRIGGER = f"""
CREATE FUNCTION refuse_marked_history() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.entity_id = '{MARKED}' THEN
        RAISE EXCEPTION 'forced failure';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refuse_marked_history BEFORE INSERT ON state_history
FOR EACH ROW EXECUTE FUNCTION refuse_marked_history();
"""
POSTGRES_DROP = """
DROP TRIGGER IF EXISTS refuse_marked_history ON state_history;
DROP FUNCTION IF EXISTS refuse_marked_history();
"""

Install = Callable[[], Coroutine[object, object, None]]


async def _postgres(url: str, statements: str) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await connection.execute(statements)
    finally:
        await connection.close()


def _sqlite(url: str, statements: str) -> None:
    database = make_url(url).database
    assert database is not None
    connection = sqlite3.connect(database, timeout=10)
    try:
        connection.executescript(statements)
    finally:
        connection.close()


@pytest.fixture
async def install_failure(database_url: str, client: httpx.AsyncClient) -> AsyncIterator[Install]:
    """Installs the trigger when called (after the app has migrated the schema);
    removes it at the end, since the PostgreSQL database outlives the test."""
    is_sqlite = database_url.startswith("sqlite")

    async def install() -> None:
        if is_sqlite:
            _sqlite(database_url, SQLITE_TRIGGER)
        else:
            await _postgres(database_url, POSTGRES_TRIGGER)

    yield install
    if is_sqlite:
        _sqlite(database_url, "DROP TRIGGER IF EXISTS refuse_marked_history")
    else:
        await _postgres(database_url, POSTGRES_DROP)


def assert_internal_error(response: httpx.Response) -> None:
    assert response.status_code == 500, response.text
    body = response.json()
    assert body == {
        "statusCode": 500,
        "error": "Internal Server Error",
        "code": "internal_error",
        "message": "An unexpected error occurred.",
        "details": {},
        "requestId": response.headers["x-request-id"],
    }
    assert "forced failure" not in response.text  # no database detail leaks out


async def assert_feed(client: httpx.AsyncClient, revisions: list[int]) -> None:
    changes = await client.get("/api/v1/changes", params={"limit": 1000})
    assert changes.status_code == 200, changes.text
    assert [item["revision"] for item in changes.json()["items"]] == revisions


async def assert_next_change_gets_revision(client: httpx.AsyncClient, revision: int) -> None:
    good = await client.post(f"{STATES}/task", json={"entityId": "fine", "status": "created"})
    assert good.status_code == 201, good.text
    assert good.json()["revision"] == revision
    assert good.json()["version"] == 1


async def test_failed_create_leaves_nothing_behind(
    client: httpx.AsyncClient, install_failure: Install
) -> None:
    await install_failure()

    response = await client.post(
        f"{STATES}/task", json={"entityId": MARKED, "status": "created", "metadata": {"a": 1}}
    )

    assert_internal_error(response)
    missing = await client.get(f"{STATES}/task/{MARKED}")
    assert missing.status_code == 404, missing.text
    history = await client.get(f"{STATES}/task/{MARKED}/history")
    assert history.status_code == 404, history.text
    listed = await client.get(f"{STATES}/task")
    assert listed.json()["items"] == []
    await assert_feed(client, [])
    await assert_next_change_gets_revision(client, 1)
    await assert_feed(client, [1])


async def test_failed_atomic_batch_of_1000_leaves_nothing_behind(
    client: httpx.AsyncClient, install_failure: Install
) -> None:
    await install_failure()
    items = [{"entityId": f"t{index}", "status": "created"} for index in range(1000)]
    items[500] = {"entityId": MARKED, "status": "created"}

    response = await client.post(f"{STATES}/task/batch", json={"items": items, "atomic": True})

    assert_internal_error(response)
    listed = await client.get(f"{STATES}/task", params={"limit": 500})
    assert listed.json()["items"] == []
    for entity_id in ("t0", "t499", MARKED, "t501", "t999"):
        assert (await client.get(f"{STATES}/task/{entity_id}")).status_code == 404
        assert (await client.get(f"{STATES}/task/{entity_id}/history")).status_code == 404
    await assert_feed(client, [])
    await assert_next_change_gets_revision(client, 1)


async def test_failed_update_keeps_the_old_state_and_version(
    client: httpx.AsyncClient, install_failure: Install
) -> None:
    created = await client.post(
        f"{STATES}/task", json={"entityId": MARKED, "status": "created", "metadata": {"v": 1}}
    )
    assert created.status_code == 201, created.text
    await install_failure()

    for attempt in (
        client.put(f"{STATES}/task/{MARKED}", json={"status": "in_progress", "metadata": {"v": 2}}),
        client.patch(f"{STATES}/task/{MARKED}", json={"metadata": {"w": 3}}),
        client.post(f"{STATES}/task", json={"entityId": MARKED, "status": "failed"}),
        client.delete(f"{STATES}/task/{MARKED}"),
    ):
        assert_internal_error(await attempt)

    current = await client.get(f"{STATES}/task/{MARKED}")
    assert current.status_code == 200
    assert current.json() == created.json()
    assert current.headers["etag"] == '"1"'
    history = await client.get(f"{STATES}/task/{MARKED}/history")
    assert [entry["version"] for entry in history.json()["items"]] == [1]
    await assert_feed(client, [1])
    await assert_next_change_gets_revision(client, 2)
