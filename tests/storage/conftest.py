"""The storage tests' way to make the database itself refuse a write: a real
trigger refusing the history row of entity `boom`."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable, Coroutine

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import asyncpg_dsn

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
