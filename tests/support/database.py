"""Reading the service's database directly, as an operator with a dump would."""

from __future__ import annotations

import sqlite3
from typing import Any

import asyncpg

from tests.conftest import asyncpg_dsn


async def fetch_all(database_url: str, sql: str) -> list[tuple[Any, ...]]:
    """Every row of `sql` (no parameters), on SQLite or PostgreSQL."""
    if database_url.startswith("sqlite"):
        path = database_url.split("///", 1)[1]
        with sqlite3.connect(path) as connection:
            return [tuple(row) for row in connection.execute(sql)]
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        return [tuple(row) for row in await connection.fetch(sql)]
    finally:
        await connection.close()
