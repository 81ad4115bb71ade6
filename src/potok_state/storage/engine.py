"""The SQLAlchemy engine used for schema work only (Alembic migrations and the
schema tests); the service itself talks to the database through the raw
drivers (`database.py`)."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from potok_state.storage.database import sqlite_path


def _json_dumps(value: object) -> str:
    return orjson.dumps(value).decode()


def create_engine(url: str, *, pool_size: int) -> AsyncEngine:
    """An async engine for DATABASE_URL (asyncpg, or aiosqlite on SQLite)."""
    options: dict[str, Any] = {
        "pool_size": pool_size,
        "max_overflow": 0,
        "json_serializer": _json_dumps,
        "json_deserializer": orjson.loads,
    }
    if make_url(url).get_backend_name() != "sqlite":
        return create_async_engine(url, pool_pre_ping=True, **options)
    sqlite_path(url)
    engine = create_async_engine(url, **options)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine
